"""The one way a training is launched as its own processes and its result read back.

``horovodrun_command`` is the command line a user would type (``horovodrun -np N -H hosts
--gloo python -m deepfm train ...``); the launched run writes ``<output>/summary.json``
(``deepfm.training.artifacts``), which ``read_summary`` returns: nothing is scraped from stdout.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deepfm.training.artifacts import read_summary
from deepfm.training.trainer import TrainConfig


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


def config_args(cfg: TrainConfig) -> list[str]:
    """``deepfm train`` arguments that rebuild ``cfg`` exactly: every value as ``--set``."""
    return [f"--set={key}={json.dumps(value)}" for key, value in cfg.to_dict().items()]


def run_horovod(cfg: TrainConfig, np: int, hosts: str | None) -> dict[str, Any]:
    """Train ``cfg`` on ``np`` ranks through ``horovodrun``; return the run's summary."""
    command = horovodrun_command(np, hosts, config_args(cfg))
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return read_summary(cfg.output)
