"""Scoring on the executors: encoded rows in, predicted CTRs out, and the day's metrics summed by
the tasks that predict (no second pass over the scores).

``mapInArrow`` hands Arrow batches to a function that loads the bundle once per Python worker
process (workers are reused across tasks) and predicts a whole batch per forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from pyspark.accumulators import Accumulator, AccumulatorParam
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from deepfm.core import fs
from deepfm.core.features import FeatureSpec
from deepfm.core.metrics import BinaryMetrics, finite_or_none
from deepfm.models.bundle import Bundle, load_bundle
from deepfm.prep.encoding import encode

PREDICTION_SCHEMA = T.StructType(
    [
        T.StructField("impression_id", T.LongType(), False),
        T.StructField("label", T.FloatType(), True),
        T.StructField("ctr", T.FloatType(), False),
    ]
)


_MODELS: dict[tuple[str, str], torch.nn.Module] = {}


def _worker_model(path: str, version: str, threads: int, storage: fs.S3Settings) -> torch.nn.Module:
    """The bundle's model, loaded from wherever ``path`` is (``storage``: how the driver reaches
    S3) once per Python worker process and kept for later tasks."""
    key = (path, version)
    if key not in _MODELS:
        torch.set_num_threads(threads)
        fs.use_s3(storage)
        bundle = load_bundle(path)
        if bundle.version != version:
            raise RuntimeError(f"bundle {path} changed during the run: {bundle.version} != {version}")
        _MODELS[key] = bundle.model
    return _MODELS[key]


class MetricsSum(AccumulatorParam):
    """Sums ``metrics_vector`` arrays; ``None`` is the zero (nothing to ship with each task)."""

    def zero(self, value: np.ndarray | None) -> None:
        return None

    def addInPlace(self, a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
        if a is None or b is None:
            return b if a is None else a
        a += b
        return a


# Extra entries after the ``BinaryMetrics`` state: every row's count and CTR sum, labelled or not.
_ROWS, _CTR_SUM = -2, -1


def metrics_vector(metrics: BinaryMetrics, rows: int, ctr_sum: float) -> np.ndarray:
    return np.append(metrics.to_tensor().numpy(), [rows, ctr_sum])


def predict_fn(
    path: str,
    version: str,
    spec: FeatureSpec,
    threads: int,
    storage: fs.S3Settings,
    state: Accumulator | None = None,
) -> Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The ``mapInArrow`` function: encoded Arrow batches -> ``PREDICTION_SCHEMA`` batches.

    Columns go from Arrow straight to numpy and torch (no pandas in between), and the function
    closes over names only (not the model), so shipping it to executors is cheap: each executor
    loads the bundle from ``path`` (any URI its hosts reach: an object store's on a cluster,
    with the driver's ``storage`` settings) itself. With ``state``
    (a ``MetricsSum`` accumulator), each task also adds its rows' metrics (``metrics_vector``:
    training's ``BinaryMetrics`` on labelled rows, and every row's count and CTR sum) from the
    predictions it returns, so the day's metrics need no second pass over the scores. Spark
    merges a task's accumulator update once per partition of the write's result stage (a failed
    or speculative duplicate attempt's is not added), and ``run`` checks the summed row count
    against the commit's.
    """
    cat_names = spec.categorical_columns
    num_names = [f.name for f in spec.numeric_fields]
    label = spec.label

    def columns(batch: pa.RecordBatch, names: list[str], dtype: type) -> torch.Tensor:
        stacked: np.ndarray = np.empty((batch.num_rows, len(names)), dtype=dtype)
        for j, name in enumerate(names):
            stacked[:, j] = batch.column(name).to_numpy()
        return torch.from_numpy(stacked)

    def predict(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        model = _worker_model(path, version, threads, storage)
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
            state.add(metrics_vector(metrics, rows, ctr_sum))

    return predict


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
        "impression_id", spec.label, *spec.categorical_columns, *(f.name for f in spec.numeric_fields)
    )


def torch_threads(spark: SparkSession, requested: int = 0) -> int:
    """Torch threads per Python worker: ``requested``, else the cores a task holds, so the
    concurrent tasks of an executor do not oversubscribe its cores."""
    return requested or int(spark.sparkContext.getConf().get("spark.task.cpus", "1"))


def predict(
    encoded: DataFrame,
    bundle_path: str,
    bundle: Bundle,
    threads: int,
    storage: fs.S3Settings,
    state: Accumulator | None = None,
) -> DataFrame:
    """Encoded rows -> ``impression_id, label, ctr``, the model evaluated on the executors, which
    load the bundle from ``bundle_path`` (with ``state``, also adding the predictions' metrics to
    it: see ``predict_fn``)."""
    fn = predict_fn(bundle_path, bundle.version, bundle.spec, threads, storage, state)
    return encoded.mapInArrow(fn, PREDICTION_SCHEMA)


def day_metrics(vector: np.ndarray | None) -> dict[str, Any]:
    """Row count, mean CTR, and on labelled rows observed CTR, AUC, logloss and calibration,
    from the summed ``metrics_vector`` of the day's predictions (``None``: no rows).

    The labelled metrics are training's ``BinaryMetrics`` (same definitions as validation, so
    drift compares like with like), accumulated per task on the executors while they predict:
    the driver receives one state vector per task, never the day's rows.
    """
    if vector is None:
        vector = metrics_vector(BinaryMetrics(), 0, 0.0)
    rows = int(vector[_ROWS])
    labelled = BinaryMetrics.from_tensor(torch.from_numpy(vector[:_ROWS].copy())).compute()
    return {
        "scored": rows,
        "mean_ctr": float(vector[_CTR_SUM] / rows) if rows else None,
        "labeled": labelled["n"],
        "observed_ctr": finite_or_none(labelled["ctr_observed"]),
        "auc": finite_or_none(labelled["auc"]),
        "logloss": finite_or_none(labelled["logloss"]),
        "calibration": finite_or_none(labelled["calibration"]),
    }
