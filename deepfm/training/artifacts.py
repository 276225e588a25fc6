"""What a training run keeps under its output directory, and the position a checkpoint restores.

    <output>/checkpoints/latest.pt   model + optimizer state + ``TrainState``, replaced atomically
    <output>/bundle/                 the best model so far by validation AUC (``deepfm.models.bundle``)
    <output>/metrics.json            per-epoch history and validations, rewritten at each checkpoint
    <output>/summary.json            the finished run's summary: what launchers read back
    <output>/train.log               the progress lines (``deepfm.cli``'s logging set-up)

Only rank 0 writes (``RunArtifacts(primary=True)``); every file is replaced atomically.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from deepfm.core import fs
from deepfm.core.features import FeatureSpec
from deepfm.core.metrics import BinaryMetrics
from deepfm.models import CTRModel, Optimizers
from deepfm.models.bundle import save_bundle
from deepfm.training.early_stopping import Best

CHECKPOINT = "checkpoints/latest.pt"
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


def read_summary(output: str | Path) -> dict[str, Any]:
    """The summary a finished run wrote (how a launcher learns the result of a training)."""
    path = Path(output) / SUMMARY
    if not path.is_file():
        raise FileNotFoundError(f"no training summary at {path}: the run did not finish")
    return json.loads(path.read_text())


class RunArtifacts:
    """Reads and writes the files of one run under ``output`` (writes on the primary rank only)."""

    def __init__(self, output: Path, primary: bool) -> None:
        self.output, self.primary = output, primary

    @property
    def bundle(self) -> Path:
        return self.output / BUNDLE

    @property
    def metrics(self) -> Path:
        return self.output / METRICS

    @property
    def checkpoint(self) -> Path:
        return self.output / CHECKPOINT

    def load_checkpoint(self, device: torch.device) -> dict[str, Any] | None:
        """The checkpoint's payload, or None when there is none (or on non-primary ranks)."""
        if not (self.primary and self.checkpoint.exists()):
            return None
        return torch.load(self.checkpoint, map_location=device, weights_only=True)

    def save_checkpoint(self, model: CTRModel, optimizers: Optimizers, state: TrainState) -> None:
        if not self.primary:
            return
        payload = {
            "model": model.state_dict(),
            "optimizers": optimizers.state_dict(),
            "state": dataclasses.asdict(state),
            "model_name": model.name,
            "model_config": model.config.to_dict(),
        }
        fs.write_atomic(self.checkpoint, lambda tmp: torch.save(payload, tmp))

    def save_bundle(
        self, model: CTRModel, spec: FeatureSpec, validation: BinaryMetrics, extra: dict[str, Any]
    ) -> str | None:
        """The bundle of the best validation so far, with that validation's metrics state."""
        return save_bundle(self.bundle, model, spec, extra=extra, validation=validation) if self.primary else None

    def write_metrics(self, payload: dict[str, Any]) -> None:
        if self.primary:
            fs.write_json(self.metrics, payload)

    def write_summary(self, summary: dict[str, Any]) -> None:
        if self.primary:
            fs.write_json(self.output / SUMMARY, summary)
