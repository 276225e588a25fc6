"""The DeepFM paper's model comparison (Guo et al., IJCAI 2017) on your own preprocessed logs.

  - Table 2: each chosen model trained by the production trainer (``deepfm.training.trainer``, in
    this process, or on N ranks through ``deepfm.training.launch``) with the paper's settings
    (``deepfm/conf/models.yaml``), once per seed; seed ``s`` gives every model the same data order.
    Each run's bundle is the one its validation split selected (early stopping, best epoch); its
    metrics are those of that bundle on the test split, which no training opens and which is
    scored once per run. The table shows mean ± std over seeds, the relative gain over LR,
    calibration, time and parameters, and the validation AUC beside the test AUC.
  - Figure 6: training seconds per epoch relative to LR (FNN's FM pre-training counted, as
    the paper does).
  - Figures 7-11 (``study``): one-at-a-time sweeps of activation, dropout, neurons per
    layer, hidden layers and network shape around the paper's settings, per deep model.

Layout of ``<output>``::

    runs/<model>-s<seed>-<key>/   one training (the trainer's output) and its result.json
    results.json                  settings, data size, every run's numbers (the report's input)
    table.csv, report.html, *.png written by ``compare_report.render`` from results.json alone
    mlflow_run.json               the comparison's MLflow run (mlflow.db: the default local store)

``key`` hashes everything the training depends on, so a finished run is reused: the study
shares the comparison's runs where settings coincide, and an interrupted comparison resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from deepfm.core import fs
from deepfm.core.features import FeatureSpec
from deepfm.core.tracking import Tracker, TrackingSettings
from deepfm.evaluation.compare_report import render
from deepfm.evaluation.curves import calibration_points, roc_curve, roc_on_grid
from deepfm.models import ModelConfig, ModelDefaults, model_names
from deepfm.models.bundle import load_bundle
from deepfm.prep.synthetic import MANIFEST, reference_ceilings
from deepfm.training.artifacts import BUNDLE, METRICS
from deepfm.training.evaluate import evaluate
from deepfm.training.feed import make_loader, row_groups
from deepfm.training.launch import run_horovod
from deepfm.training.trainer import TrainConfig, train

log = logging.getLogger(__name__)

PARENT_RUN = "mlflow_run.json"  # the comparison's MLflow run, reopened by a rerun
SPLITS = ("train", "validation", "test")

# The paper's Figure 11 keeps the total of hidden neurons fixed across shapes (3 layers, n on average).
SHAPES: dict[str, Callable[[int], list[int]]] = {
    "constant": lambda n: [n, n, n],
    "increasing": lambda n: [n // 2, n, 3 * n // 2],
    "decreasing": lambda n: [3 * n // 2, n, n // 2],
    "diamond": lambda n: [3 * n // 4, 3 * n // 2, 3 * n // 4],
}


@dataclass(frozen=True)
class Study:
    """One sweep of the paper: its figure, x-axis label, and value -> model-config overrides."""

    figure: int
    x_label: str
    overrides: Callable[[Any, ModelConfig, int], dict[str, Any]]  # (value, model's config, shape_neurons)


STUDIES: dict[str, Study] = {
    "activation": Study(7, "activation function", lambda v, cfg, n: {"activation": v}),
    # The paper's axis is the keep probability; the models' ``dropout`` is the drop rate.
    "dropout": Study(8, "dropout (keep probability)", lambda v, cfg, n: {"dropout": round(1.0 - float(v), 6)}),
    "neurons": Study(9, "neurons per layer", lambda v, cfg, n: {"hidden_units": [int(v)] * len(cfg.hidden_units)}),
    "layers": Study(10, "hidden layers", lambda v, cfg, n: {"hidden_units": [cfg.hidden_units[0]] * int(v)}),
    "shape": Study(11, "network shape", lambda v, cfg, n: {"hidden_units": SHAPES[v](n)}),
}


@dataclass(frozen=True)
class StudySettings:
    models: tuple[str, ...]
    grids: dict[str, list[Any]]
    epochs: int = 1
    seed: int = 42
    shape_neurons: int = 200


@dataclass(frozen=True)
class Settings:
    """One comparison; the command line fills it from ``deepfm/conf/compare.yaml``.

    ``train`` holds the training settings every run shares (``train.yaml``'s layout, with the
    comparison's ``train`` section on top); ``model_defaults`` resolves each model's config.
    """

    data: str  # a path or URI
    output: str  # a path or URI
    train: Mapping[str, Any]
    model_defaults: ModelDefaults
    models: tuple[str, ...] = tuple(model_names())
    seeds: tuple[int, ...] = (42, 43, 44, 45, 46)
    epochs: int = 10
    np: int = 1  # ranks per training: 1 in this process, more through horovodrun
    hosts: str | None = None  # horovodrun -H (default localhost:<np>)
    baseline: str = "lr"
    roc_points: int = 201
    calibration_groups: int = 10
    study: StudySettings | None = None
    note: str = ""
    tracking: TrackingSettings = field(default_factory=TrackingSettings)  # the parent run and its children

    def __post_init__(self) -> None:
        unknown = sorted(set(self.models) - set(model_names()))
        if unknown:
            raise ValueError(f"unknown models {unknown}; choose from {model_names()}")
        if self.study:
            bad = sorted(set(self.study.grids) - set(STUDIES))
            if bad:
                raise ValueError(f"unknown studies {bad}; choose from {sorted(STUDIES)}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], train: Mapping[str, Any], model_defaults: ModelDefaults) -> Settings:
        """From compare.yaml's layout (``seeds``: a count from ``base_seed``; ``study``: None, or its
        section with ``seed`` null meaning ``base_seed``; the ``train`` section is ``train``)."""
        values = {k: v for k, v in values.items() if k != "train"}
        tracking = TrackingSettings.from_dict((values.pop("tracking", None) or {}).get("mlflow") or {})
        base_seed = values.pop("base_seed")
        study = values.pop("study", None)
        if study:
            seed = base_seed if study.get("seed") is None else study["seed"]
            study = StudySettings(**{**study, "models": tuple(study["models"]), "seed": seed})
        return cls(
            **{
                **values,
                "data": str(values["data"]),
                "output": str(values["output"]),
                "models": tuple(values["models"]),
                "seeds": tuple(range(base_seed, base_seed + int(values["seeds"]))),
                "study": study,
                "train": dict(train),
                "model_defaults": model_defaults,
                "tracking": tracking,
            }
        )


def train_config(
    settings: Settings, model: str, seed: int, epochs: int, model_config: Mapping[str, Any]
) -> TrainConfig:
    """The run's TrainConfig, tracked as a child of the comparison's run; its output folder is named
    by a hash of everything else but the tracking."""
    values = {
        **settings.train,
        "data": str(settings.data),
        "output": ".",
        "model": model,
        "seed": seed,
        "epochs": epochs,
        "model_config": dict(model_config),
    }
    cfg = TrainConfig.from_dict(values, settings.model_defaults)
    key = {k: v for k, v in cfg.to_dict().items() if k not in ("output", "tracking")}
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    output = fs.join(settings.output, "runs", f"{model}-s{seed}-{digest}")
    return dataclasses.replace(cfg, output=output, tracking=settings.tracking)


def run(settings: Settings, model: str, seed: int, epochs: int, model_config: Mapping[str, Any]) -> dict[str, Any]:
    """Train one model (or reuse its finished run) and measure it; returns the run's record."""
    cfg = train_config(settings, model, seed, epochs, model_config)
    done = fs.join(cfg.output, "result.json")
    if fs.exists(done):
        return dict(fs.read_json(done))
    fs.remove_tree(cfg.output)  # a half-finished run restarts, so its time is whole
    log.info("training %s seed %d %s -> %s", model, seed, dict(model_config) or "(paper settings)", cfg.output)
    started = time.perf_counter()
    summary = train(cfg) if settings.np == 1 else run_horovod(cfg, settings.np, settings.hosts)
    record = measure(cfg, summary, time.perf_counter() - started, settings)
    record["model_config_overrides"] = dict(model_config)
    fs.put_json(done, record, indent=1)
    log.info(
        "%s seed %d: AUC %.4f logloss %.4f, %.1f s",
        model,
        seed,
        record["auc"],
        record["logloss"],
        record["wall_seconds"],
    )
    return record


def _train_seconds(epochs: list[dict[str, Any]]) -> float:
    return sum(e["train_seconds"] for e in epochs)


def measure(cfg: TrainConfig, summary: dict[str, Any], wall_seconds: float, settings: Settings) -> dict[str, Any]:
    """The run's numbers: the validation-selected bundle on the test split (scored once, here:
    training never opened it) with its curves, the validation that selected it, per-epoch
    history, time, size."""
    bundle = load_bundle(fs.join(cfg.output, BUNDLE))
    if bundle.validation is None:
        raise RuntimeError(f"{fs.join(cfg.output, BUNDLE)} holds no validation metrics")
    test_split = make_loader("arrow", fs.join(cfg.data, "test"), bundle.spec, cfg.eval_batch_size, shuffle=False)
    metrics = evaluate(bundle.model, test_split.epoch(0), torch.device("cpu"))
    scores, selected_on = metrics.compute(), bundle.validation.compute()
    history = fs.read_json(fs.join(cfg.output, METRICS))["epochs"]
    pretraining = fs.join(cfg.output, "fnn_pretrain_fm", METRICS)
    train_seconds = _train_seconds(history)
    if fs.exists(pretraining):
        train_seconds += _train_seconds(fs.read_json(pretraining)["epochs"])
    fpr, tpr = roc_curve(metrics)
    grid = np.linspace(0.0, 1.0, settings.roc_points)
    return {
        "model": cfg.model,
        "seed": cfg.seed,
        "model_config": bundle.config.to_dict(),
        "run_dir": str(cfg.output),
        **{k: scores[k] for k in ("auc", "logloss", "calibration", "ctr_observed", "ctr_predicted", "n")},
        **{f"val_{k}": selected_on[k] for k in ("auc", "logloss", "calibration", "n")},
        "best_epoch": summary["best_epoch"],
        "epochs_run": len(history),
        "world_size": summary["world_size"],
        "final_val_auc": history[-1]["val_auc"],
        "final_val_logloss": history[-1]["val_logloss"],
        "train_seconds": train_seconds,
        "train_seconds_per_epoch": train_seconds / len(history),
        "wall_seconds": wall_seconds,
        "params": sum(p.numel() for p in bundle.model.parameters()),
        "history": [
            {k: e[k] for k in ("epoch", "train_loss", "val_auc", "val_logloss", "train_seconds")} for e in history
        ],
        "roc_tpr": np.round(roc_on_grid(fpr, tpr, grid), 6).tolist(),
        "calibration_points": calibration_points(metrics, settings.calibration_groups),
    }


def study_points(study: StudySettings, model_defaults: ModelDefaults) -> list[tuple[str, Any, str, dict[str, Any]]]:
    """``(study, value, model, model-config overrides)`` for every point of every sweep."""
    points = []
    for name, values in study.grids.items():
        for model in study.models:
            base = model_defaults.resolve(model)
            points += [
                (name, value, model, STUDIES[name].overrides(value, base, study.shape_neurons)) for value in values
            ]
    return points


def compare(settings: Settings) -> dict[str, Any]:
    """Run (or reuse) every training of the comparison and the study, write results.json and the
    report, and return the report's summary.

    The comparison is one MLflow run (reopened by a rerun) with a child run per training; the
    report and results.json are its artifacts, each model's mean test AUC and logloss its metrics.
    """
    parent = Tracker(settings.tracking, settings.output)
    known = fs.join(settings.output, PARENT_RUN)
    reopened = fs.read_json(known)["run_id"] if parent.enabled and fs.exists(known) else None
    run_id = parent.start({"data": str(settings.data), "models": ",".join(settings.models),
                           "seeds": len(settings.seeds), "epochs": settings.epochs}, run_id=reopened,
                          run_name=f"compare-{fs.name(settings.output)}")  # fmt: skip
    if run_id:
        fs.put_json(known, {"run_id": run_id, "tracking_uri": parent.uri})
        children = dataclasses.replace(settings.tracking, tracking_uri=parent.uri, parent_run_id=run_id)
        settings = dataclasses.replace(settings, tracking=children)
    results = run_all(settings)
    summary = render(results, settings.output)
    parent.log_metrics({f"{model}.auc_mean": auc for model, auc in summary["auc"].items()}, step=0)
    for name in sorted(fs.sizes_under(settings.output)):  # the top level's report files
        if "/" not in name and name.endswith((".json", ".csv", ".html", ".png")) and name != PARENT_RUN:
            parent.log_artifact(fs.join(settings.output, name))
    parent.finish()
    return {**summary, "mlflow_run_id": run_id}


def run_all(settings: Settings) -> dict[str, Any]:
    """Run (or reuse) every training of the comparison and the study; write and return results.json."""
    runs = [run(settings, model, seed, settings.epochs, {}) for seed in settings.seeds for model in settings.models]
    studies: dict[str, Any] = {}
    if settings.study:
        for name, value, model, overrides in study_points(settings.study, settings.model_defaults):
            record = run(settings, model, settings.study.seed, settings.study.epochs, overrides)
            entry = studies.setdefault(
                name,
                {
                    "figure": STUDIES[name].figure,
                    "x_label": STUDIES[name].x_label,
                    "values": settings.study.grids[name],
                    "points": [],
                },
            )
            entry["points"].append(
                {
                    "model": model,
                    "value": value,
                    "overrides": overrides,
                    **{k: record[k] for k in ("auc", "logloss", "calibration", "run_dir")},
                }
            )
    recorded = {k: v for k, v in dataclasses.asdict(settings).items() if k not in ("model_defaults", "tracking")}
    results = {
        "settings": json.loads(json.dumps(recorded, default=str)),
        "data": data_size(settings.data),
        "machine": machine(),
        "roc_fpr": np.linspace(0.0, 1.0, settings.roc_points).tolist(),
        "runs": runs,
        "studies": studies,
        "ceilings": ceilings(settings.data),
    }
    fs.put_json(fs.join(settings.output, "results.json"), results, indent=1)
    return results


def machine() -> dict[str, Any]:
    """What the timings were measured on: a shared or busy host inflates them all."""
    return {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def ceilings(data: str) -> dict[str, Any] | None:
    """The generator's reference ceilings on the test day (``synthetic.reference_ceilings``), when
    the preprocessed logs were generated (a ``generator.json`` beside them, recording their schema:
    older generators did not) and have a test day."""
    summary_file = fs.join(data, "summary.json")
    summary = fs.read_json(summary_file) if fs.exists(summary_file) else {}
    path = fs.join(summary["input"], MANIFEST) if summary.get("input") else None
    manifest = fs.read_json(path) if path and fs.exists(path) else {}
    if not (summary.get("test_days") and "schema" in manifest and summary.get("layout") == "date"):
        return None
    plans = FeatureSpec.load(data).metadata.get("field_plans", [])
    min_count = max((p["min_count"] for p in plans if p["transform"] == "vocab"), default=1)
    test_day = summary["test_days"][-1]
    values = reference_ceilings(manifest, summary["train_days"], test_day, min_count)
    return {"test_day": test_day, "min_count": min_count, "values": values}


def data_size(data: str) -> dict[str, Any]:
    """Rows of each split, from the Parquet footers."""
    return {
        "path": str(data),
        **{f"{split}_rows": sum(g.num_rows for g in row_groups(fs.join(data, split))) for split in SPLITS},
    }
