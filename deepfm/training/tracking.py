"""Experiment tracking: MLflow when it is importable and enabled by the run's ``TrackingSettings``.

Only rank 0 tracks. Without MLflow every call is a no-op (one log line says so), so the
trainer never depends on it. The default store is a local directory (``<output>/mlruns``);
``mlflow ui --backend-store-uri <output>/mlruns`` compares runs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrackingSettings:
    """``enabled``: track when MLflow is importable; ``tracking_uri``: None for ``<output>/mlruns``."""

    enabled: bool = True
    tracking_uri: str | None = None
    experiment: str = "deepfm-ctr"

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrackingSettings:
        mlflow = dict(values.get("mlflow") or {})
        return cls(
            bool(mlflow.get("enabled", True)), mlflow.get("tracking_uri"), mlflow.get("experiment", "deepfm-ctr")
        )


class Tracker:
    """``start``/``log_metrics``/``log_artifact``/``finish`` around one MLflow run (or nothing)."""

    def __init__(self, settings: TrackingSettings, output: Path, enabled: bool = True):
        self._mlflow: Any = None
        self.run_id: str | None = None
        if not enabled:
            return
        if not settings.enabled:
            log.info("tracking: MLflow disabled (tracking.mlflow.enabled)")
            return
        try:
            import mlflow
        except ImportError:
            log.info("tracking: mlflow is not installed; runs are recorded in metrics.json only")
            return
        uri = settings.tracking_uri or (output.resolve() / "mlruns").as_uri()
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(settings.experiment)
        self._mlflow = mlflow
        log.info("tracking: MLflow at %s", uri)

    def start(self, params: dict[str, Any], run_id: str | None = None, run_name: str | None = None) -> None:
        """Open a new run, or reopen ``run_id`` (a resumed training continues its run)."""
        if self._mlflow is None:
            return
        run = self._mlflow.start_run(run_id=run_id, run_name=run_name)
        self.run_id = run.info.run_id
        if run_id is None:
            self._mlflow.log_params({k: str(v)[:250] for k, v in params.items()})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self._mlflow is not None:
            self._mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    def log_artifact(self, path: Path) -> None:
        """A file, or a directory as a folder of the same name; missing paths are skipped."""
        if self._mlflow is None or not path.exists():
            return
        if path.is_dir():
            self._mlflow.log_artifacts(str(path), artifact_path=path.name)
        else:
            self._mlflow.log_artifact(str(path))

    def finish(self, status: str = "FINISHED") -> None:
        if self._mlflow is not None and self.run_id is not None:
            self._mlflow.end_run(status=status)
