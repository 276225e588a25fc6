"""What a training run keeps under its output directory, and the position a checkpoint restores.

    <output>/checkpoints/latest.pt   model + optimizer state + ``TrainState``, replaced atomically
    <output>/bundle/                 the best model so far by validation AUC (``deepfm.models.bundle``)
    <output>/metrics.json            per-epoch history and validations, rewritten at each checkpoint
    <output>/summary.json            the finished run's summary: what launchers read back
    <output>/train.log               the progress lines (``deepfm.cli``'s logging set-up)
    <output>/superseded/<time>/      a checkpoint (with its bundle and metrics) of other data or
                                     settings, moved aside when a run starts over

``<output>`` is any URI (``deepfm.core.fs``): a local folder or one on an object store, which
ranks on other hosts reach too. Only rank 0 writes (``RunArtifacts(primary=True)``), through
``deepfm.core.fs``; every file is replaced atomically, and a bundle whole. A
checkpoint records the identity of its run (``run_identity``: model, config, feature spec, data
files); only a run of the same identity resumes it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import torch

from deepfm.core import fs
from deepfm.core.features import FeatureSpec
from deepfm.core.metrics import BinaryMetrics
from deepfm.models import CTRModel, Optimizers
from deepfm.models.bundle import load_tensors, save_bundle, save_tensors
from deepfm.training.early_stopping import Best
from deepfm.training.feed import parquet_files

CHECKPOINT = "checkpoints/latest.pt"
SUPERSEDED = "superseded"
SPLITS = ("train", "validation")  # what a training reads; never the test split
METRICS = "metrics.json"
SUMMARY = "summary.json"
BUNDLE = "bundle"


@dataclass
class TrainState:
    """The position of a run: all a checkpoint needs besides model and optimizer state."""

    epoch: int = 0  # current epoch (0-based); == epochs when done
    step_in_epoch: int = 0  # batches of ``epoch`` already trained
    global_step: int = 0
    loss_sum: float = 0.0  # train loss of ``epoch`` summed over the rows of all ranks,
    loss_rows: int = 0  # up to the last checkpoint (identical on every rank)
    best: Best = field(default_factory=Best)
    data_order: list[int] = field(default_factory=list)  # ranks, batch size, shuffle window, seed
    history: list[dict[str, Any]] = field(default_factory=list)
    validations: list[dict[str, Any]] = field(default_factory=list)
    mlflow_run_id: str | None = None
    resumed_at_steps: list[int] = field(default_factory=list)
    wall_seconds: float = 0.0  # of all processes of the run, up to the last checkpoint

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainState:
        return cls(**{**values, "best": Best(**values["best"])})


def data_fingerprint(data: str) -> str:
    """16 hex digits over the names and sizes of the data's split files (any URI): rewritten data
    (a rerun of preprocessing writes new files) is a new fingerprint."""
    root = data.rstrip("/")
    files = [
        (uri.removeprefix(f"{root}/"), fs.file_size(uri))
        for split in SPLITS
        for uri in parquet_files(fs.join(root, split))
    ]
    return hashlib.sha256(json.dumps(files).encode()).hexdigest()[:16]


def run_identity(model: CTRModel, spec: FeatureSpec, data: str) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the model, its config, the feature spec, the data."""
    return {
        "model": model.name,
        "model_config": model.config.to_dict(),
        "spec_version": spec.version,
        "data": data_fingerprint(data),
    }


def read_summary(output: fs.PathLike) -> dict[str, Any]:
    """The summary a finished run wrote (how a launcher learns the result of a training)."""
    path = fs.join(output, SUMMARY)
    if not fs.exists(path):
        raise FileNotFoundError(f"no training summary at {path}: the run did not finish")
    return dict(fs.read_json(path))


class RunArtifacts:
    """Reads and writes the files of one run under ``output``, any URI (writes on the primary
    rank only)."""

    def __init__(self, output: str, primary: bool) -> None:
        self.output, self.primary = output, primary

    @property
    def bundle(self) -> str:
        return fs.join(self.output, BUNDLE)

    @property
    def metrics(self) -> str:
        return fs.join(self.output, METRICS)

    @property
    def checkpoint(self) -> str:
        return fs.join(self.output, CHECKPOINT)

    @property
    def summary(self) -> str:
        return fs.join(self.output, SUMMARY)

    def load_checkpoint(self, device: torch.device) -> dict[str, Any] | None:
        """The checkpoint's payload, or None when there is none (or on non-primary ranks)."""
        if not (self.primary and fs.exists(self.checkpoint)):
            return None
        payload: dict[str, Any] = load_tensors(self.checkpoint, device)
        return payload

    def save_checkpoint(
        self, model: CTRModel, optimizers: Optimizers, state: TrainState, identity: dict[str, Any]
    ) -> None:
        if not self.primary:
            return
        payload = {
            "model": model.state_dict(),
            "optimizers": optimizers.state_dict(),
            "state": dataclasses.asdict(state),
            "identity": identity,
        }
        save_tensors(self.checkpoint, payload)

    def save_bundle(
        self, model: CTRModel, spec: FeatureSpec, validation: BinaryMetrics, extra: dict[str, Any]
    ) -> str | None:
        """The bundle of the best validation so far, with that validation's metrics state."""
        return save_bundle(self.bundle, model, spec, extra=extra, validation=validation) if self.primary else None

    def retire(self) -> str | None:
        """Move the checkpoint, bundle, metrics and summary of an earlier run to
        ``superseded/<UTC time>/`` (kept for inspection); returns that folder (None: nothing moved)."""
        if not self.primary:
            return None
        present = [
            uri for uri in (fs.parent(self.checkpoint), self.bundle, self.metrics, self.summary) if fs.exists(uri)
        ]
        if not present:
            return None
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        folder = fs.join(self.output, SUPERSEDED, stamp)
        for uri in present:
            fs.move(uri, fs.join(folder, fs.name(uri)))
        return folder

    def write_metrics(self, payload: dict[str, Any]) -> None:
        if self.primary:
            fs.put_json(self.metrics, payload)

    def write_summary(self, summary: dict[str, Any]) -> None:
        if self.primary:
            fs.put_json(self.summary, summary)
