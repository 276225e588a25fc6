"""Daily batch scoring: one day of raw click logs -> predicted CTRs in a Delta table.

    load bundle ─► read_raw_day ─┬─► validate ─► rejects Parquet  <rejects>/<D>/      (pass 1)
                                 └─► minus rejects ─► parse ─► encode(bundle spec)      (pass 2)
                                       ─► predict (mapInArrow) ─► Delta replaceWhere "date = D"
    then: the day's metrics (rows, mean CTR, AUC / logloss / calibration), summed by the predict
    tasks from the predictions they return (no second pass), appended to a small Delta metrics
    table, and one summary that reconciles rows in = scored (the commit's own row count) +
    rejected, and the commit's row count with the rows the metrics were summed over.

Every refusal (missing or corrupt bundle or spec, incompatible table, missing input day)
happens before the first write. A rerun for a date atomically swaps that date's partition
(``replaceWhere``); runs for different dates touch disjoint partitions, which Delta's optimistic
concurrency lets both commit. Each commit carries the run in its ``userMetadata``, so
``DESCRIBE HISTORY`` shows every run and time travel reaches each one.

The model runs on the executors: ``mapInArrow`` hands Arrow batches to a function that loads
the bundle once per Python worker process (workers are reused across tasks) and predicts a
whole batch per forward pass.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from delta.tables import DeltaTable
from py4j.protocol import Py4JJavaError
from pyspark.accumulators import Accumulator, AccumulatorParam
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, DataFrameWriter, Observation, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from deepfm.bundle import Bundle, load_bundle
from deepfm.encoding import encode
from deepfm.features import FeatureSpec
from deepfm.metrics import BinaryMetrics
from deepfm.rawlogs import parse_valid, quarantined, read_raw_day, with_reason, without_quarantined

log = logging.getLogger(__name__)

PARTITION_COLUMN = "date"
SCORES_SCHEMA = T.StructType([
    T.StructField("impression_id", T.LongType(), False),  # rawlogs.impression_id: stable across reruns
    T.StructField("date", T.DateType(), False),
    T.StructField("ctr", T.FloatType(), False),
    T.StructField("label", T.FloatType(), True),  # the logged click, so metrics can be recomputed
    T.StructField("model_name", T.StringType(), False),
    T.StructField("model_version", T.StringType(), False),
    T.StructField("spec_version", T.StringType(), False),
    T.StructField("scored_at", T.TimestampType(), False),
])  # fmt: skip
METRICS_SCHEMA = T.StructType([
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
])  # fmt: skip
PREDICTION_SCHEMA = T.StructType([
    T.StructField("impression_id", T.LongType(), False),
    T.StructField("label", T.FloatType(), True),
    T.StructField("ctr", T.FloatType(), False),
])  # fmt: skip
_CREATE_ATTEMPTS = 3


class ScoringError(ValueError):
    """The run was refused before anything was written: the table cannot take its rows."""


@dataclass(frozen=True)
class ScoreOptions:
    """One run of the job; ``jobs/score.py`` fills it from the command line and conf/score.yaml."""

    date: dt.date
    model: str
    table: str
    input_root: str
    metrics_table: str | None = None  # default: <table>_metrics
    rejects: str | None = None  # default: <table>_rejects (a path table only)
    layout: str = "auto"
    day0_date: dt.date | None = None
    allow_schema_evolution: bool = False
    batch_size: int = 8192
    torch_threads: int = 0  # 0: spark.task.cpus (see torch_threads)


@dataclass(frozen=True)
class TableRef:
    """A Delta table named by a path (contains ``/``; what the pipeline uses) or a metastore name."""

    location: str
    is_path: bool

    @classmethod
    def of(cls, arg: str) -> "TableRef":
        if "://" in arg:
            return cls(arg.rstrip("/"), True)
        if "/" in arg:
            return cls(str(Path(arg).resolve()), True)
        return cls(arg, False)

    @property
    def ident(self) -> str:
        """The table in SQL and ``DeltaTable.forName``."""
        return f"delta.`{self.location}`" if self.is_path else self.location

    def sibling(self, suffix: str) -> "TableRef":
        return TableRef(self.location + suffix, self.is_path)

    def exists(self, spark: SparkSession) -> bool:
        if self.is_path:
            return DeltaTable.isDeltaTable(spark, self.location)
        return spark.catalog.tableExists(self.location)

    def save(self, writer: DataFrameWriter) -> None:
        writer.save(self.location) if self.is_path else writer.saveAsTable(self.location)

    def __str__(self) -> str:
        return self.location


@dataclass(frozen=True)
class RunInfo:
    """What every row and metrics record of one run is stamped with."""

    run_id: str
    date: dt.date
    scored_at: dt.datetime
    model_name: str
    model_version: str
    spec_version: str

    def user_metadata(self) -> str:
        """The commit's ``userMetadata``: who wrote it, shown by ``DESCRIBE HISTORY``."""
        return json.dumps({"job": "score", "run_id": self.run_id, "date": self.date.isoformat(),
                           "model_name": self.model_name, "model_version": self.model_version})


@contextmanager
def stage(name: str) -> Iterator[None]:
    start = time.perf_counter()
    log.info("%s ...", name)
    yield
    log.info("%s done in %.1fs", name, time.perf_counter() - start)


# ------------------------------------------------------------------------ executor side

_MODELS: dict[tuple[str, str], torch.nn.Module] = {}


def _worker_model(path: str, version: str, threads: int) -> torch.nn.Module:
    """The bundle's model, loaded once per Python worker process and kept for later tasks."""
    key = (path, version)
    if key not in _MODELS:
        torch.set_num_threads(threads)
        bundle = load_bundle(path)
        if bundle.version != version:
            raise RuntimeError(f"bundle {path} changed during the run: {bundle.version} != {version}")
        _MODELS[key] = bundle.model
    return _MODELS[key]


class _StateSum(AccumulatorParam):
    """Sums ``_metrics_vector`` arrays; ``None`` is the zero (nothing to ship with each task)."""

    def zero(self, value: np.ndarray | None) -> None:
        return None

    def addInPlace(self, a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
        if a is None or b is None:
            return b if a is None else a
        a += b
        return a


# Extra entries after the ``BinaryMetrics`` state: every row's count and CTR sum, labelled or not.
_ROWS, _CTR_SUM = -2, -1


def _metrics_vector(metrics: BinaryMetrics, rows: int, ctr_sum: float) -> np.ndarray:
    return np.append(metrics.to_tensor().numpy(), [rows, ctr_sum])


def predict_fn(
    path: str, version: str, spec: FeatureSpec, threads: int, state: Accumulator | None = None
) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The ``mapInArrow`` function: encoded Arrow batches -> ``PREDICTION_SCHEMA`` batches.

    Columns go from Arrow straight to numpy and torch (no pandas in between), and the function
    closes over names only (not the model), so shipping it to executors is cheap. With ``state``
    (a ``_StateSum`` accumulator), each task also adds its rows' metrics (``_metrics_vector``:
    training's ``BinaryMetrics`` on labelled rows, and every row's count and CTR sum) from the
    predictions it returns, so the day's metrics need no second pass over the scores. Spark
    merges a task's accumulator update once per partition of the write's result stage (a failed
    or speculative duplicate attempt's is not added), and ``run`` checks the summed row count
    against the commit's.
    """
    cat_names = [f.name for f in spec.categorical_fields]
    num_names = [f.name for f in spec.numeric_fields]
    label = spec.label

    def columns(batch: pa.RecordBatch, names: list[str], dtype: type) -> torch.Tensor:
        stacked = np.empty((batch.num_rows, len(names)), dtype=dtype)
        for j, name in enumerate(names):
            stacked[:, j] = batch.column(name).to_numpy()
        return torch.from_numpy(stacked)

    def predict(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        model = _worker_model(path, version, threads)
        metrics, rows, ctr_sum = BinaryMetrics(), 0, 0.0
        with torch.inference_mode():
            for batch in batches:
                ctr = torch.sigmoid(model(columns(batch, cat_names, np.int64), columns(batch, num_names, np.float32)))
                ctr_np = ctr.numpy()
                labels = batch.column(label)
                if state is not None and batch.num_rows:
                    labelled = ~labels.is_null().to_numpy(zero_copy_only=False)
                    y = labels.to_numpy(zero_copy_only=False)
                    metrics.update(ctr_np[labelled], y[labelled])
                    rows += batch.num_rows
                    ctr_sum += float(ctr_np.sum(dtype=np.float64))
                yield pa.RecordBatch.from_arrays(
                    [batch.column("impression_id"), labels, pa.array(ctr_np)],
                    names=PREDICTION_SCHEMA.fieldNames(),
                )
        if state is not None and rows:
            state.add(_metrics_vector(metrics, rows, ctr_sum))

    return predict


# ---------------------------------------------------------------------------- transforms


def encode_day(valid: DataFrame, spec: FeatureSpec) -> DataFrame:
    """Parsed rows -> the model's inputs, with the bundle's spec and preprocessing's encoder.

    An unsplittable input (one ``.gz`` per day) arrives as one partition; spreading it over the
    cores pays off because the forward pass, not the parse, dominates. (The partitions are
    counted before encoding: planning the encoder's broadcast joins would run them.)
    """
    cores = valid.sparkSession.sparkContext.defaultParallelism
    if valid.rdd.getNumPartitions() < cores:
        valid = valid.repartition(cores)
    return encode(valid, spec).select(
        "impression_id", spec.label, *(f.name for f in spec.categorical_fields), *(f.name for f in spec.numeric_fields)
    )


def torch_threads(spark: SparkSession, requested: int = 0) -> int:
    """Torch threads per Python worker: ``requested``, else the cores a task holds, so the
    concurrent tasks of an executor do not oversubscribe its cores."""
    return requested or int(spark.sparkContext.getConf().get("spark.task.cpus", "1"))


def predict(
    encoded: DataFrame, bundle_path: str, bundle: Bundle, threads: int, state: Accumulator | None = None
) -> DataFrame:
    """Encoded rows -> ``impression_id, label, ctr``, the model evaluated on the executors
    (with ``state``, also adding the predictions' metrics to it: see ``predict_fn``)."""
    fn = predict_fn(bundle_path, bundle.version, bundle.spec, threads, state)
    return encoded.mapInArrow(fn, PREDICTION_SCHEMA)


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


# ------------------------------------------------------------------------- Delta tables


def _schema_problems(
    actual: T.StructType, partitions: list[str], expected: T.StructType, partition_by: list[str]
) -> tuple[list[str], list[str]]:
    """``(fatal, evolvable)`` differences of an existing table from what the job writes."""
    fatal, evolvable = [], []
    if partitions != partition_by:
        fatal.append(f"partitioned by {partitions}, expected {partition_by}")
    have = {f.name: f for f in actual.fields}
    for field in expected.fields:
        if field.name not in have:
            evolvable.append(f"lacks column {field.name} {field.dataType.simpleString()}")
        elif have[field.name].dataType != field.dataType:
            fatal.append(
                f"column {field.name} is {have[field.name].dataType.simpleString()}, "
                f"expected {field.dataType.simpleString()}"
            )
    written = set(expected.fieldNames())
    fatal += [f"has NOT NULL column {f.name} the job does not write" for f in actual.fields
              if f.name not in written and not f.nullable]  # fmt: skip
    return fatal, evolvable


def check_table(
    spark: SparkSession, ref: TableRef, schema: T.StructType, partition_by: list[str], allow_evolution: bool
) -> None:
    """Refuse (``ScoringError``) a table the job cannot write as-is; a missing table is fine.

    ``allow_evolution`` accepts missing columns (the write adds them with ``mergeSchema``);
    type and partitioning conflicts are refused regardless.
    """
    if not ref.exists(spark):
        if ref.is_path and Path(ref.location).exists() and any(Path(ref.location).iterdir()):
            raise ScoringError(f"table {ref}: the path exists and is not a Delta table")
        return
    table = DeltaTable.forName(spark, ref.ident)
    partitions = table.detail().first()["partitionColumns"]
    fatal, evolvable = _schema_problems(table.toDF().schema, list(partitions), schema, partition_by)
    if fatal or (evolvable and not allow_evolution):
        hint = "" if fatal else " (pass --allow-schema-evolution to add the missing columns)"
        raise ScoringError(f"table {ref} has an incompatible schema: {'; '.join(fatal + evolvable)}{hint}")
    if evolvable:
        log.warning("table %s will gain columns: %s", ref, "; ".join(evolvable))


def ensure_table(spark: SparkSession, ref: TableRef, schema: T.StructType, partition_by: list[str]) -> None:
    """Create the table unless it exists, safe against a concurrent run creating it too.

    The run that loses a creation race fails its CREATE (a Delta commit conflict, or "location
    not empty" while the winner is mid-commit), waits, and then finds the table. Existence is
    checked first because a CREATE of an existing path table must restate its exact schema.
    """
    for attempt in range(1, _CREATE_ATTEMPTS + 1):
        if ref.exists(spark):
            return
        builder = DeltaTable.createIfNotExists(spark).addColumns(schema).partitionedBy(*partition_by)
        builder = builder.location(ref.location) if ref.is_path else builder.tableName(ref.location)
        try:
            builder.execute()
            return
        except (Py4JJavaError, AnalysisException) as exc:
            if attempt == _CREATE_ATTEMPTS:
                raise
            log.info("table %s: creation failed, maybe created concurrently by another run; checking again (%s)",
                     ref, str(exc).splitlines()[0][:200])
            time.sleep(attempt)


def committed(spark: SparkSession, ref: TableRef, run_id: str) -> tuple[int, int]:
    """The table version this run committed, found by its ``userMetadata`` in the history, and
    the rows that commit wrote (Delta's own ``numOutputRows`` operation metric).

    Other runs may have committed since, so the newest version is not necessarily ours.
    """
    history = DeltaTable.forName(spark, ref.ident).history(100)
    mine = (
        history.where(F.get_json_object("userMetadata", "$.run_id") == run_id)
        .select("version", F.col("operationMetrics")["numOutputRows"].alias("rows"))
        .first()
    )
    if mine is None:
        raise RuntimeError(f"table {ref}: commit of run {run_id} not found in the last 100 versions")
    return int(mine["version"]), int(mine["rows"] or 0)


def write_day(scores: DataFrame, ref: TableRef, run: RunInfo, merge_schema: bool) -> tuple[int, int]:
    """Atomically replace the day's partition with ``scores``; return the committed version
    and the rows it wrote."""
    writer = (
        scores.write.format("delta")
        .mode("overwrite")
        .option("replaceWhere", f"{PARTITION_COLUMN} = DATE'{run.date.isoformat()}'")
        .option("userMetadata", run.user_metadata())
        .option("mergeSchema", str(merge_schema).lower())
    )
    ref.save(writer)
    return committed(scores.sparkSession, ref, run.run_id)


def counted(df: DataFrame, name: str) -> tuple[DataFrame, Observation]:
    """``df`` counting its rows into an ``Observation`` during the first action that reads it."""
    observation = Observation(name)
    return df.observe(observation, F.count(F.lit(1)).alias("rows")), observation



def append_metrics(spark: SparkSession, ref: TableRef, record: dict[str, Any]) -> None:
    """Append one run's record; blind appends never conflict with other runs' appends.

    The row is built from literals in the JVM (``createDataFrame`` of a Python list would start
    Python workers to deserialize it: seconds on a cold run, for one row).
    """
    row = spark.range(1).select(
        *(F.lit(record[f.name]).cast(f.dataType).alias(f.name) for f in METRICS_SCHEMA.fields)
    )
    ref.save(row.write.format("delta").mode("append"))


# ------------------------------------------------------------------------------ metrics


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value


def day_metrics(vector: np.ndarray | None) -> dict[str, Any]:
    """Row count, mean CTR, and on labelled rows observed CTR, AUC, logloss and calibration,
    from the summed ``_metrics_vector`` of the day's predictions (``None``: no rows).

    The labelled metrics are training's ``BinaryMetrics`` (same definitions as validation, so
    drift compares like with like), accumulated per task on the executors while they predict:
    the driver receives one state vector per task, never the day's rows.
    """
    if vector is None:
        vector = _metrics_vector(BinaryMetrics(), 0, 0.0)
    rows = int(vector[_ROWS])
    labelled = BinaryMetrics.from_tensor(torch.from_numpy(vector[:_ROWS].copy())).compute()
    return {
        "scored": rows,
        "mean_ctr": float(vector[_CTR_SUM] / rows) if rows else None,
        "labeled": labelled["n"],
        "observed_ctr": _finite(labelled["ctr_observed"]),
        "auc": _finite(labelled["auc"]),
        "logloss": _finite(labelled["logloss"]),
        "calibration": _finite(labelled["calibration"]),
    }


# ---------------------------------------------------------------------------------- job


def run(spark: SparkSession, opts: ScoreOptions) -> dict[str, Any]:
    """Score ``opts.date``; return the run summary. Refusals raise before anything is written."""
    start = time.perf_counter()
    table = TableRef.of(opts.table)
    metrics_table = TableRef.of(opts.metrics_table) if opts.metrics_table else table.sibling("_metrics")
    if not (opts.rejects or table.is_path):
        raise ScoringError(f"table {table} is a metastore table: give the rejects directory (--rejects)")
    rejects_dir = f"{(opts.rejects or table.location + '_rejects').rstrip('/')}/{opts.date.isoformat()}"
    bundle_path = str(Path(opts.model).resolve())

    with stage(f"load bundle {bundle_path}"):
        bundle = load_bundle(bundle_path)  # BundleError / FeatureSpecError if missing or corrupt
    with stage("check tables"):
        check_table(spark, table, SCORES_SCHEMA, [PARTITION_COLUMN], opts.allow_schema_evolution)
        check_table(spark, metrics_table, METRICS_SCHEMA, [], opts.allow_schema_evolution)
    run_info = RunInfo(
        run_id=uuid.uuid4().hex,
        date=opts.date,
        scored_at=dt.datetime.now(dt.timezone.utc),
        model_name=bundle.name,
        model_version=bundle.version,
        spec_version=bundle.spec.version,
    )
    log.info("run %s: %s model %s (%s), spec %s", run_info.run_id, opts.date, bundle.name,
             bundle.version, bundle.spec.version)
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(opts.batch_size))
    threads = torch_threads(spark, opts.torch_threads)

    # Lines in and rejects are counted while the rejects are written, not by scans of their own.
    raw, lines = counted(read_raw_day(spark, opts.input_root, opts.date, opts.layout, opts.day0_date),
                         f"rows_in_{run_info.run_id}")
    rejects, rejected_rows = counted(quarantined(with_reason(raw)), f"rejected_{run_info.run_id}")
    with stage(f"write rejects {rejects_dir}"):
        rejects.write.mode("overwrite").parquet(rejects_dir)
        rows_in, rejected = lines.get["rows"], rejected_rows.get["rows"]
    # The rejects pass validated every line; the scoring pass drops the rejects by anti-join.
    valid = parse_valid(without_quarantined(raw, rejects_dir, rejected))
    # The day's metrics are summed from the predictions as they are made (one pass, no re-read).
    state = spark.sparkContext.accumulator(None, _StateSum())
    scores = with_run_columns(predict(encode_day(valid, bundle.spec), bundle_path, bundle, threads, state), run_info)
    with stage(f"score and write {table} date={opts.date}"):
        ensure_table(spark, table, SCORES_SCHEMA, [PARTITION_COLUMN])
        version, written = write_day(scores, table, run_info, opts.allow_schema_evolution)
    metrics = day_metrics(state.value)
    if written != metrics["scored"]:  # the commit's row count against the predictions counted
        log.error("commit %d of %s wrote %d rows, %d were scored", version, table, written, metrics["scored"])
    with stage(f"append metrics {metrics_table}"):
        ensure_table(spark, metrics_table, METRICS_SCHEMA, [])
        append_metrics(spark, metrics_table, {
            **metrics, **vars(run_info), "table_version": version, "rows_in": rows_in, "rejected": rejected,
        })  # fmt: skip

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
        "seconds": round(time.perf_counter() - start, 1),
    }
    log.info("day %s: %d rows in, %d scored, %d rejected, mean ctr %s, auc %s, logloss %s, calibration %s",
             opts.date, rows_in, written, rejected, metrics["mean_ctr"], metrics["auc"],
             metrics["logloss"], metrics["calibration"])
    return summary
