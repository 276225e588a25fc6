"""Score one day of raw click logs into a Delta table of predicted CTRs (partitioned by date).

    spark-submit <deepfm.spark.spark_submit_args(): --driver-java-options, --jars Delta> \\
        jobs/score.py --date 2026-11-22 --model models/2026-11-22/bundle --table delta/ctr_scores

(``python jobs/score.py ...`` works too.) The Java option (-XX:-DontCompileHugeMethods) lets the
JIT compile the encoder's wide generated code (see conf/spark.yaml); without it the job is
slower, not different.

A rerun for the same date replaces that date's rows; other dates are untouched. The last line
of output is a JSON summary. Exit status: 0 done, 1 done but rows in != scored + rejected,
2 refused before writing anything (bad bundle, incompatible table, missing input day).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from pathlib import Path

try:
    import deepfm  # noqa: F401
except ImportError:  # run from a checkout without the editable install
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deepfm.config import load_conf  # noqa: E402
from deepfm.rawlogs import LAYOUTS, InputDayError  # noqa: E402
from deepfm.spark import get_spark  # noqa: E402

log = logging.getLogger("score")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    conf = load_conf("score")
    raw = load_conf("preprocess")  # read the raw logs where and as preprocessing does
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Defaults come from conf/score.yaml; --input, --layout, --day0-date from conf/preprocess.yaml.",
    )  # fmt: skip
    p.add_argument("--date", required=True, type=dt.date.fromisoformat, help="day to score, YYYY-MM-DD")
    p.add_argument("--model", required=True, help="model bundle directory (weights, config, feature spec)")
    p.add_argument("--table", required=True,
                   help="scores Delta table: a path (contains '/') or a metastore table name")
    p.add_argument("--input", default=raw["input"],
                   help="raw log root: date=YYYY-MM-DD/ folders or Criteo day_N[.gz] files (default %(default)s)")
    p.add_argument("--layout", default=raw["layout"], choices=("auto", *LAYOUTS),
                   help="raw layout (default %(default)s: detected from the root)")
    p.add_argument("--day0-date", type=dt.date.fromisoformat, default=raw["day0_date"],
                   help="criteo layout: the date of day_0 (default %(default)s)")
    p.add_argument("--metrics-table", default=conf["metrics_table"],
                   help="Delta table the day's metrics are appended to (default: <table>_metrics)")
    p.add_argument("--rejects", default=conf["rejects"],
                   help="directory for rejected rows, written as Parquet to <rejects>/<date>/ "
                        "(default: <table>_rejects; required when --table is a metastore name)")
    p.add_argument("--summary", help="also write the JSON summary to this file")
    p.add_argument("--allow-schema-evolution", action="store_true", default=conf["allow_schema_evolution"],
                   help="add columns an existing table lacks instead of refusing it (types never change)")
    p.add_argument("--batch-size", type=int, default=conf["batch_size"],
                   help="rows per Arrow batch, i.e. per forward pass on the executors (default %(default)s)")
    p.add_argument("--torch-threads", type=int, default=conf["torch_threads"],
                   help="torch threads per Python worker (default %(default)s: spark.task.cpus)")
    return p.parse_args(argv)  # argparse applies `type` to string defaults too


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    # Imported after argument parsing so `--help` answers without loading torch.
    from deepfm.bundle import BundleError
    from deepfm.features import FeatureSpecError
    from deepfm.scoring import ScoreOptions, ScoringError, run

    options = ScoreOptions(
        date=args.date, model=args.model, table=args.table, input_root=args.input,
        metrics_table=args.metrics_table, rejects=args.rejects, layout=args.layout, day0_date=args.day0_date,
        allow_schema_evolution=args.allow_schema_evolution, batch_size=args.batch_size,
        torch_threads=args.torch_threads,
    )  # fmt: skip
    spark = get_spark("score", load_conf("score")["spark"])
    try:
        summary = run(spark, options)
        status = 0 if summary["reconciled"] else 1
    except (ScoringError, BundleError, FeatureSpecError, InputDayError) as exc:
        log.error("refused, nothing written: %s", exc)
        summary, status = {"date": args.date.isoformat(), "error": str(exc)}, 2
    finally:
        spark.stop()
    if status == 1:
        log.error("rows in %d != scored %d + rejected %d", summary["rows_in"], summary["scored"], summary["rejected"])
    line = json.dumps(summary)
    if args.summary:
        Path(args.summary).parent.mkdir(parents=True, exist_ok=True)
        Path(args.summary).write_text(line + "\n")
    print(line)  # the last line of output: the pipeline parses it
    return status


if __name__ == "__main__":
    sys.exit(main())
