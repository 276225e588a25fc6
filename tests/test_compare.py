"""The model comparison: runs through the production trainer, aggregates, renders its report."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlflow import MlflowClient
from testkit import MODEL_DEFAULTS
from tiny_ctr_data import write_dataset

import deepfm.cli.compare as compare_job
import deepfm.evaluation.compare as compare
from deepfm.cli.config import deep_update, load_defaults
from deepfm.core import fs
from deepfm.evaluation.aggregate import closing_note, paired, summarize
from deepfm.evaluation.compare import Settings, StudySettings

ARGS = ["--models", "lr,deepfm", "--seeds", "2", "--epochs", "1", "--set", "train.batch_size=512"]


def settings(data: Path, output: Path, train: dict[str, Any], **values: Any) -> Settings:
    """Comparison settings over the packaged training defaults (as the command line builds them)."""
    return Settings(
        data=str(data),
        output=str(output),
        train=deep_update(load_defaults("train"), train),
        model_defaults=MODEL_DEFAULTS,
        **values,
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    write_dataset(root, train_rows=2400, test_rows=1200, row_group_rows=200)
    return root


@pytest.fixture(scope="module")
def comparison(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    # The output as a URI: every file of the comparison is reached through deepfm.core.fs.
    assert compare_job.main(["--data", str(data), "--output", out.as_uri(), *ARGS]) == 0
    return out


def test_two_models_two_seeds_end_to_end(comparison):
    out = comparison
    results = json.loads((out / "results.json").read_text())
    runs = sorted((r["model"], r["seed"]) for r in results["runs"])
    assert runs == [("deepfm", 42), ("deepfm", 43), ("lr", 42), ("lr", 43)]
    assert results["data"]["train_rows"] == 2400 and results["data"]["test_rows"] == 1200
    for r in results["runs"]:
        assert r["n"] == 1200 and len(r["history"]) == r["epochs_run"] == 1 and r["params"] > 0
        assert (fs.local_path(r["run_dir"]) / "bundle").is_dir() and len(r["roc_tpr"]) == len(results["roc_fpr"])
    table = pd.read_csv(out / "table.csv")
    assert table["model"].tolist() == ["lr", "deepfm"] and table["runs"].tolist() == [2, 2]
    assert table.loc[0, "time_vs_baseline"] == 1.0 and table.loc[0, "auc_gain_pct"] == 0.0
    page = (out / "report.html").read_text()
    for row in table.itertuples():
        assert f"{row.auc_mean:.4f} ± {row.auc_std:.4f}" in page and f"{row.logloss_mean:.4f}" in page
    assert "DeepFM against its baselines, seed by seed" in page and "seeds DeepFM higher" in page
    images = re.findall(r'<img src="([^"]+)"', page)
    assert {"roc.png", "calibration.png", "history.png", "efficiency.png"} <= set(images)
    assert all((out / src).read_bytes()[:4] == b"\x89PNG" for src in images)


def test_the_report_is_drawn_from_the_results(comparison, tmp_path, capsys):
    results = json.loads((comparison / "results.json").read_text())
    before = pd.read_csv(comparison / "table.csv").set_index("model")
    for r in results["runs"]:
        if r["model"] == "lr":
            r["auc"] += 0.25
            r["roc_tpr"] = [min(1.0, t + 0.1) for t in r["roc_tpr"]]
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert compare_job.main(["--output", tmp_path.as_uri(), "--report-only", "--note", "edited inputs"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    after = pd.read_csv(tmp_path / "table.csv").set_index("model")
    assert after.loc["lr", "auc_mean"] == pytest.approx(before.loc["lr", "auc_mean"] + 0.25)
    assert after.loc["deepfm", "auc_mean"] == before.loc["deepfm", "auc_mean"]
    assert summary["ranking"] == ["lr", "deepfm"] and "deepfm ranks 2 of 2" in summary["note"]
    page = (tmp_path / "report.html").read_text()
    assert f"{after.loc['lr', 'auc_mean']:.4f}" in page and "edited inputs" in page
    assert (tmp_path / "roc.png").read_bytes() != (comparison / "roc.png").read_bytes()


def test_the_comparison_is_one_mlflow_run_with_a_child_run_per_training(comparison):
    run_id = json.loads((comparison / "mlflow_run.json").read_text())["run_id"]
    client = MlflowClient()
    parent = client.get_run(run_id)
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
    trained = sorted((c.data.params["model"], c.data.params["seed"]) for c in children)
    assert trained == [("deepfm", "42"), ("deepfm", "43"), ("lr", "42"), ("lr", "43")]
    assert all("val_auc" in c.data.metrics and c.info.status == "FINISHED" for c in children)
    assert {"report.html", "results.json", "table.csv", "roc.png"} <= {a.path for a in client.list_artifacts(run_id)}
    table = pd.read_csv(comparison / "table.csv").set_index("model")
    assert parent.data.metrics["deepfm.auc_mean"] == pytest.approx(table.loc["deepfm", "auc_mean"], abs=1e-5)


def test_a_rerun_reuses_finished_runs(comparison, data, monkeypatch):
    monkeypatch.setattr(compare, "train", lambda cfg: pytest.fail(f"retrained {cfg.model}"))
    assert compare_job.main(["--data", str(data), "--output", str(comparison), *ARGS]) == 0


def test_same_seed_same_training_settings_for_every_model(tmp_path):
    chosen = settings(tmp_path, tmp_path / "out", {"batch_size": 64})
    a, b = (compare.train_config(chosen, m, 7, 3, {}) for m in ("lr", "deepfm"))
    differ = {f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)}
    # model_config is each model's own (models.yaml: LR keeps the tables' full step size)
    assert differ - {"model_config"} == {"model", "output"} and a.seed == 7 and a.batch_size == 64
    assert compare.train_config(chosen, "lr", 7, 3, {}).output == a.output
    assert compare.train_config(chosen, "lr", 8, 3, {}).output != a.output


def test_study_points_follow_the_paper():
    study = StudySettings(
        models=("deepfm", "ipnn"),
        shape_neurons=200,
        grids={"dropout": [1.0, 0.5], "layers": [1, 5], "shape": ["increasing", "diamond"], "activation": ["sigmoid"]},
    )
    points = {(name, value, model): cfg for name, value, model, cfg in compare.study_points(study, MODEL_DEFAULTS)}
    assert points["dropout", 1.0, "deepfm"] == {"dropout": 0.0}
    assert points["layers", 5, "ipnn"] == {"hidden_units": [400] * 5}
    assert points["shape", "increasing", "deepfm"] == {"hidden_units": [100, 200, 300]}
    assert sum(points["shape", "diamond", "deepfm"]["hidden_units"]) == 600
    assert points["activation", "sigmoid", "ipnn"] == {"activation": "sigmoid"}


def _run(model: str, seed: int, auc: float, logloss: float, seconds: float, best_epoch: int = 1) -> dict:
    return {
        "model": model,
        "seed": seed,
        "auc": auc,
        "logloss": logloss,
        "calibration": 1.0,
        "train_seconds_per_epoch": seconds,
        "epochs_run": 2,
        "best_epoch": best_epoch,
        "params": 10,
    }


def test_summarize_means_stds_gains_and_ranks():
    rows = {
        r["model"]: r
        for r in summarize(
            [
                _run("lr", 1, 0.70, 0.50, 2.0),
                _run("lr", 2, 0.72, 0.48, 2.0),
                _run("deepfm", 1, 0.77, 0.44, 6.0),
                _run("deepfm", 2, 0.79, 0.46, 4.0),
            ]
        )
    }
    assert rows["lr"]["auc_mean"] == pytest.approx(0.71) and rows["lr"]["auc_std"] == pytest.approx(0.0141421, rel=1e-4)
    assert rows["deepfm"]["auc_gain_pct"] == pytest.approx(100 * (0.78 / 0.71 - 1))
    assert rows["deepfm"]["logloss_gain_pct"] == pytest.approx(100 * (1 - 0.45 / 0.49))
    assert rows["deepfm"]["time_vs_baseline"] == pytest.approx(2.5)
    assert (rows["deepfm"]["rank"], rows["lr"]["rank"]) == (1, 2)
    assert summarize([_run("fm", 1, 0.7, 0.5, 1.0)])[0]["auc_gain_pct"] is None  # no LR: no gains


def test_closing_note_names_the_gap_and_the_models_still_improving():
    runs = [
        _run("lr", 1, 0.70, 0.5, 1.0),
        _run("lr", 2, 0.72, 0.5, 1.0),
        _run("deepfm", 1, 0.69, 0.5, 3.0, best_epoch=2),
        _run("deepfm", 2, 0.71, 0.5, 3.0),
    ]
    results = {"settings": {"seeds": [1, 2], "epochs": 2}, "data": {"train_rows": 1000}, "runs": runs}
    note = closing_note(summarize(runs), results)
    assert note.startswith("deepfm ranks 2 of 2: 0.0100 AUC below lr (within twice")
    assert "lr higher on 2 of 2 seed(s)" in note
    assert "1,000 training rows" in note and note.endswith("more epochs may reorder them): deepfm.")
    assert "one seed: no seed-to-seed spread" in closing_note(summarize(runs[::2]), results)
    runs[2]["auc"] = 0.99
    note = closing_note(summarize(runs), results)
    assert note.startswith("deepfm ranks first by mean test AUC") and "deepfm higher on 1 of 2 seed(s)" in note


def test_a_small_study_is_plotted(data, tmp_path):
    chosen = settings(
        data,
        tmp_path,
        {"batch_size": 512, "log_every": 0, "tracking": {}},
        models=("deepfm",),
        seeds=(42,),
        epochs=1,
        study=StudySettings(models=("deepfm",), grids={"layers": [1, 3]}),
    )
    summary = compare.compare(chosen)
    points = json.loads(Path(summary["results"]).read_text())["studies"]["layers"]["points"]
    assert [p["value"] for p in points] == [1, 3] and len(list((tmp_path / "runs").iterdir())) == 2  # layers=3 reused
    assert 'src="study_layers.png"' in (tmp_path / "report.html").read_text()


@pytest.mark.slow
def test_horovodrun_path(data, tmp_path):
    """--np 2: each training is ``horovodrun -np 2 python -m deepfm train``; the record is measured the same way."""
    options = "--models lr --seeds 1 --epochs 1 --np 2".split()
    assert compare_job.main(["--data", str(data), "--output", str(tmp_path), *options]) == 0
    (run,) = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert run["world_size"] == 2 and run["n"] == 1200 and 0.0 < run["auc"] < 1.0


def test_paired_differences_are_taken_seed_by_seed():
    runs = [
        _run("lr", 1, 0.70, 0.5, 1.0),
        _run("lr", 2, 0.75, 0.5, 1.0),
        _run("fm", 1, 0.71, 0.5, 1.0),
        _run("deepfm", 1, 0.72, 0.5, 3.0),
        _run("deepfm", 2, 0.74, 0.5, 3.0),
    ]
    rows = {r["versus"]: r for r in paired(runs)}
    assert set(rows) == {"lr", "fm"}  # no fm_dnn run: no row
    lr = rows["lr"]
    assert (lr["seeds"], lr["wins"]) == (2, 1)
    assert lr["auc_diff_mean"] == pytest.approx(0.005) and lr["auc_diff_min"] == pytest.approx(-0.01)
    assert lr["per_seed"] == "1: +0.0200, 2: -0.0100"
    assert (rows["fm"]["seeds"], rows["fm"]["wins"]) == (1, 1)
