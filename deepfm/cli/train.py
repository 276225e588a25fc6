"""Train a CTR model on preprocessed Parquet, data-parallel with Horovod.

    horovodrun -np 2 -H localhost:2 --gloo python -m deepfm train --data DATA --output RUN --model deepfm
    deepfm train --data DATA --output RUN          # one process, no Horovod needed

DATA is the preprocessing output (train/ and test/ Parquet, feature_spec.json). RUN (a path or a
URI such as s3a://bucket/runs/x: the ranks share nothing else) gets bundle/, metrics.json,
summary.json, checkpoints/latest.pt and train.log; rerunning the same
command resumes from the checkpoint, unless the data, feature spec or model config changed (the
earlier run is then moved to RUN/superseded/ and training starts over; --fresh always does). Rank
0 prints the summary as its last stdout line and writes it to RUN/summary.json. Defaults:
deepfm/conf/train.yaml; the model's architecture from deepfm/conf/models.yaml, overridden by
``--set model_config.<key>=<value>``.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence

from deepfm.cli.config import JobParser, load_defaults, spark_conf
from deepfm.cli.logs import flush_logs, setup_logging
from deepfm.core import fs
from deepfm.core.tracking import store_uri
from deepfm.models import ModelDefaults, model_names
from deepfm.training import distributed as dist
from deepfm.training.feed import LOADERS
from deepfm.training.trainer import TrainConfig, train


def parser() -> JobParser:
    p = JobParser("train", __doc__ or "", load_defaults("train"))
    p.option("--data", key="data", help="preprocessed data directory (train/, test/, feature_spec.json); required")
    p.option(
        "--output", key="output",
        help="run directory, a path or URI (s3a://...); an existing checkpoint there is resumed; required",
    )  # fmt: skip
    p.option(
        "--model",
        key="model",
        choices=model_names(),
        help="model of the library (fnn first trains an FM to initialise its embeddings)",
    )
    p.option("--epochs", key="epochs", type=int, help="maximum epochs")
    p.option("--batch-size", key="batch_size", type=int, help="rows per step per rank")
    p.option(
        "--lr",
        key="learning_rate",
        type=float,
        help="base learning rate before --lr-scaling (default: the model's, deepfm/conf/models.yaml)",
    )
    p.option(
        "--lr-scaling",
        key="lr_scaling",
        choices=("linear", "none"),
        help="linear: multiply the learning rate by the number of ranks",
    )
    p.option(
        "--loader",
        key="loader",
        choices=LOADERS,
        help="petastorm: make_batch_reader; arrow: pyarrow directly (same shards, same batches)",
    )
    p.option(
        "--shuffle-buffer",
        key="shuffle_buffer",
        type=int,
        help="rows shuffled together in memory per rank, after the row-group shuffle",
    )
    p.option("--prefetch", key="prefetch", type=int, help="batches read ahead on a background thread (0: inline)")
    p.option(
        "--warm-start",
        key="warm_start",
        help="bundle to start from, a path or URI (same fields; new vocabulary rows start fresh, old ones are kept)",
    )
    p.option(
        "--device",
        key="device",
        choices=("auto", "cpu", "cuda"),
        help="auto: cuda:<local rank> when a GPU is present, else cpu",
    )
    p.option("--amp", key="amp", action=argparse.BooleanOptionalAction, help="bfloat16 autocast for the forward pass")
    p.option("--seed", key="seed", type=int, help="seed of init, data order and dropout: same seed, same run")
    p.option(
        "--checkpoint-every",
        key="checkpoint_every",
        type=int,
        help="steps between checkpoints, besides each epoch end (0: epoch ends only)",
    )
    p.option(
        "--validate-every",
        key="validate_every",
        type=int,
        help="steps between validations, besides each epoch end (0: epoch ends only)",
    )
    p.option(
        "--early-stopping-patience",
        key="early_stopping_patience",
        type=int,
        help="validations without a validation-AUC gain before stopping (0: never)",
    )
    p.option("--log-every", key="log_every", type=int, help="steps between progress lines (steps, samples/s, ETA)")
    p.option(
        "--fresh", key="fresh", action=argparse.BooleanOptionalAction,
        help="start over: move an existing checkpoint (and its bundle, metrics) to RUN/superseded/",
    )  # fmt: skip
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    _, values = p.parse(argv)
    missing = [f"--{key}" for key in ("data", "output") if not values.get(key)]
    if missing:
        p.parser.error(f"required: {', '.join(missing)}")
    # A ``spark`` section (its fs.s3a.* keys: how to reach S3) is not the trainer's but the storage's.
    storage = {"spark": values.pop("spark", None) or {}}
    try:
        cfg = TrainConfig.from_dict(values, ModelDefaults(load_defaults("models")))
        if cfg.tracking.enabled:  # a run directory with no store for its runs: refused on every rank
            store_uri(cfg.tracking, cfg.output)
    except ValueError as exc:
        p.parser.error(str(exc))
    # Every rank reaches S3 the way Spark does (the fs.s3a.* keys of the Spark settings).
    fs.use_s3(fs.S3Settings.from_hadoop(spark_conf(storage)))
    dist.init()
    primary = dist.is_primary()
    # Progress on rank 0 (stderr and RUN/train.log); other ranks report warnings only.
    setup_logging(
        logging.INFO if primary else logging.WARNING,
        prefix=f"rank{dist.rank()} ",
        file=fs.join(cfg.output, "train.log") if primary else None,
    )
    try:
        summary = train(cfg)
    finally:
        flush_logs()
    if primary:
        print(json.dumps(summary), flush=True)
    dist.shutdown()
    return 0
