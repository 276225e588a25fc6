"""Score one day of raw click logs into a Delta table of predicted CTRs (partitioned by date).

    spark-submit $(deepfm submit-args) score --date 2026-11-22 --model models/2026-11-22/bundle --table delta/ctr_scores

(``deepfm score ...`` works too.) A rerun for the same date replaces that date's rows; other
dates are untouched. The last line of output is a JSON summary (also written to --summary).
Exit status: 0 done, 1 done but rows in != scored + rejected, 2 refused before writing anything
(bad bundle, logs of another schema than the model's, incompatible table, missing input day).
The logs are read with the log schema the model's feature spec was fitted on. Defaults:
deepfm/conf/score.yaml; the raw input (--input, --layout, --day0-date) from
deepfm/conf/preprocess.yaml, so scoring reads the logs where and as preprocessing does.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
from collections.abc import Sequence

from deepfm.cli.config import JobParser, load_defaults, load_schema, spark_conf
from deepfm.cli.logs import setup_logging
from deepfm.core import fs
from deepfm.prep.rawlogs import LAYOUTS

log = logging.getLogger(__name__)


def parser() -> JobParser:
    raw = load_defaults("preprocess")
    defaults = {**load_defaults("score"), **{k: raw[k] for k in ("input", "layout", "day0_date")}}
    p = JobParser("score", __doc__ or "", defaults)
    p.add_argument("--date", required=True, type=dt.date.fromisoformat, help="day to score, YYYY-MM-DD")
    p.add_argument(
        "--model", required=True,
        help="model bundle directory (a path or URI: the executors load it from there), or a registry reference: "
        "models:/<name>@<alias> or models:/<name>/<version>",
    )  # fmt: skip
    p.add_argument("--table", required=True, help="scores Delta table: a path (contains '/') or a metastore table name")
    p.option("--input", key="input", help="raw log root: date=YYYY-MM-DD/ folders or Criteo day_N[.gz] files")
    p.option("--layout", key="layout", choices=("auto", *LAYOUTS), help="raw layout (auto: detected from the root)")
    p.option("--day0-date", key="day0_date", help="criteo layout: the date of day_0")
    p.add_argument(
        "--schema",
        help="the logs' schema (a preset or a schema file), checked against the one the model was fitted on "
        "(default: that one)",
    )
    p.option(
        "--metrics-table",
        key="metrics_table",
        help="Delta table the day's metrics are appended to (default: <table>_metrics)",
    )
    p.option(
        "--rejects",
        key="rejects",
        help="directory for rejected rows, written as Parquet to <rejects>/<date>/ "
        "(default: <table>_rejects; required when --table is a metastore name)",
    )
    p.add_argument("--summary", help="also write the JSON summary to this file")
    p.option(
        "--allow-schema-evolution",
        key="allow_schema_evolution",
        action=argparse.BooleanOptionalAction,
        help="add columns an existing table lacks instead of refusing it (types never change)",
    )
    p.option(
        "--batch-size", key="batch_size", type=int, help="rows per Arrow batch, i.e. per forward pass on the executors"
    )
    p.option(
        "--torch-threads", key="torch_threads", type=int, help="torch threads per Python worker (0: spark.task.cpus)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args, values = parser().parse(argv)
    setup_logging()
    # Imported after argument parsing so `--help` answers without loading torch.
    from deepfm.core.features import FeatureSpecError
    from deepfm.core.tracking import RegistryError, StoreError, TrackingSettings
    from deepfm.models.bundle import BundleError
    from deepfm.ops.spark import get_spark
    from deepfm.prep.rawlogs import InputDayError
    from deepfm.serving.delta import TableError
    from deepfm.serving.score import SchemaMismatchError, ScoreOptions, run

    options = ScoreOptions(
        date=args.date,
        model=args.model,
        table=args.table,
        input_root=str(values["input"]),
        metrics_table=values["metrics_table"],
        rejects=values["rejects"],
        layout=values["layout"],
        day0_date=dt.date.fromisoformat(str(values["day0_date"])),
        allow_schema_evolution=bool(values["allow_schema_evolution"]),
        schema=load_schema(args.schema) if args.schema else None,
        legacy_schema=load_schema("criteo"),  # specs written before schemas were recorded are Criteo's
        batch_size=int(values["batch_size"]),
        torch_threads=int(values["torch_threads"]),
        tracking=TrackingSettings.from_dict(values["tracking"]["mlflow"]),
    )
    spark = get_spark("score", spark_conf(values))
    try:
        summary = run(spark, options)
        status = 0 if summary["reconciled"] else 1
    except (
        TableError,
        BundleError,
        FeatureSpecError,
        InputDayError,
        RegistryError,
        SchemaMismatchError,
        StoreError,
    ) as exc:
        log.error("refused, nothing written: %s", exc)
        summary, status = {"date": args.date.isoformat(), "error": str(exc)}, 2
    finally:
        spark.stop()
    if status == 1:
        log.error("rows in %d != scored %d + rejected %d", summary["rows_in"], summary["scored"], summary["rejected"])
    if args.summary:
        fs.write_json(args.summary, summary, indent=None)
    print(json.dumps(summary))
    return status
