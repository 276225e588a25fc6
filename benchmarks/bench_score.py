"""Throughput of the scoring job against a bare torch forward pass over the same rows, same run.

One generated day of Criteo-shaped logs, a feature spec fitted on it with ``conf/features.yaml``
when present, and an untrained DeepFM with the paper's network (``conf/models.yaml``) saved as
a bundle. Three measurements of rows per second:

  job     ``deepfm.scoring.run`` end to end: read + parse + encode + predict on the executors +
          Delta write + rejects + metrics (everything a daily run does)
  stage   the executors' predict step alone (``mapInPandas`` over the encoded rows, cached in
          Spark, results to the ``noop`` sink): the cost of scoring inside Spark
  bare    the same model's forward pass in this process over the same encoded rows, already
          in numpy, in batches of the same size: the CPU's limit for this model

Ratios job/bare and stage/bare; the target is job/bare >= 0.5 on a 2-core machine.

Run: ``.venv/bin/python benchmarks/bench_score.py [--rows 200000] [--batch-size 8192]``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deepfm.bundle import load_bundle, save_bundle
from deepfm.config import conf_dir, load_conf
from deepfm.encoding import fit
from deepfm.models import build_model_for_spec
from deepfm.rawlogs import parse, read_raw_day
from deepfm.scoring import ScoreOptions, encode_day, predict, run
from deepfm.spark import get_spark
from deepfm.synthetic import write_logs

DAY = dt.date(2026, 11, 22)
# Used only when conf/features.yaml is absent: the encoder's transforms on Criteo's fields.
FALLBACK_FEATURES = {
    "defaults": {"integer": {"transform": "log"}, "categorical": {"transform": "vocab", "min_count": 5}},
    "fields": {"I6": {"transform": "bucketize", "buckets": 16}},
}  # fmt: skip


def bare_rows_per_second(bundle_path: str, cat: np.ndarray, num: np.ndarray, batch_size: int) -> float:
    model = load_bundle(bundle_path).model
    cat_t, num_t = torch.from_numpy(cat), torch.from_numpy(num)
    with torch.inference_mode():
        model(cat_t[:batch_size], num_t[:batch_size])  # warm-up
        start = time.perf_counter()
        for i in range(0, len(cat), batch_size):
            torch.sigmoid(model(cat_t[i : i + batch_size], num_t[i : i + batch_size]))
        return len(cat) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000, help="rows of the generated day")
    parser.add_argument("--batch-size", type=int, default=load_conf("score")["batch_size"])
    parser.add_argument("--model", default="deepfm", help="registry model to score with")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    spark = get_spark("bench_score")

    with tempfile.TemporaryDirectory(prefix="bench_score_") as tmp:
        root = Path(tmp)
        write_logs(root / "raw", days=1, rows_per_day=args.rows, start_date=DAY, seed=1)
        valid, _ = parse(read_raw_day(spark, str(root / "raw"), DAY))
        features = load_conf("features") if (conf_dir() / "features.yaml").exists() else FALLBACK_FEATURES
        spec = fit(valid, features)
        model = build_model_for_spec(args.model, spec)
        save_bundle(root / "bundle", model, args.model, model.config, spec)
        bundle_path = str(root / "bundle")

        opts = ScoreOptions(date=DAY, model=bundle_path, table=str(root / "scores"),
                            input_root=str(root / "raw"), batch_size=args.batch_size)  # fmt: skip
        start = time.perf_counter()
        summary = run(spark, opts)
        job = summary["scored"] / (time.perf_counter() - start)

        bundle = load_bundle(bundle_path)
        threads = int(spark.conf.get("spark.task.cpus", "1"))
        encoded = encode_day(valid, spec).cache()
        rows = encoded.count()
        predict(encoded, bundle_path, bundle, threads).write.format("noop").mode("overwrite").save()  # warm workers
        start = time.perf_counter()
        predict(encoded, bundle_path, bundle, threads).write.format("noop").mode("overwrite").save()
        stage = rows / (time.perf_counter() - start)

        local = encoded.toPandas()
        cat = local[[f.name for f in spec.categorical_fields]].to_numpy(np.int64)
        num = local[[f.name for f in spec.numeric_fields]].to_numpy(np.float32)
        bare = bare_rows_per_second(bundle_path, cat, num, args.batch_size)

    result = {
        "rows": rows, "batch_size": args.batch_size, "model": args.model, "cores": spark.sparkContext.defaultParallelism,
        "job_rows_per_s": round(job), "stage_rows_per_s": round(stage), "bare_rows_per_s": round(bare),
        "job_over_bare": round(job / bare, 3), "stage_over_bare": round(stage / bare, 3),
        "job_seconds": summary["seconds"],
    }  # fmt: skip
    print(f"scoring {rows} rows ({args.model}, batch {args.batch_size}, {result['cores']} cores)")
    for name in ("job", "stage", "bare"):
        print(f"  {name:6s} {result[f'{name}_rows_per_s']:>10,d} rows/s")
    print(f"  job/bare {result['job_over_bare']:.2f}   stage/bare {result['stage_over_bare']:.2f}   (target job/bare >= 0.5)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
