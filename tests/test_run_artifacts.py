"""A training run's files through ``deepfm.core.fs``: checkpoint, bundle, metrics, summary and log
round trips at a plain path and at a ``file://`` URI, as at an object store's (fast: no Spark, no
Horovod; tests/test_cluster.py runs them on S3; tests/test_bundle.py has bundles at both)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from testkit import model_for_spec

import deepfm.cli.train as train_job
from deepfm.cli.logs import UploadedLog
from deepfm.core import fs
from deepfm.core.features import FeatureSpec, FieldSpec
from deepfm.core.metrics import BinaryMetrics
from deepfm.core.tracking import StoreError, TrackingSettings, store_uri
from deepfm.models import make_optimizers
from deepfm.models.bundle import load_bundle
from deepfm.training.artifacts import RunArtifacts, TrainState, read_summary

SPEC = FeatureSpec(fields=(FieldSpec("I1", "log"), FieldSpec("C1", "hash", cardinality=11, hash_buckets=10)))
CAT, NUM = torch.tensor([[1], [10], [0]]), torch.tensor([[0.5], [1.5], [0.0]])
# A run directory named both ways a job accepts it.
AS_URI: dict[str, Callable[[Path], str]] = {"plain path": str, "file URI": lambda path: f"file://{path}"}


@pytest.fixture(params=sorted(AS_URI))
def uri(request, tmp_path) -> Callable[[str], str]:
    """``uri(name)``: ``tmp_path / name`` the way the parameter names it."""
    return lambda name: AS_URI[request.param](tmp_path / name)


def trained_parts():
    """A model and its optimizers after one step (so the optimizers have state to restore)."""
    torch.manual_seed(0)
    model = model_for_spec("deepfm", SPEC, {"hidden_units": [8], "embedding_dim": 4})
    optimizers = make_optimizers(model, 1e-2)
    model(CAT, NUM).sum().backward()
    optimizers.step()
    return model, optimizers


def test_a_checkpoint_round_trips_and_a_retired_run_moves_aside_whole(uri):
    model, optimizers = trained_parts()
    run = RunArtifacts(uri("run"), primary=True)
    assert run.load_checkpoint(torch.device("cpu")) is None and run.retire() is None
    state = TrainState(epoch=1, global_step=7, data_order=[2, 128, 10, 42])
    run.save_checkpoint(model, optimizers, state, identity={"model": "deepfm"})
    run.save_bundle(model, SPEC, BinaryMetrics(), extra={})
    run.write_metrics({"epochs": []})
    run.write_summary({"val_auc": 0.7})

    restored_model, restored_optimizers = trained_parts()
    with torch.no_grad():
        next(restored_model.parameters()).add_(1.0)
    checkpoint = run.load_checkpoint(torch.device("cpu"))
    assert checkpoint is not None and checkpoint["identity"] == {"model": "deepfm"}
    restored_model.load_state_dict(checkpoint["model"])
    restored_optimizers.load_state_dict(checkpoint["optimizers"])
    assert TrainState.from_dict(checkpoint["state"]) == state
    assert all(torch.equal(a, b) for a, b in zip(restored_model.state_dict().values(), model.state_dict().values()))
    assert str(restored_optimizers.state_dict()) == str(optimizers.state_dict())
    assert read_summary(uri("run")) == {"val_auc": 0.7}

    folder = run.retire()
    assert folder is not None and run.load_checkpoint(torch.device("cpu")) is None
    moved = [f.removeprefix(folder + "/") for f in fs.files_under(folder)]
    assert {m.split("/")[0] for m in moved} == {"checkpoints", "bundle", "metrics.json", "summary.json"}
    assert load_bundle(fs.join(folder, "bundle")).name == "deepfm"
    with pytest.raises(FileNotFoundError, match="did not finish"):
        read_summary(uri("run"))


def test_other_ranks_write_nothing(uri):
    model, optimizers = trained_parts()
    run = RunArtifacts(uri("run"), primary=False)
    run.save_checkpoint(model, optimizers, TrainState(), identity={})
    run.write_summary({})
    assert run.save_bundle(model, SPEC, BinaryMetrics(), extra={}) is None
    assert not fs.exists(uri("run"))


def test_an_uploaded_log_keeps_the_earlier_lines_and_writes_on_flush(uri):
    log = uri("train.log")
    for line in ("first run", "resumed run"):
        handler = UploadedLog(log, interval=3600)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.emit(logging.makeLogRecord({"msg": line}))
        handler.flush()
    assert fs.read_text(log) == "first run\nresumed run\n"


def test_a_run_directory_on_an_object_store_needs_a_configured_tracking_store(monkeypatch, capsys):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(StoreError, match="local folder only"):
        store_uri(TrackingSettings(), "s3a://bucket/run")
    assert store_uri(TrackingSettings(tracking_uri="http://mlflow:5000"), "s3a://bucket/run") == "http://mlflow:5000"
    with pytest.raises(SystemExit) as refused:  # on every rank, before any starts
        train_job.main(["--data", "s3a://bucket/data", "--output", "s3a://bucket/run"])
    assert refused.value.code == 2 and "tracking_uri" in capsys.readouterr().err
