"""Daily batch scoring: one day of raw click logs -> predicted CTRs in a Delta table.

    load bundle ─► read_day ─────┬─► validate ─► rejects Parquet  <rejects>/<D>/      (pass 1)
                                 └─► minus rejects ─► parse ─► encode(bundle spec)      (pass 2)
                                       ─► predict (mapInArrow) ─► Delta replaceWhere "date = D"
    then: the day's metrics (rows, mean CTR, AUC / logloss / calibration), summed by the predict
    tasks from the predictions they return (no second pass), appended to a small Delta metrics
    table, and one summary that reconciles rows in = scored (the commit's own row count) +
    rejected, and the commit's row count with the rows the metrics were summed over.

The logs are read with the log schema recorded in the bundle's feature spec. Every refusal
(missing or corrupt bundle or spec, logs declared of another schema or that do not look like the
bundle's, incompatible table, missing input day) happens before the first write. A rerun for a
date atomically swaps that date's partition (``replaceWhere``); runs for different dates touch
disjoint partitions, which Delta's optimistic concurrency lets both commit. With an event-time
schema, the day scored is the folder's: every row written to it, whatever its event time.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from deepfm.core import fs
from deepfm.core.schema import LogSchema
from deepfm.core.timing import Stages
from deepfm.core.tracking import Tracker, TrackingSettings, resolve_model, store_uri
from deepfm.models.bundle import load_bundle
from deepfm.prep.rawlogs import LogFormat, quarantined, without_quarantined
from deepfm.serving.delta import (
    TableError,
    TableRef,
    append_record,
    check_table,
    committed,
    ensure_table,
    replace_partition,
)
from deepfm.serving.predict import MetricsSum, day_metrics, encode_day, predict, torch_threads

log = logging.getLogger(__name__)

# The summary's numbers an MLflow run of the day records.
DAY_METRICS = ("rows_in", "scored", "rejected", "mean_ctr", "observed_ctr", "auc", "logloss", "calibration")

PARTITION_COLUMN = "date"
SCORES_SCHEMA = T.StructType(
    [
        T.StructField("impression_id", T.LongType(), False),  # rawlogs.impression_id: stable across reruns
        T.StructField("date", T.DateType(), False),
        T.StructField("ctr", T.FloatType(), False),
        T.StructField("label", T.FloatType(), True),  # the logged click, so metrics can be recomputed
        T.StructField("model_name", T.StringType(), False),
        T.StructField("model_version", T.StringType(), False),
        T.StructField("spec_version", T.StringType(), False),
        T.StructField("scored_at", T.TimestampType(), False),
    ]
)
METRICS_SCHEMA = T.StructType(
    [
        T.StructField("date", T.DateType(), False),
        T.StructField("run_id", T.StringType(), False),
        T.StructField("scored_at", T.TimestampType(), False),
        T.StructField("model_name", T.StringType(), False),
        T.StructField("model_version", T.StringType(), False),
        T.StructField("spec_version", T.StringType(), False),
        T.StructField("table_version", T.LongType(), False),
        T.StructField("rows_in", T.LongType(), False),
        T.StructField("scored", T.LongType(), False),
        T.StructField("rejected", T.LongType(), False),
        T.StructField("mean_ctr", T.DoubleType(), True),
        T.StructField("labeled", T.LongType(), False),
        T.StructField("observed_ctr", T.DoubleType(), True),
        T.StructField("auc", T.DoubleType(), True),
        T.StructField("logloss", T.DoubleType(), True),
        T.StructField("calibration", T.DoubleType(), True),
    ]
)


@dataclass(frozen=True)
class ScoreOptions:
    """One run of the job; ``deepfm score`` fills it from the command line and deepfm/conf/score.yaml."""

    date: dt.date
    model: str  # a bundle folder, or a registry reference: models:/<name>@<alias> or models:/<name>/<version>
    table: str
    input_root: str
    metrics_table: str | None = None  # default: <table>_metrics
    rejects: str | None = None  # default: <table>_rejects (a path table only)
    layout: str = "auto"
    day0_date: dt.date | None = None
    allow_schema_evolution: bool = False
    # The logs' schema as the user declares it (None: the bundle's); it must be the bundle's.
    schema: LogSchema | None = None
    # The schema of bundles whose spec predates recorded schemas (they were all Criteo's).
    legacy_schema: LogSchema | None = None
    batch_size: int = 8192
    torch_threads: int = 0  # 0: spark.task.cpus (see torch_threads)
    tracking: TrackingSettings = field(default_factory=lambda: TrackingSettings(enabled=False))


@dataclass(frozen=True)
class RunInfo:
    """What every row and metrics record of one run is stamped with."""

    run_id: str
    date: dt.date
    scored_at: dt.datetime
    model_name: str
    model_version: str
    spec_version: str

    def user_metadata(self) -> dict[str, str]:
        """The commit's ``userMetadata``: who wrote it, shown by ``DESCRIBE HISTORY``."""
        return {
            "job": "score",
            "run_id": self.run_id,
            "date": self.date.isoformat(),
            "model_name": self.model_name,
            "model_version": self.model_version,
        }


def with_run_columns(predictions: DataFrame, run: RunInfo) -> DataFrame:
    """Predictions -> rows of the scores table (``SCORES_SCHEMA`` order), stamped with the run."""
    stamps = {
        "date": F.lit(run.date),
        "model_name": F.lit(run.model_name),
        "model_version": F.lit(run.model_version),
        "spec_version": F.lit(run.spec_version),
        "scored_at": F.lit(run.scored_at),
    }
    return predictions.select(
        *(stamps[f.name].alias(f.name) if f.name in stamps else F.col(f.name) for f in SCORES_SCHEMA.fields)
    )


def counted(df: DataFrame, name: str) -> tuple[DataFrame, Observation]:
    """``df`` counting its rows into an ``Observation`` during the first action that reads it."""
    observation = Observation(name)
    return df.observe(observation, F.count(F.lit(1)).alias("rows")), observation


class SchemaMismatchError(ValueError):
    """The logs are declared of, or look like, another schema than the model's spec was fitted on."""


def fitted_schema(spec_schema: LogSchema | None, opts: ScoreOptions) -> LogSchema:
    """The schema to read the logs with: the bundle's; a declared one must be the same."""
    schema = spec_schema or opts.legacy_schema
    if schema is None:
        raise SchemaMismatchError("the bundle's feature spec records no log schema and no legacy schema was given")
    if opts.schema is not None and opts.schema.fingerprint != schema.fingerprint:
        raise SchemaMismatchError(
            f"the logs are declared as schema {opts.schema.name!r} ({opts.schema.fingerprint}) but the model was "
            f"fitted on schema {schema.name!r} ({schema.fingerprint}): score them with a model trained on their schema"
        )
    return schema


# Records of a day looked at before anything is written; if none of them is valid and the most
# common problem is the record's shape, the logs are not of the model's schema.
SNIFF_RECORDS = 200


def check_logs_match(raw: DataFrame, logs: LogFormat) -> None:
    """Refuse logs whose first records all fail at the record level (field count, broken JSON),
    or all lack a known label: logs of another schema than the model's."""
    first = logs.with_reason(raw.limit(SNIFF_RECORDS)).groupBy("reason").count().collect()
    by_reason = {row["reason"]: int(row["count"]) for row in first}
    if not first or None in by_reason:
        return
    worst = max(by_reason, key=by_reason.__getitem__)
    if worst in ("wrong_field_count", "malformed_record", "bad_label"):
        example = raw.limit(1).collect()[0]["raw_line"][:200]
        raise SchemaMismatchError(
            f"none of the day's first {sum(by_reason.values())} records is a valid {logs.schema.name!r} record "
            f"(the model's log schema): {by_reason}; the first reads {example!r}"
        )


def run(spark: SparkSession, opts: ScoreOptions) -> dict[str, Any]:
    """Score ``opts.date``; return the run summary. Refusals raise before anything is written."""
    start, stages = time.perf_counter(), Stages(log)
    table = TableRef.of(opts.table)
    metrics_table = TableRef.of(opts.metrics_table) if opts.metrics_table else table.sibling("_metrics")
    if not (opts.rejects or table.is_path):
        raise TableError(f"table {table} is a metastore table: give the rejects directory (--rejects)")
    rejects_dir = f"{(opts.rejects or table.location + '_rejects').rstrip('/')}/{opts.date.isoformat()}"
    store = fs.parent(table.location) if table.is_path else str(Path.cwd())  # where a default MLflow store lives
    if opts.tracking.enabled:  # refused before anything is written, not when the day is tracked
        store_uri(opts.tracking, store)
    # Executors load the bundle themselves: a local path made absolute, an object store's URI as is.
    bundle_path = fs.absolute(resolve_model(opts.model, opts.tracking, store))

    log.info(
        "scoring %s with %s into %s (metrics %s, rejects %s)", opts.date, bundle_path, table, metrics_table, rejects_dir
    )
    with stages("load bundle"):
        bundle = load_bundle(bundle_path)  # BundleError / FeatureSpecError if missing or corrupt
        logs = LogFormat(fitted_schema(bundle.spec.schema, opts))
    with stages("check tables"):
        check_table(spark, table, SCORES_SCHEMA, [PARTITION_COLUMN], opts.allow_schema_evolution)
        check_table(spark, metrics_table, METRICS_SCHEMA, [], opts.allow_schema_evolution)
    run_info = RunInfo(
        run_id=uuid.uuid4().hex,
        date=opts.date,
        scored_at=dt.datetime.now(dt.UTC),
        model_name=bundle.name,
        model_version=bundle.version,
        spec_version=bundle.spec.version,
    )
    log.info(
        "run %s: %s model %s (%s), spec %s",
        run_info.run_id,
        opts.date,
        bundle.name,
        bundle.version,
        bundle.spec.version,
    )
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(opts.batch_size))
    threads = torch_threads(spark, opts.torch_threads)

    # Lines in and rejects are counted while the rejects are written, not by scans of their own.
    day = logs.read_day(spark, opts.input_root, opts.date, opts.layout, opts.day0_date)
    with stages("check logs"):
        check_logs_match(day, logs)
    raw, lines = counted(day, f"rows_in_{run_info.run_id}")
    rejects, rejected_rows = counted(quarantined(logs.rejected(raw)), f"rejected_{run_info.run_id}")
    with stages("write rejects"):
        rejects.write.mode("overwrite").parquet(rejects_dir)
        rows_in, rejected = lines.get["rows"], rejected_rows.get["rows"]
    # The rejects pass validated every line; the scoring pass drops the rejects by anti-join.
    valid = logs.parse_valid(without_quarantined(raw, rejects_dir, rejected))
    # The day's metrics are summed from the predictions as they are made (one pass, no re-read).
    state = spark.sparkContext.accumulator(None, MetricsSum())
    storage = fs.S3Settings.from_configuration(spark.sparkContext._jsc.hadoopConfiguration().get)  # as S3A's
    scores = with_run_columns(
        predict(encode_day(valid, bundle.spec), bundle_path, bundle, threads, storage, state), run_info
    )
    with stages("score and write"):
        ensure_table(spark, table, SCORES_SCHEMA, [PARTITION_COLUMN])
        where = f"{PARTITION_COLUMN} = DATE'{opts.date.isoformat()}'"
        replace_partition(scores, table, where, run_info.user_metadata(), opts.allow_schema_evolution)
        version, written = committed(spark, table, run_info.run_id)
    metrics = day_metrics(state.value)
    if written != metrics["scored"]:  # the commit's row count against the predictions counted
        log.error("commit %d of %s wrote %d rows, %d were scored", version, table, written, metrics["scored"])
    with stages("append metrics"):
        ensure_table(spark, metrics_table, METRICS_SCHEMA, [])
        append_record(
            spark,
            metrics_table,
            METRICS_SCHEMA,
            {
                **metrics,
                **vars(run_info),
                "table_version": version,
                "rows_in": rows_in,
                "rejected": rejected,
            },
        )

    summary = {
        "run_id": run_info.run_id,
        "date": opts.date.isoformat(),
        "rows_in": rows_in,
        "scored": written,
        "rejected": rejected,
        "reconciled": rows_in == written + rejected and written == metrics["scored"],
        **{k: metrics[k] for k in ("mean_ctr", "labeled", "observed_ctr", "auc", "logloss", "calibration")},
        "model_name": bundle.name,
        "model_version": bundle.version,
        "spec_version": bundle.spec.version,
        "table": str(table),
        "version": version,
        "metrics_table": str(metrics_table),
        "rejects": rejects_dir,
        "stage_seconds": stages.seconds,
        "seconds": round(time.perf_counter() - start, 1),
    }
    summary["mlflow_run_id"] = track(opts, summary, store)
    log.info(
        "day %s: %d rows in, %d scored, %d rejected, mean ctr %s, auc %s, logloss %s, calibration %s",
        opts.date,
        rows_in,
        written,
        rejected,
        metrics["mean_ctr"],
        metrics["auc"],
        metrics["logloss"],
        metrics["calibration"],
    )
    return summary


def track(opts: ScoreOptions, summary: dict[str, Any], store: str) -> str | None:
    """The day's metrics as an MLflow run of its own, tagged with the model that scored it."""
    tracker = Tracker(opts.tracking, store)
    params = {"date": summary["date"], "model": opts.model, "table": summary["table"], "batch_size": opts.batch_size}
    tags = {k: str(summary[k]) for k in ("date", "model_name", "model_version", "spec_version", "run_id")}
    run_id = tracker.start(params, run_name=f"score-{summary['date']}", tags={**tags, "job": "score"})
    metrics = {k: v for k, v in summary.items() if k in DAY_METRICS and v is not None}
    tracker.log_metrics(metrics, step=0)
    tracker.finish()
    return run_id
