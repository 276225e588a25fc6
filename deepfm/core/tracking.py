"""Experiment tracking and the model registry: the one module that touches MLflow.

Where runs go: the settings' ``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else a SQLite store
in the caller's folder (``<folder>/mlflow.db``, artifacts under ``<folder>/mlartifacts``), so a
fresh set-up tracks with no server. Browse a store with
``mlflow ui --backend-store-uri sqlite:///<folder>/mlflow.db``; point the settings (or the
variable) at a team's tracking server to share runs. The registry lives in the same store.

A ``Tracker`` wraps one run (a no-op when tracking is disabled); ``register``, ``promote`` and
``resolve_model`` are the registry: a bundle logged by a training run becomes a version of a
registered model, an alias (``production``) names the version in use, and ``models:/<name>@<alias>``
or ``models:/<name>/<version>`` resolves to the bundle's folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from deepfm.core import fs

log = logging.getLogger(__name__)

STORE_FILENAME = "mlflow.db"
ARTIFACTS_DIRNAME = "mlartifacts"
MODELS_SCHEME = "models:/"


class RegistryError(ValueError):
    """A registry reference that names no model version."""


class StoreError(ValueError):
    """No store for runs whose folder is not local: a default (SQLite) store needs a local file."""


@dataclass(frozen=True)
class TrackingSettings:
    """``enabled``: track at all; ``tracking_uri``: the store (None: ``$MLFLOW_TRACKING_URI``, else
    a SQLite store in the caller's folder); ``experiment``: the experiment runs go to;
    ``parent_run_id``: nest the run under another (a comparison's)."""

    enabled: bool = True
    tracking_uri: str | None = None
    experiment: str = "deepfm-ctr"
    parent_run_id: str | None = None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrackingSettings:
        """From the settings' ``tracking.mlflow`` section."""
        known = {"enabled", "tracking_uri", "experiment", "parent_run_id"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown tracking settings {unknown}; known: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {
            "enabled": self.enabled,
            "tracking_uri": self.tracking_uri,
            "experiment": self.experiment,
            "parent_run_id": self.parent_run_id,
        }


def store_uri(settings: TrackingSettings, folder: str | Path) -> str:
    """The tracking URI runs of ``settings`` go to (``folder``: where a default store lives, a
    local path; ``StoreError`` for a folder on an object store when no store is configured)."""
    configured = settings.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if configured:
        return configured
    if not fs.is_local(folder):
        raise StoreError(
            f"no MLflow store for {folder}: the default (SQLite) store lives in a local folder only; set "
            "tracking.mlflow.tracking_uri (or $MLFLOW_TRACKING_URI) to a tracking server, or turn tracking off"
        )
    return f"sqlite:///{fs.local_path(folder).resolve() / STORE_FILENAME}"


def _client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _experiment_id(client: Any, name: str, uri: str) -> str:
    """The experiment ``name``, created when missing; a SQLite store keeps artifacts beside its
    database file (``mlartifacts/``), a tracking server where it is configured to."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        return str(found.experiment_id)
    database = uri.removeprefix("sqlite:///")
    location = (Path(database).resolve().parent / ARTIFACTS_DIRNAME).as_uri() if uri.startswith("sqlite:///") else None
    try:
        return str(client.create_experiment(name, artifact_location=location))
    except MlflowException:  # created by a concurrent run meanwhile
        return str(client.get_experiment_by_name(name).experiment_id)


class Tracker:
    """One MLflow run: ``start`` (or reopen), ``log_metrics``, ``set_tags``, ``log_artifact``,
    ``finish``. Every call is a no-op when ``enabled`` is false (other ranks, tracking off)."""

    def __init__(self, settings: TrackingSettings, folder: str | Path, enabled: bool = True) -> None:
        self.settings, self.folder = settings, folder
        self.enabled = enabled and settings.enabled
        self.run_id: str | None = None
        self.uri = store_uri(settings, folder) if self.enabled else None
        self._client: Any = None

    def start(
        self,
        params: Mapping[str, Any],
        run_id: str | None = None,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> str | None:
        """Open a new run, or reopen ``run_id`` (a resumed training continues its run); returns its id."""
        if not self.enabled:
            return None
        assert self.uri is not None
        self._client = _client(self.uri)
        if run_id is None:
            experiment = _experiment_id(self._client, self.settings.experiment, self.uri)
            tags = {
                **(tags or {}),
                **({"mlflow.parentRunId": self.settings.parent_run_id} if self.settings.parent_run_id else {}),
            }
            run = self._client.create_run(experiment, run_name=run_name, tags=tags)
            run_id = str(run.info.run_id)
            self._client.log_batch(run_id, params=_params(params))
        else:
            self._client.update_run(run_id, status="RUNNING")
        self.run_id = run_id
        log.info("tracking: MLflow run %s in %s", run_id, self.uri)
        return run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if self.run_id is not None:
            from mlflow.entities import Metric

            now = _now_ms()
            batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
            self._client.log_batch(self.run_id, metrics=batch)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if self.run_id is not None:
            for key, value in tags.items():
                self._client.set_tag(self.run_id, key, str(value))

    def log_artifact(self, uri: str | Path) -> None:
        """A file, or a folder as a folder of the same name, at any URI; missing ones are skipped.
        MLflow logs local files: one on an object store is copied to a temporary folder first."""
        if self.run_id is None or not fs.exists(uri):
            return
        if fs.is_local(uri):
            self._log_local(fs.local_path(uri))
            return
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / fs.name(uri)
            (fs.copy_tree if fs.is_dir(uri) else fs.copy_file)(uri, local)
            self._log_local(local)

    def _log_local(self, path: Path) -> None:
        if path.is_dir():
            self._client.log_artifacts(self.run_id, str(path), artifact_path=path.name)
        else:
            self._client.log_artifact(self.run_id, str(path))

    def finish(self, status: str = "FINISHED") -> None:
        if self.run_id is not None:
            self._client.set_terminated(self.run_id, status=status)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _params(values: Mapping[str, Any], prefix: str = "") -> list[Any]:
    """Flattened ``a.b`` parameters (MLflow keeps values as strings of at most 6,000 characters)."""
    from mlflow.entities import Param

    flat: list[Any] = []
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat += _params(value, f"{prefix}{key}.")
        else:
            flat.append(Param(f"{prefix}{key}", str(value)[:6000]))
    return flat


def register(
    settings: TrackingSettings, folder: Path, name: str, run_id: str, artifact_path: str, tags: Mapping[str, str]
) -> str:
    """A new version of registered model ``name`` (created when missing) whose source is the
    ``artifact_path`` folder of run ``run_id``; returns the version."""
    from mlflow.exceptions import MlflowException

    client = _client(store_uri(settings, folder))
    with contextlib.suppress(MlflowException):  # it exists (or was created concurrently)
        client.create_registered_model(name)
    source = f"{client.get_run(run_id).info.artifact_uri}/{artifact_path}"
    version = client.create_model_version(name, source=source, run_id=run_id, tags=dict(tags))
    log.info("registry: %s version %s <- run %s", name, version.version, run_id)
    return str(version.version)


def promote(settings: TrackingSettings, folder: Path, name: str, version: str, alias: str = "production") -> None:
    """Point ``alias`` of ``name`` at ``version`` (a rollback is the same call with an older one)."""
    _client(store_uri(settings, folder)).set_registered_model_alias(name, alias, version)
    log.info("registry: %s@%s -> version %s", name, alias, version)


def alias_version(
    settings: TrackingSettings, folder: Path, name: str, alias: str = "production"
) -> tuple[str, dict[str, str]] | None:
    """The version ``alias`` of ``name`` points at and its tags, or None."""
    from mlflow.exceptions import MlflowException

    try:
        version = _client(store_uri(settings, folder)).get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    return str(version.version), dict(version.tags)


def resolve_model(reference: str, settings: TrackingSettings, folder: str | Path) -> str:
    """A bundle folder: ``reference`` itself when it is a path or URI, else the folder of the version
    ``models:/<name>@<alias>`` or ``models:/<name>/<version>`` names: where it is when that is on
    S3 (an artifact store there; whoever loads it reads it there, a cluster's executors too), else
    a local copy."""
    if not reference.startswith(MODELS_SCHEME):
        return reference
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    uri = store_uri(settings, folder)
    client = _client(uri)
    name, _, which = reference[len(MODELS_SCHEME) :].partition("@")
    try:
        if which:
            version = client.get_model_version_by_alias(name, which)
        else:
            name, _, number = name.partition("/")
            version = client.get_model_version(name, number)
        on_s3 = urlsplit(version.source).scheme in fs.S3_SCHEMES
        bundle = version.source if on_s3 else download_artifacts(artifact_uri=version.source, tracking_uri=uri)
    except MlflowException as exc:
        raise RegistryError(f"{reference} names no model version in {uri}: {exc.message}") from exc
    log.info("registry: %s is %s version %s (%s)", reference, name, version.version, bundle)
    return str(bundle)
