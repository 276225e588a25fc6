"""How a training's ranks are started, and its result read back.

Three launchers, picked by ``deepfm train --launcher`` (``deepfm/conf/train.yaml``):

- ``horovodrun``: ``horovodrun -np N -H hosts --gloo python -m deepfm train ...``, the command a
  user would type (ranks reached over ssh beyond this host); Horovod's collectives;
- ``horovod-spark``: ``horovod.spark.run`` runs the rank function on N tasks of the Spark
  session's cluster (Gloo between the executors); Horovod's collectives;
- ``torch-distributor``: Spark's ``TorchDistributor`` runs it with ``torchrun`` on N tasks;
  torch.distributed's collectives (``deepfm.training.collectives_torch``).

``none`` starts nothing: the process trains alone, or as the rank a launcher started. Every rank
writes nothing but rank 0 the run's files; the result is ``<output>/summary.json``, which
``read_summary`` returns: nothing is scraped from stdout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepfm.core import fs
from deepfm.training.artifacts import read_summary
from deepfm.training.trainer import TrainConfig

LAUNCHERS = ("none", "horovodrun", "horovod-spark", "torch-distributor")
SPARK_LAUNCHERS = ("horovod-spark", "torch-distributor")
# The collectives each launcher's ranks use (deepfm.training.collectives.BACKENDS).
BACKENDS = {"none": "single", "horovodrun": "horovod", "horovod-spark": "horovod", "torch-distributor": "torch"}
# A rank's work: (its collectives backend, the training, how it reaches S3) -> its summary;
# importable by name (the Spark launchers pickle it by reference for the executors).
RankMain = Callable[[str, TrainConfig, fs.S3Settings], dict[str, Any]]


@dataclass(frozen=True)
class LaunchSettings:
    """Who starts the ranks, and how many: ``deepfm train --launcher --np --hosts``."""

    launcher: str = "none"
    np: int = 1  # ranks
    hosts: str | None = None  # horovodrun -H (default localhost:<np>)

    def __post_init__(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise ValueError(f"launcher must be one of {LAUNCHERS}, not {self.launcher!r}")
        if self.np < 1:
            raise ValueError(f"np must be >= 1, not {self.np}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> LaunchSettings:
        return cls(str(values.get("launcher") or "none"), int(values.get("np") or 1), values.get("hosts") or None)


def horovodrun(np: int, hosts: str | None, program: Sequence[str], python: str = sys.executable) -> list[str]:
    """``horovodrun`` (of ``python``'s environment, whatever PATH says) running ``python program``
    on ``np`` ranks with Gloo (``hosts``: ``-H``, default ``localhost:<np>``)."""
    launcher = str(Path(python).parent / "horovodrun")
    return [launcher, "-np", str(np), "-H", hosts or f"localhost:{np}", "--gloo", python, *program]


def horovodrun_command(
    np: int, hosts: str | None, train_args: Sequence[str], python: str = sys.executable
) -> list[str]:
    """``deepfm train`` with ``train_args`` on ``np`` ranks (``horovodrun``)."""
    return horovodrun(np, hosts, ["-m", "deepfm", "train", *train_args], python)


def train_command(
    launch: LaunchSettings, train_args: Sequence[str], python: str = sys.executable, spark_submit: Sequence[str] = ()
) -> list[str]:
    """The command that trains with ``train_args`` as ``launch`` says: ``horovodrun`` itself for
    it; ``deepfm train --launcher ...`` for the others, run by ``spark-submit`` (its arguments up
    to the entry file: ``spark_submit``) when given for a Spark launcher."""
    if launch.launcher == "horovodrun":
        return horovodrun_command(launch.np, launch.hosts, train_args, python)
    driver = [*spark_submit] if spark_submit and launch.launcher in SPARK_LAUNCHERS else [python, "-m", "deepfm"]
    return [*driver, "train", "--launcher", launch.launcher, "--np", str(launch.np), *train_args]


def config_args(cfg: TrainConfig) -> list[str]:
    """``deepfm train`` arguments that rebuild ``cfg`` exactly: every value as ``--set``."""
    return [f"--set={key}={json.dumps(value)}" for key, value in cfg.to_dict().items()]


def run_horovod(cfg: TrainConfig, np: int, hosts: str | None) -> dict[str, Any]:
    """Train ``cfg`` on ``np`` ranks through ``horovodrun``; return the run's summary."""
    run_command(horovodrun_command(np, hosts, config_args(cfg)), capture=True)
    return read_summary(cfg.output)


def run_command(command: list[str], capture: bool = False) -> None:
    """``command``, its output shown (or kept for the error, ``capture``); raises when it fails."""
    done = subprocess.run(command, capture_output=capture, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{(done.stderr or '')[-4000:]}")


def run_on_spark(launch: LaunchSettings, rank_main: RankMain, cfg: TrainConfig, s3: fs.S3Settings) -> dict[str, Any]:
    """``rank_main(backend, cfg, s3)`` on ``launch.np`` tasks of the active Spark session's cluster,
    each task one rank; returns rank 0's summary. The executors' Python must import this package
    (installed in their environment, or on ``spark.executorEnv.PYTHONPATH``): the ranks are
    processes of their own there, which do not see ``--py-files``."""
    backend = BACKENDS[launch.launcher]
    if launch.launcher == "horovod-spark":
        from deepfm.training.collectives_horovod import spark_run

        python = os.environ.get("PYSPARK_PYTHON") or sys.executable  # the executors' Python
        return spark_run(rank_main, (backend, cfg, s3), launch.np, python)[0]
    if launch.launcher == "torch-distributor":
        from pyspark.ml.torch.distributor import TorchDistributor

        distributor = TorchDistributor(num_processes=launch.np, local_mode=False, use_gpu=cfg.device == "cuda")
        summary = distributor.run(rank_main, backend, cfg, s3)  # rank 0's
        if not isinstance(summary, dict):
            raise RuntimeError(f"TorchDistributor returned {summary!r}, not rank 0's summary")
        return summary
    raise ValueError(f"{launch.launcher!r} is not a Spark launcher: one of {SPARK_LAUNCHERS}")
