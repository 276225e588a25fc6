"""The trainer: real Horovod (``horovodrun -np 2``, Gloo), real Petastorm, small generated logs.

The data comes from the real jobs (``jobs/generate_logs.py``, then ``jobs/preprocess.py`` on
Spark): three training days, a validation day and a test day. Integration tests share one
uninterrupted 2-rank run (module fixture); the resume test repeats its exact command, kills it
mid-epoch, reruns it, and must end bit-identical.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from mlflow import MlflowClient
from testkit import ENV as BASE_ENV
from testkit import MODEL_DEFAULTS, REPO, deepfm_command, model_for_spec

from deepfm.cli.config import apply_sets
from deepfm.core.features import FeatureSpec, FieldSpec
from deepfm.models import make_optimizers, model_names
from deepfm.models.bundle import load_bundle
from deepfm.models.layers import FieldEmbedding
from deepfm.models.surgery import embedding_row_map, warm_start
from deepfm.training.artifacts import read_summary
from deepfm.training.feed import Batch, Columns, parquet_files
from deepfm.training.launch import horovodrun, horovodrun_command
from deepfm.training.trainer import TrainConfig, resolve_device, train, train_step

ENV = {**BASE_ENV, "OMP_NUM_THREADS": "1"}
# Small and quick, but several checkpoints per epoch and a model that learns: one epoch of ~45 steps.
# The recipe's pieces that talk to Horovod are on: clipping of the averaged gradients, batch-norm
# statistics averaged over ranks, decay of the allgathered rows. The tables step at the full rate
# (the default 0.3 suits days of data, not one epoch of ~45 steps).
TRAIN_ARGS = (
    "--model deepfm --epochs 1 --batch-size 128 --checkpoint-every 15 --log-every 30 "
    "--early-stopping-patience 0 --set shuffle_buffer=2000 --set grad_clip_norm=1.0 "
    "--set model_config.batch_norm=true --set model_config.embedding_weight_decay=0.01 "
    "--set model_config.embedding_lr_scale=1.0"
).split()


def _horovodrun(args: list[str]) -> list[str]:
    return horovodrun_command(2, "localhost:2", args)


def _run(command: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=REPO, timeout=240)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if text in cmdline.read_bytes().decode(errors="replace"):
                pids.append(int(cmdline.parent.name))
    return pids


def _summary(stdout: str) -> dict:
    """The last JSON line of rank 0 (horovodrun prefixes it with ``[0]<stdout>:``)."""
    lines = [line.split("<stdout>:", 1)[-1] for line in stdout.splitlines()]
    return json.loads(next(line for line in reversed(lines) if line.startswith("{")))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ctr")
    for job, args in (
        ("generate_logs", ["--output", root / "raw", "--days", "5", "--rows-per-day", "4000"]),
        (
            "preprocess",
            ["--input", root / "raw", "--output", root / "processed", "--end-date", "2024-01-05", "--train-days", "3"],
        ),
    ):
        result = subprocess.run(
            [sys.executable, str(REPO / "jobs" / f"{job}.py"), *map(str, args)],
            capture_output=True,
            text=True,
            env=ENV,
            cwd=REPO,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root / "processed"


@pytest.fixture(scope="module")
def two_rank_run(data, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("run") / "two_ranks"
    result = _run(_horovodrun(["--data", str(data), "--output", str(out), *TRAIN_ARGS]))
    return out, _summary(result.stdout)


@pytest.mark.slow
def test_two_ranks_train_identical_weights_and_learn(two_rank_run, data):
    out, summary = two_rank_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert summary["world_size"] == 2 and summary["loader"] == "petastorm"
    assert summary["val_auc"] > 0.65, summary  # well above chance: the planted signal is learnt
    assert len(set(metrics["weight_digests"])) == 1 and len(metrics["weight_digests"]) == 2
    assert [e["epoch"] for e in metrics["epochs"]] == [1]
    for epoch in metrics["epochs"]:
        assert epoch["train_loss"] > 0 and 0 < epoch["val_logloss"] < 1 and epoch["wall_s"] > 0
        assert len(epoch["samples_per_s_per_rank"]) == 2 and all(r > 0 for r in epoch["samples_per_s_per_rank"])
    assert metrics["summary"] == summary == read_summary(out)
    bundle = load_bundle(summary["bundle"])
    assert bundle.spec == FeatureSpec.load(data)
    assert bundle.name == "deepfm" and bundle.meta["extra"]["validation"]["auc"] == summary["val_auc"]
    # the bundle is calibrated on the validation that selected it: its mean prediction is the CTR
    selected = bundle.validation.compute() if bundle.validation is not None else {}
    assert selected["auc"] == pytest.approx(summary["val_auc"], abs=1e-3)  # the shift moves scores across bins
    assert selected["calibration"] == pytest.approx(1, abs=2e-3)
    assert bundle.model.logit_shift.item() == pytest.approx(summary["logit_shift"]) != 0
    log = (out / "train.log").read_text()
    assert "samples/s/rank ETA" in log and "validation at step" in log


@pytest.mark.slow
def test_ranks_read_disjoint_shards_whose_union_is_the_split(data, tmp_path):
    """Every row of the split is read by exactly one rank (as a multiset: rows may repeat)."""
    script = Path(__file__).parent / "scripts" / "dump_shard_rows.py"
    result = subprocess.run(
        horovodrun(2, "localhost:2", [str(script), str(data), str(tmp_path)]),
        capture_output=True,
        text=True,
        env=ENV,
        cwd=REPO,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    shards = [Counter(map(bytes, np.load(tmp_path / f"rank{r}.npy"))) for r in range(2)]
    columns = Columns.from_spec(FeatureSpec.load(data))
    order = [*columns.categorical, *columns.numeric, columns.label]  # the dump's column order
    split = np.concatenate(
        [
            np.column_stack([t.column(c).to_numpy() for c in order]).astype(np.float64)
            for t in (pq.read_table(f, columns=order) for f in parquet_files(data / "train"))
        ]
    )
    assert all(shards) and shards[0] + shards[1] == Counter(map(bytes, split))


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(two_rank_run, data, tmp_path):
    reference, _ = two_rank_run
    out = tmp_path / "killed"
    command = _horovodrun(["--data", str(data), "--output", str(out), *TRAIN_ARGS])
    proc = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, cwd=REPO, start_new_session=True
    )
    checkpoint = out / "checkpoints" / "latest.pt"
    try:
        state = {}
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None:
            if checkpoint.exists():
                state = torch.load(checkpoint, weights_only=True)["state"]
                if state["step_in_epoch"] >= 15 and state["epoch"] == 0:
                    break
            time.sleep(0.1)
        assert proc.poll() is None, "the run ended before it could be killed"
    finally:  # kill -9 of horovodrun and of both ranks at once, mid-epoch: as a lost machine would
        for pid in [proc.pid, *_processes_mentioning(str(out))]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    time.sleep(1)
    assert not _processes_mentioning(str(out)), "a rank of the killed run survived"

    result = _run(command)
    metrics = json.loads((out / "metrics.json").read_text())
    resumed_at = metrics["resumed_at_steps"][0]
    assert resumed_at >= 15 and resumed_at % 15 == 0
    assert f"resuming from {checkpoint}" in result.stderr
    expected = json.loads((reference / "metrics.json").read_text())
    assert metrics["weight_digests"] == expected["weight_digests"]
    assert [e["train_loss"] for e in metrics["epochs"]] == pytest.approx([e["train_loss"] for e in expected["epochs"]])
    assert _summary(result.stdout)["val_auc"] == expected["summary"]["val_auc"]


@pytest.mark.slow
def test_a_checkpoint_of_other_data_is_moved_aside_and_training_starts_over(data, tmp_path):
    """Late data: the processed output of the same date, rewritten with more rows, is not resumed."""
    other = tmp_path / "other"
    shutil.copytree(data, other)
    first_file = sorted((other / "train").rglob("*.parquet"))[0]
    table = pq.read_table(first_file)
    pq.write_table(pa.concat_tables([table, table.slice(0, 64)]), first_file)  # 64 rows delivered late
    out = tmp_path / "run"
    settings = {"model": "lr", "epochs": 1, "batch_size": 512}
    _in_process(data, out, **settings)
    again = _in_process(data, out, **settings)  # the same run resumes its finished checkpoint
    assert json.loads((out / "metrics.json").read_text())["resumed_at_steps"] == [again["global_step"]]
    changed = _in_process(other, out, **settings)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_at_steps"] == [] and changed["epochs_run"] == 1
    (superseded,) = (out / "superseded").iterdir()
    assert (superseded / "checkpoints" / "latest.pt").exists() and (superseded / "bundle" / "bundle.json").exists()
    fresh = _in_process(other, out, **settings, fresh=True)  # --fresh starts over although it could resume
    assert json.loads((out / "metrics.json").read_text())["resumed_at_steps"] == [] and fresh["epochs_run"] == 1
    assert len(list((out / "superseded").iterdir())) == 2


@pytest.mark.slow
def test_model_selection_never_opens_the_test_split(data, tmp_path):
    """Early stopping and the kept bundle follow the validation split; training runs without the test split."""
    without_test = tmp_path / "data"
    shutil.copytree(data, without_test, ignore=shutil.ignore_patterns("test"))
    summary = _in_process(without_test, tmp_path / "run", model="lr", epochs=2, batch_size=512)
    bundle = load_bundle(summary["bundle"])
    validation_rows = sum(pq.ParquetFile(f).metadata.num_rows for f in parquet_files(data / "validation"))
    assert bundle.validation is not None and bundle.validation.compute()["n"] == validation_rows
    best = max(json.loads((tmp_path / "run" / "metrics.json").read_text())["validations"], key=lambda v: v["auc"])
    assert summary["val_auc"] == best["auc"] == pytest.approx(bundle.validation.compute()["auc"], abs=1e-3)


@pytest.mark.slow
def test_one_rank_reaches_the_auc_of_two(two_rank_run, data, tmp_path):
    """A plain ``python jobs/train.py`` (no Horovod) with the arrow feeder, same global batch."""
    _, two = two_rank_run
    args = [a if a != "128" else "256" for a in TRAIN_ARGS]
    result = _run(
        [
            sys.executable,
            str(REPO / "jobs" / "train.py"),
            "--data",
            str(data),
            "--output",
            str(tmp_path / "one"),
            "--loader",
            "arrow",
            "--lr-scaling",
            "none",
            "--lr",
            "0.002",
            *args,
        ]
    )
    one = _summary(result.stdout)
    assert one["world_size"] == 1 and one["loader"] == "arrow"
    assert abs(one["val_auc"] - two["val_auc"]) < 0.02, (one, two)


@pytest.mark.slow
def test_fnn_is_initialised_from_a_pretrained_fm(data, tmp_path):
    out = tmp_path / "fnn"
    full_rate = {"embedding_lr_scale": 1.0}  # one short epoch: the tables at the full step size
    summary = _in_process(
        data, out, model="fnn", epochs=1, batch_size=512, fnn_pretrain_epochs=1, model_config=full_rate
    )
    assert load_bundle(out / "fnn_pretrain_fm" / "bundle").name == "fm"
    assert load_bundle(summary["bundle"]).name == "fnn" and summary["val_auc"] > 0.6


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(model_names()) - {"deepfm", "fnn"}))
def test_every_model_of_the_library_trains(name, data, tmp_path):
    summary = _in_process(
        data,
        tmp_path,
        model=name,
        epochs=2,
        batch_size=256,
        learning_rate=0.003,
        model_config={"hidden_units": [32, 32]},
    )
    assert load_bundle(summary["bundle"]).name == name and summary["val_auc"] > 0.6


def _in_process(data: Path, output: Path, **values) -> dict:
    """``train()`` in this process (no launcher: the single-process fallback), arrow feeder."""
    values = {"data": data, "output": output, "loader": "arrow", "cpu_threads": 1, "tracking": {}, **values}
    return train(TrainConfig.from_dict(values, MODEL_DEFAULTS))


@pytest.mark.slow
def test_early_stopping_and_warm_start(data, tmp_path):
    # min_delta 1.0: only the first validation can improve, so patience 2 stops at the third.
    stopped = _in_process(
        data,
        tmp_path / "stop",
        model="fm",
        epochs=3,
        batch_size=256,
        validate_every=10,
        early_stopping_patience=2,
        early_stopping_min_delta=1.0,
        lr_decay_factor=0.5,
        lr_decay_floor=4e-4,
    )
    metrics = json.loads(Path(stopped["metrics"]).read_text())
    assert stopped["stopped_early"] and [v["global_step"] for v in metrics["validations"]] == [10, 20, 30]
    # the plateau after the first validation halves the rate once before early stopping ends the run
    assert [v["lr"] for v in metrics["validations"]] == [1e-3, 1e-3, 5e-4]
    assert stopped["best_epoch"] == 1 and stopped["epochs_run"] == 1
    warm = _in_process(
        data,
        tmp_path / "warm",
        model="fm",
        epochs=1,
        batch_size=512,
        warm_start=Path(stopped["bundle"]),
        validate_every=1,
        early_stopping_patience=0,
    )
    first = json.loads(Path(warm["metrics"]).read_text())["validations"][0]
    assert first["auc"] == pytest.approx(metrics["validations"][0]["auc"], abs=0.02)  # starts where it left
    with pytest.raises(ValueError, match="holds a fm, not a deepfm"):
        _in_process(data, tmp_path / "wrong", model="deepfm", warm_start=Path(stopped["bundle"]))


@pytest.mark.slow
def test_mlflow_records_params_metrics_artifacts_and_a_resumed_run_continues_it(data, tmp_path, monkeypatch):
    """Real MLflow, in its default store: a SQLite database in the run's folder."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking = {"mlflow": {"enabled": True, "experiment": "test"}}
    first = _in_process(data, tmp_path, model="lr", epochs=1, batch_size=1024, tracking=tracking)
    assert first["tracking_uri"] == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    client = MlflowClient(first["tracking_uri"])
    run = client.get_run(first["mlflow_run_id"])
    assert run.info.status == "FINISHED" and client.get_experiment(run.info.experiment_id).name == "test"
    assert run.data.params["model"] == "lr" and run.data.params["model_config.embedding_dim"] == "10"
    assert run.data.tags["spec_version"] == FeatureSpec.load(data).version
    assert run.data.metrics["val_auc"] == pytest.approx(first["val_auc"])
    for key in ("train_loss", "val_logloss", "val_calibration", "samples_per_s"):
        assert key in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"bundle", "metrics.json"} <= artifacts
    assert {a.path for a in client.list_artifacts(run.info.run_id, "bundle")} >= {
        "bundle/weights.pt",
        "bundle/bundle.json",
    }

    second = _in_process(data, tmp_path, model="lr", epochs=2, batch_size=1024, tracking=tracking)  # resumes
    assert second["mlflow_run_id"] == first["mlflow_run_id"]
    history = client.get_metric_history(first["mlflow_run_id"], "train_loss")
    assert len(history) == 2 and len({m.step for m in history}) == 2


def _vocab_spec(values: tuple[str, ...], numeric: int = 1) -> FeatureSpec:
    fields = [
        FieldSpec("C1", "vocab", cardinality=len(values) + 1, vocabulary=values),
        FieldSpec("C2", "hash", cardinality=5, hash_buckets=5),
    ]
    return FeatureSpec(tuple(fields + [FieldSpec(f"I{i}", "raw") for i in range(numeric)]))


def test_warm_start_keeps_old_rows_by_value_and_initialises_new_ones():
    old_spec, new_spec = _vocab_spec(("a", "b", "c")), _vocab_spec(("c", "d", "a", "e"))
    assert embedding_row_map(new_spec, old_spec).tolist() == [0, 3, -1, 1, -1, 4, 5, 6, 7, 8]
    torch.manual_seed(0)
    old = model_for_spec("deepfm", old_spec, {"hidden_units": [8]})
    new = model_for_spec("deepfm", new_spec, {"hidden_units": [8]})
    tables = {
        f"{name}.categorical.weight" for name, module in new.named_modules() if isinstance(module, FieldEmbedding)
    }
    fresh = {name: new.state_dict()[name].clone() for name in tables}
    counts = warm_start(new, new_spec, old, old_spec)
    assert counts == {"kept_rows": 8, "new_rows": 2}
    for name in tables:
        table, old_table = new.state_dict()[name], old.state_dict()[name]
        for new_row, old_row in [(0, 0), (1, 3), (3, 1), (5, 4), (9, 8)]:
            assert torch.equal(table[new_row], old_table[old_row])
        for new_row in (2, 4):  # "d" and "e": new vocabulary keeps its initialisation
            assert torch.equal(table[new_row], fresh[name][new_row])
    assert all(
        torch.equal(tensor, old.state_dict()[name]) for name, tensor in new.state_dict().items() if name not in tables
    )
    with pytest.raises(ValueError, match="same fields"):
        warm_start(new, _vocab_spec(("a",), numeric=2), old, old_spec)


def test_amp_and_device_auto_on_cpu():
    spec = _vocab_spec(("a", "b"))
    assert resolve_device("auto") == (torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))
    model = model_for_spec("deepfm", spec, {"hidden_units": [16]})
    optimizers = make_optimizers(model, 1e-2)
    batch = Batch(torch.randint(0, 3, (64, 2)), torch.rand(64, 1), torch.randint(0, 2, (64,)).float())
    losses = [train_step(model, optimizers, batch, amp=True).item() for _ in range(20)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


def test_config_overrides_nest_and_parse_yaml():
    conf = apply_sets({"model_config": {}, "epochs": 1}, ["model_config.hidden_units=[8, 8]", "epochs=3"])
    assert conf == {"model_config": {"hidden_units": [8, 8]}, "epochs": 3}
    with pytest.raises(ValueError, match="unknown training settings"):
        TrainConfig.from_dict({"data": ".", "output": ".", "model": "lr", "epoch": 3}, MODEL_DEFAULTS)
    cfg = TrainConfig.from_dict({"data": ".", "output": ".", "model": "lr", "epochs": 3}, MODEL_DEFAULTS)
    assert TrainConfig.from_dict(cfg.to_dict(), MODEL_DEFAULTS) == cfg  # what a launcher passes on rebuilds it
    # YAML reads "1e-5" (no dot) as a string; the setting's type decides
    values = apply_sets({"data": ".", "output": ".", "model": "lr"}, ["lr_decay_floor=1e-5", "learning_rate=3e-4"])
    cfg = TrainConfig.from_dict(values, MODEL_DEFAULTS)
    assert (cfg.lr_decay_floor, cfg.learning_rate) == (1e-5, 3e-4)


def test_cli_help_explains_every_option():
    result = subprocess.run(deepfm_command("train", "--help"), capture_output=True, text=True, check=True)
    options = "--data --output --model --epochs --batch-size --lr --loader --warm-start --device --amp --seed "
    options += "--checkpoint-every --validate-every --early-stopping-patience --config --set"
    for option in options.split():
        assert option in result.stdout
    assert "deepfm_p" in result.stdout and "petastorm" in result.stdout
