"""Throughput of the scoring job against a bare torch forward pass over the same rows, same run.

One generated day of Criteo-shaped logs, a feature spec fitted on it with the packaged feature
settings, and an untrained model with the paper's network (the packaged model defaults) saved as a
bundle. Rows per second of:

  job_cold  ``deepfm.serving.score.run`` end to end, first run in a fresh session: read + parse +
            rejects + encode + predict on the executors + Delta write + metrics (a daily run,
            including the JVM's and the Python workers' warm-up)
  job       the same run again (a rerun of the day: replaceWhere), warm
  stage     the executors' predict step alone (``mapInArrow`` over the encoded rows, cached in
            Spark, results to the ``noop`` sink): the cost of inference inside Spark
  bare      the same model's forward pass in this process over the same encoded rows, already
            in numpy, in batches of the same size, with torch's default threads and with one
            thread; the faster of the two is the baseline (on a busy machine one thread often
            wins: intra-op threads stall when another process holds a core)

Ratios job/bare, job_cold/bare and stage/bare; the target is job/bare >= 0.5 on a 2-core machine.

Run: ``.venv/bin/python benchmarks/bench_score.py [--rows 500000] [--batch-size 8192]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from deepfm.cli.config import load_defaults, load_schema, spark_conf
from deepfm.core import fs
from deepfm.models import ModelDefaults, build_model_for_spec
from deepfm.models.bundle import load_bundle, save_bundle
from deepfm.ops.spark import get_spark
from deepfm.prep.encoding import FeatureConfig, fit
from deepfm.prep.rawlogs import LogFormat
from deepfm.prep.synthetic import write_logs
from deepfm.serving.predict import encode_day, predict, torch_threads
from deepfm.serving.score import ScoreOptions, run

DAY = dt.date(2026, 11, 22)


def rows_per_second(action: Callable[[], int]) -> float:
    """Rows per second of ``action``, which returns how many rows it processed."""
    start = time.perf_counter()
    rows = action()
    return rows / (time.perf_counter() - start)


def to_noop(df: DataFrame, rows: int) -> int:
    """Compute ``df`` into Spark's ``noop`` sink (everything runs, nothing is written)."""
    df.write.format("noop").mode("overwrite").save()
    return rows


def bare_forward(model: torch.nn.Module, cat: np.ndarray, num: np.ndarray, batch_size: int) -> int:
    cat_t, num_t = torch.from_numpy(cat), torch.from_numpy(num)
    with torch.inference_mode():
        for i in range(0, len(cat), batch_size):
            torch.sigmoid(model(cat_t[i : i + batch_size], num_t[i : i + batch_size]))
    return len(cat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=500_000, help="rows of the generated day")
    parser.add_argument("--batch-size", type=int, default=load_defaults("score")["batch_size"])
    parser.add_argument("--model", default="deepfm", help="registry model to score with")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    spark = get_spark("bench_score", spark_conf(load_defaults("score")))  # the job's session settings

    with tempfile.TemporaryDirectory(prefix="bench_score_") as tmp:
        root = Path(tmp)
        write_logs(root / "raw", days=1, rows_per_day=args.rows, start_date=DAY, schema=load_schema("criteo"), seed=1)
        schema = load_schema("criteo")
        logs = LogFormat(schema)
        checked = logs.with_reason(logs.read_day(spark, str(root / "raw"), DAY))
        valid = logs.parse_valid(checked.where(F.col("reason").isNull()).drop("reason", "field"))
        spec = fit(valid, FeatureConfig.from_dict(load_defaults("features"), schema), str(root / "data"))
        model = build_model_for_spec(args.model, spec, ModelDefaults(load_defaults("models")).resolve(args.model))
        bundle_path = str(root / "bundle")
        save_bundle(bundle_path, model, spec)
        bundle = load_bundle(bundle_path)

        opts = ScoreOptions(
            date=DAY,
            model=bundle_path,
            table=str(root / "scores"),
            input_root=str(root / "raw"),
            batch_size=args.batch_size,
        )
        job_cold = rows_per_second(lambda: run(spark, opts)["scored"])
        job = rows_per_second(lambda: run(spark, opts)["scored"])

        encoded = encode_day(valid, spec).cache()
        rows = encoded.count()
        storage = fs.S3Settings.from_hadoop(spark.sparkContext.getConf().getAll())
        scores = predict(encoded, bundle_path, bundle, torch_threads(spark), storage)
        stage = rows_per_second(lambda: to_noop(scores, rows))

        local = encoded.toPandas()
        cat = local[spec.categorical_columns].to_numpy(np.int64)
        num = local[[f.name for f in spec.numeric_fields]].to_numpy(np.float32)
        bare_by_threads = {}
        for threads in sorted({torch.get_num_threads(), 1}, reverse=True):
            torch.set_num_threads(threads)
            bare_forward(bundle.model, cat[: args.batch_size], num[: args.batch_size], args.batch_size)  # warm-up
            bare_by_threads[threads] = rows_per_second(lambda: bare_forward(bundle.model, cat, num, args.batch_size))
        bare = max(bare_by_threads.values())

    result = {
        "rows": rows,
        "batch_size": args.batch_size,
        "model": args.model,
        "cores": spark.sparkContext.defaultParallelism,
        "bare_rows_per_s_by_threads": {t: round(v) for t, v in bare_by_threads.items()},
        **{
            f"{name}_rows_per_s": round(value)
            for name, value in (("job_cold", job_cold), ("job", job), ("stage", stage), ("bare", bare))
        },
        "job_over_bare": round(job / bare, 3),
        "job_cold_over_bare": round(job_cold / bare, 3),
        "stage_over_bare": round(stage / bare, 3),
    }
    print(f"scoring {rows:,d} rows ({args.model}, batch {args.batch_size}, {result['cores']} cores)")
    for name in ("job_cold", "job", "stage", "bare"):
        print(f"  {name:9s} {result[f'{name}_rows_per_s']:>10,d} rows/s")
    print(
        f"  job/bare {result['job_over_bare']:.2f}  job_cold/bare {result['job_cold_over_bare']:.2f}  "
        f"stage/bare {result['stage_over_bare']:.2f}   (target job/bare >= 0.5)"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
