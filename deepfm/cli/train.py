"""Train a CTR model on preprocessed Parquet, alone or on N data-parallel ranks.

    deepfm train --data DATA --output RUN                                     # one process
    deepfm train --data DATA --output RUN --launcher horovodrun --np 2        # horovodrun -np 2 (Horovod)
    spark-submit $(deepfm submit-args) train --data DATA --output RUN --launcher horovod-spark --np 2
    spark-submit $(deepfm submit-args) train --data DATA --output RUN --launcher torch-distributor --np 2
    horovodrun -np 2 -H localhost:2 --gloo python -m deepfm train --data DATA --output RUN   # also torchrun

The Spark launchers run the ranks on the session's executors (horovod.spark.run with Horovod's
collectives; TorchDistributor with torch.distributed's); a process started by horovodrun or
torchrun is one rank. DATA is the preprocessing output (train/ and test/ Parquet,
feature_spec.json). RUN (a path or a URI such as s3a://bucket/runs/x: the ranks share nothing
else) gets bundle/, metrics.json, summary.json, checkpoints/latest.pt and train.log; rerunning the
same command resumes from the checkpoint, unless the data, feature spec or model config changed
(the earlier run is then moved to RUN/superseded/ and training starts over; --fresh always does).
The summary is the last stdout line, and RUN/summary.json. Defaults: deepfm/conf/train.yaml; the
model's architecture from deepfm/conf/models.yaml, overridden by
``--set model_config.<key>=<value>``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from deepfm.cli.config import JobParser, load_defaults, spark_conf
from deepfm.cli.logs import flush_logs, setup_logging
from deepfm.core import fs
from deepfm.core.tracking import store_uri
from deepfm.models import ModelDefaults, model_names
from deepfm.training.artifacts import read_summary
from deepfm.training.collectives import backend_of_environment, connect
from deepfm.training.feed import LOADERS
from deepfm.training.launch import (
    LAUNCHERS,
    LaunchSettings,
    horovodrun_command,
    run_command,
    run_on_spark,
)
from deepfm.training.trainer import LAUNCH_KEYS, TrainConfig, train


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
    p.option(
        "--launcher",
        key="launcher",
        choices=LAUNCHERS,
        help="who starts --np ranks: horovodrun; horovod-spark or torch-distributor (on the Spark "
        "session's executors); none: this process trains (alone, or as a rank horovodrun/torchrun started)",
    )
    p.option("--np", key="np", type=int, help="ranks the launcher starts")
    p.option("--hosts", key="hosts", help="horovodrun -H host:slots,... (default localhost:<np>)")
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
        launch = LaunchSettings.from_dict({key: values.pop(key, None) for key in LAUNCH_KEYS})
        cfg = TrainConfig.from_dict(values, ModelDefaults(load_defaults("models")))
        if cfg.tracking.enabled:  # a run directory with no store for its runs: refused on every rank
            store_uri(cfg.tracking, cfg.output)
    except ValueError as exc:
        p.parser.error(str(exc))
    # Every rank reaches S3 the way Spark does (the fs.s3a.* keys of the Spark settings).
    s3 = fs.S3Settings.from_hadoop(spark_conf(storage))
    fs.use_s3(s3)  # this process reads the summary back; ranks on executors get ``s3`` passed
    backend = backend_of_environment()
    if backend != "single" or launch.launcher == "none":  # this process is a rank
        rank_main(backend, cfg, s3)
        return 0
    if launch.launcher == "horovodrun":  # the same command again in each rank
        run_command(horovodrun_command(launch.np, launch.hosts, list(sys.argv[1:] if argv is None else argv)))
        summary = read_summary(cfg.output)
    else:
        from deepfm.ops.spark import get_spark

        spark = get_spark("train", spark_conf(storage))  # under spark-submit: its master
        try:
            summary = run_on_spark(launch, rank_main, cfg, s3)
        finally:
            spark.stop()
    print(json.dumps(summary), flush=True)
    return 0


def rank_main(backend: str, cfg: TrainConfig, s3: fs.S3Settings) -> dict[str, Any]:
    """One rank of the training with ``backend``'s collectives (``s3``: how it reaches S3); returns
    the summary, which rank 0 also prints as its last stdout line. The Spark launchers run it on
    the executors."""
    fs.use_s3(s3)
    comm = connect(backend, cfg.device)
    # Progress on rank 0 (stderr and RUN/train.log); other ranks report warnings only.
    setup_logging(
        logging.INFO if comm.is_primary else logging.WARNING,
        prefix=f"rank{comm.rank} ",
        file=fs.join(cfg.output, "train.log") if comm.is_primary else None,
    )
    try:
        summary = train(cfg, comm)
    finally:
        flush_logs()
    if comm.is_primary:
        print(json.dumps(summary), flush=True)
    comm.shutdown()
    return summary
