"""The DeepFM paper's model comparison (Guo et al., IJCAI 2017) on your own preprocessed logs.

  - Table 2: each chosen model trained by the production trainer (``deepfm.train.train``, in
    this process, or ``horovodrun -np N jobs/train.py``) with the paper's settings
    (``conf/models.yaml``), once per seed; seed ``s`` gives every model the same data order.
    The best-validation bundle of each run is evaluated on the test day; the table shows
    mean ± std over seeds, the relative gain over LR, calibration, time and parameters.
  - Figure 6: training seconds per epoch relative to LR (FNN's FM pre-training counted, as
    the paper does).
  - Figures 7-11 (``study``): one-at-a-time sweeps of activation, dropout, neurons per
    layer, hidden layers and network shape around the paper's settings, per deep model.

Layout of ``<output>``::

    runs/<model>-s<seed>-<key>/   one training (the trainer's output) and its result.json
    results.json                  settings, data size, every run's numbers (the report's input)
    table.csv, report.html, *.png written by ``render`` from results.json alone

``key`` hashes everything the training depends on, so a finished run is reused: the study
shares the comparison's runs where settings coincide, and an interrupted comparison resumes.
The trainer validates on ``<data>/test`` and keeps its best epoch there, exactly as in
production, so test metrics are those of the epoch production would ship.
"""
from __future__ import annotations

import dataclasses
import hashlib
import html
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from deepfm import report
from deepfm.bundle import load_bundle
from deepfm.config import REPO_ROOT, deep_update, load_conf
from deepfm.data import row_groups
from deepfm.models import model_names, resolve_model_config
from deepfm.train import TrainConfig, train

log = logging.getLogger("deepfm.compare")

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
    overrides: Callable[[Any, dict[str, Any], int], dict[str, Any]]  # (value, model's config, shape_neurons)


STUDIES: dict[str, Study] = {
    "activation": Study(7, "activation function", lambda v, cfg, n: {"activation": v}),
    # The paper's axis is the keep probability; the models' ``dropout`` is the drop rate.
    "dropout": Study(8, "dropout (keep probability)", lambda v, cfg, n: {"dropout": round(1.0 - float(v), 6)}),
    "neurons": Study(9, "neurons per layer", lambda v, cfg, n: {"hidden_units": [int(v)] * len(cfg["hidden_units"])}),
    "layers": Study(10, "hidden layers", lambda v, cfg, n: {"hidden_units": [cfg["hidden_units"][0]] * int(v)}),
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
    """One comparison; ``jobs/compare.py`` fills it from conf/compare.yaml and the command line."""

    data: Path
    output: Path
    models: tuple[str, ...] = tuple(model_names())
    seeds: tuple[int, ...] = (42, 43, 44, 45, 46)
    epochs: int = 10
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig values over conf/train.yaml
    np: int = 1  # ranks per training: 1 in this process, more through horovodrun
    hosts: str | None = None  # horovodrun -H (default localhost:<np>)
    baseline: str = "lr"
    roc_points: int = 201
    calibration_groups: int = 10
    study: StudySettings | None = None
    note: str = ""

    def __post_init__(self) -> None:
        unknown = sorted(set(self.models) - set(model_names()))
        if unknown:
            raise ValueError(f"unknown models {unknown}; choose from {model_names()}")
        if self.study:
            bad = sorted(set(self.study.grids) - set(STUDIES))
            if bad:
                raise ValueError(f"unknown studies {bad}; choose from {sorted(STUDIES)}")


def settings_from(values: dict[str, Any]) -> Settings:
    """Settings from conf/compare.yaml's layout (``seeds``: a count from ``base_seed``; ``study``:
    None, or its section with ``seed`` null meaning ``base_seed``)."""
    values = dict(values)
    base_seed = values.pop("base_seed")
    values["seeds"] = tuple(range(base_seed, base_seed + int(values["seeds"])))
    values["models"] = tuple(values["models"])
    study = values.get("study")
    if study:
        seed = base_seed if study.get("seed") is None else study["seed"]
        values["study"] = StudySettings(**{**study, "models": tuple(study["models"]), "seed": seed})
    return Settings(**{**values, "data": Path(values["data"]), "output": Path(values["output"])})


# ------------------------------------------------------------------------------ training


def train_config(settings: Settings, model: str, seed: int, epochs: int, model_config: dict[str, Any]) -> TrainConfig:
    """The run's TrainConfig; its output folder is named by a hash of everything else."""
    values = deep_update(load_conf("train"), settings.train)
    values.update(data=str(settings.data), output=".", model=model, seed=seed, epochs=epochs,
                  model_config=model_config)
    key = {**values, "model_config": resolve_model_config(model, model_config)}
    del key["output"]
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    values["output"] = str(settings.output / "runs" / f"{model}-s{seed}-{digest}")
    return TrainConfig.from_dict(values)


def _horovod_train(cfg: TrainConfig, np_: int, hosts: str | None) -> dict[str, Any]:
    """``horovodrun jobs/train.py`` with every TrainConfig value passed as an override."""
    values = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("data", "output")}
    horovodrun = Path(sys.executable).parent / "horovodrun"  # the venv's, whatever PATH says
    command = [str(horovodrun), "-np", str(np_), "-H", hosts or f"localhost:{np_}", "--gloo", sys.executable,
               str(REPO_ROOT / "jobs" / "train.py"), "--data", str(cfg.data), "--output", str(cfg.output),
               *(f"--config-override={k}={json.dumps(v, default=str)}" for k, v in values.items())]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    for line in reversed(done.stdout.splitlines()):
        line = re.sub(r"^\[\d+(,\d+)?\]<stdout>:", "", line).strip()  # horovodrun's rank prefix
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no JSON summary in the output of {' '.join(command)}")


def run(settings: Settings, model: str, seed: int, epochs: int, model_config: dict[str, Any]) -> dict[str, Any]:
    """Train one model (or reuse its finished run) and measure it; returns the run's record."""
    cfg = train_config(settings, model, seed, epochs, model_config)
    done = cfg.output / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    shutil.rmtree(cfg.output, ignore_errors=True)  # a half-finished run restarts, so its time is whole
    log.info("training %s seed %d %s -> %s", model, seed, model_config or "(paper settings)", cfg.output)
    started = time.perf_counter()
    summary = train(cfg) if settings.np == 1 else _horovod_train(cfg, settings.np, settings.hosts)
    record = measure(cfg, summary, time.perf_counter() - started, settings)
    record["model_config_overrides"] = model_config
    done.write_text(json.dumps(record, indent=1))
    log.info("%s seed %d: test AUC %.4f logloss %.4f, %.1f s", model, seed, record["auc"], record["logloss"],
             record["wall_seconds"])
    return record


def _train_seconds(metrics_json: Path) -> float:
    return sum(e["train_seconds"] for e in json.loads(metrics_json.read_text())["epochs"])


def measure(cfg: TrainConfig, summary: dict[str, Any], wall_seconds: float, settings: Settings) -> dict[str, Any]:
    """The run's numbers: test metrics of its bundle, curves, per-epoch history, time, size."""
    bundle = load_bundle(cfg.output / "bundle")
    metrics = report.bundle_test_metrics(bundle.model, bundle.spec, cfg.data / "test", cfg.loader, cfg.eval_batch_size)
    test = metrics.compute()
    history = json.loads((cfg.output / "metrics.json").read_text())["epochs"]
    pretraining = cfg.output / "fnn_pretrain_fm" / "metrics.json"
    train_seconds = _train_seconds(cfg.output / "metrics.json")
    if pretraining.exists():
        train_seconds += _train_seconds(pretraining)
    fpr, tpr = report.roc_curve(metrics)
    grid = np.linspace(0.0, 1.0, settings.roc_points)
    return {
        "model": cfg.model, "seed": cfg.seed, "model_config": bundle.config, "run_dir": str(cfg.output),
        **{k: test[k] for k in ("auc", "logloss", "calibration", "ctr_observed", "ctr_predicted", "n")},
        "best_epoch": summary["best_epoch"], "epochs_run": len(history), "world_size": summary["world_size"],
        "final_val_auc": history[-1]["val_auc"], "final_val_logloss": history[-1]["val_logloss"],
        "train_seconds": train_seconds, "train_seconds_per_epoch": train_seconds / len(history),
        "wall_seconds": wall_seconds, "params": sum(p.numel() for p in bundle.model.parameters()),
        "history": [{k: e[k] for k in ("epoch", "train_loss", "val_auc", "val_logloss", "train_seconds")}
                    for e in history],
        "roc_tpr": np.round(report.roc_on_grid(fpr, tpr, grid), 6).tolist(),
        "calibration_points": report.calibration_points(metrics, settings.calibration_groups),
    }


def study_points(study: StudySettings) -> list[tuple[str, Any, str, dict[str, Any]]]:
    """``(study, value, model, model-config overrides)`` for every point of every sweep."""
    points = []
    for name, values in study.grids.items():
        for model in study.models:
            base = resolve_model_config(model)
            points += [(name, value, model, STUDIES[name].overrides(value, base, study.shape_neurons))
                       for value in values]
    return points


def compare(settings: Settings) -> dict[str, Any]:
    """Run (or reuse) every training of the comparison and the study; write and return results.json."""
    runs = [run(settings, model, seed, settings.epochs, {}) for seed in settings.seeds for model in settings.models]
    studies: dict[str, Any] = {}
    if settings.study:
        for name, value, model, overrides in study_points(settings.study):
            record = run(settings, model, settings.study.seed, settings.study.epochs, overrides)
            entry = studies.setdefault(name, {"figure": STUDIES[name].figure, "x_label": STUDIES[name].x_label,
                                              "values": settings.study.grids[name], "points": []})
            entry["points"].append({"model": model, "value": value, "overrides": overrides,
                                    **{k: record[k] for k in ("auc", "logloss", "calibration", "run_dir")}})
    results = {
        "settings": json.loads(json.dumps(dataclasses.asdict(settings), default=str)),
        "data": data_size(settings.data),
        "machine": machine(),
        "roc_fpr": np.linspace(0.0, 1.0, settings.roc_points).tolist(),
        "runs": runs,
        "studies": studies,
    }
    settings.output.mkdir(parents=True, exist_ok=True)
    (settings.output / "results.json").write_text(json.dumps(results, indent=1))
    return results


def machine() -> dict[str, Any]:
    """What the timings were measured on: a shared or busy host inflates them all."""
    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
            "load_average_1m": round(os.getloadavg()[0], 2)}


def data_size(data: Path) -> dict[str, Any]:
    """Rows of each split, from the Parquet footers."""
    return {"path": str(data), **{f"{split}_rows": sum(g.num_rows for g in row_groups(data / split))
                                  for split in ("train", "test")}}


# --------------------------------------------------------------------------- aggregation


def _mean_std(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def summarize(runs: list[dict[str, Any]], baseline: str = "lr") -> list[dict[str, Any]]:
    """The comparison table: one row per model (first-seen order), means and stds over seeds,
    gains relative to ``baseline`` (None when it was not run) and the rank by mean AUC."""
    by_model: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_model.setdefault(r["model"], []).append(r)
    rows = []
    for model, rs in by_model.items():
        auc_mean, auc_std = _mean_std([r["auc"] for r in rs])
        logloss_mean, logloss_std = _mean_std([r["logloss"] for r in rs])
        rows.append({"model": model, "runs": len(rs), "auc_mean": auc_mean, "auc_std": auc_std,
                     "logloss_mean": logloss_mean, "logloss_std": logloss_std,
                     "calibration": float(np.mean([r["calibration"] for r in rs])),
                     "train_s_per_epoch": float(np.mean([r["train_seconds_per_epoch"] for r in rs])),
                     "epochs_run": float(np.mean([r["epochs_run"] for r in rs])), "params": rs[0]["params"],
                     # seeds whose best epoch was their last: still improving when training ended
                     "improving_at_end": sum(r["best_epoch"] == r["epochs_run"] for r in rs)})
    base = next((r for r in rows if r["model"] == baseline), None)
    order = sorted(rows, key=lambda r: -r["auc_mean"])
    for row in rows:
        row["rank"] = order.index(row) + 1
        row["auc_gain_pct"] = 100 * (row["auc_mean"] / base["auc_mean"] - 1) if base else None
        row["logloss_gain_pct"] = 100 * (1 - row["logloss_mean"] / base["logloss_mean"]) if base else None
        row["time_vs_baseline"] = row["train_s_per_epoch"] / base["train_s_per_epoch"] if base else None
    return rows


def mean_history(runs: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Per-epoch means over seeds (a seed stopped early contributes to its epochs only)."""
    epochs = sorted({e["epoch"] for r in runs for e in r["history"]})
    keys = [k for k, _ in report.HISTORY_PANELS]
    table = pd.DataFrame([e for r in runs for e in r["history"]]).groupby("epoch")[keys].mean()
    return {"epoch": epochs, **{k: table.loc[epochs, k].tolist() for k in keys}}


def mean_calibration(runs: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Equal-count groups averaged over seeds, group by group (quantile groups line up)."""
    groups = min(len(r["calibration_points"]) for r in runs)
    return [{k: float(np.mean([r["calibration_points"][g][k] for r in runs])) for k in ("mean_predicted", "observed")}
            for g in range(groups)]


def study_series(entry: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    """``{model: {"auc": [...], "logloss": [...]}}`` aligned with the study's values."""
    series: dict[str, dict[str, list[float]]] = {}
    for p in entry["points"]:
        s = series.setdefault(p["model"], {"auc": [np.nan] * len(entry["values"]),
                                           "logloss": [np.nan] * len(entry["values"])})
        i = entry["values"].index(p["value"])
        s["auc"][i], s["logloss"][i] = p["auc"], p["logloss"]
    return series


# -------------------------------------------------------------------------------- report

TABLE_COLUMNS: list[report.Column] = [
    ("rank", "rank", str), ("model", "model", str), ("runs", "seeds", str),
    ("auc", "AUC (mean ± std)", str), ("logloss", "logloss (mean ± std)", str),
    ("auc_gain_pct", "AUC vs LR (%)", report.fmt(2)), ("logloss_gain_pct", "logloss vs LR (% lower)", report.fmt(2)),
    ("calibration", "calibration (pred/obs)", report.fmt(3)), ("time_vs_baseline", "time/epoch vs LR", report.fmt(2)),
    ("train_s_per_epoch", "s/epoch", report.fmt(1)), ("epochs_run", "epochs", report.fmt(1)),
    ("params", "parameters", report.fmt(0)),
]


def _display(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "auc": f"{row['auc_mean']:.4f} ± {row['auc_std']:.4f}",
            "logloss": f"{row['logloss_mean']:.4f} ± {row['logloss_std']:.4f}"}


def closing_note(rows: list[dict[str, Any]], results: dict[str, Any], target: str = "deepfm") -> str:
    """Where ``target`` ranks; the gap to the next (or the first) model against seed noise,
    seed by seed, and the scale of the run."""
    if not rows:
        return "No model was run."
    best = min(rows, key=lambda r: r["rank"])
    mine = next((r for r in rows if r["model"] == target), None)
    if mine is None:
        return f"{target} was not in this comparison; {best['model']} ranks first by AUC."
    improving = [r["model"] for r in rows if r["improving_at_end"]]
    still = (f" Still improving at their last epoch (more epochs may reorder them): {', '.join(improving)}."
             if improving else "")
    if mine is best:
        runner = next((r for r in rows if r["rank"] == 2), None)
        lead = (f", {mine['auc_mean'] - runner['auc_mean']:.4f} AUC ahead of {runner['model']}; "
                f"{_paired(results['runs'], target, runner['model'])}") if runner else ""
        return f"{target} ranks first by mean test AUC{lead}.{still}"
    gap = best["auc_mean"] - mine["auc_mean"]
    s = results["settings"]
    if min(best["runs"], mine["runs"]) < 2:
        spread = "one seed: no seed-to-seed spread to compare the gap with; rerun with --seeds 2 or more"
    else:
        noise = max(best["auc_std"], mine["auc_std"])
        spread = f"{'within' if gap <= 2 * noise else 'beyond'} twice the larger seed std, {noise:.4f}"
    return (f"{target} ranks {mine['rank']} of {len(rows)}: {gap:.4f} AUC below {best['model']} ({spread}; "
            f"{_paired(results['runs'], best['model'], target)}). Scale of this run: "
            f"{results['data']['train_rows']:,} training rows, {len(s['seeds'])} seed(s), "
            f"at most {s['epochs']} epoch(s).{still}")


def _paired(runs: list[dict[str, Any]], a: str, b: str) -> str:
    """How often ``a`` beat ``b`` seed by seed (a seed gives both the same data order)."""
    auc = {(r["model"], r["seed"]): r["auc"] for r in runs}
    seeds = sorted(seed for model, seed in auc if model == a and (b, seed) in auc)
    wins = sum(auc[a, seed] > auc[b, seed] for seed in seeds)
    return f"{a} higher on {wins} of {len(seeds)} seed(s)"


def render(results: dict[str, Any], output: Path) -> dict[str, Any]:
    """table.csv, the PNGs and report.html, all computed from ``results`` (results.json)."""
    output.mkdir(parents=True, exist_ok=True)
    s = results["settings"]
    rows = summarize(results["runs"], s["baseline"])
    pd.DataFrame(rows).to_csv(output / "table.csv", index=False)
    by_model = {r["model"]: [x for x in results["runs"] if x["model"] == r["model"]] for r in rows}
    fpr = np.asarray(results["roc_fpr"])
    curves = {f"{r['model']} (AUC {r['auc_mean']:.4f})":
              (fpr, np.mean([x["roc_tpr"] for x in by_model[r["model"]]], axis=0)) for r in rows}
    reference = next((label for label in curves if label.split(" ")[0] == s["baseline"]), None)
    images = [
        ("ROC curves of all models on the test day (averaged over seeds)",
         report.plot_roc(curves, output / "roc.png", reference=reference)),
        ("Calibration on the test day (equal-count score groups, averaged over seeds)", report.plot_calibration(
            {m: mean_calibration(rs) for m, rs in by_model.items()}, output / "calibration.png")),
        ("Train and validation curves per epoch (mean over seeds)", report.plot_history(
            {m: mean_history(rs) for m, rs in by_model.items()}, output / "history.png")),
        _efficiency(rows, s["baseline"], output),
    ]
    for name, entry in results.get("studies", {}).items():
        title = f"Figure {entry['figure']}: {name}"
        images.append((title, report.plot_sweep(title, entry["x_label"], [str(v) for v in entry["values"]],
                                                study_series(entry), output / f"study_{name}.png")))
    note = closing_note(rows, results)
    parts = [
        _setup(results),
        report.html_table([_display(r) for r in rows], TABLE_COLUMNS, highlight=lambda r: r["model"] == "deepfm"),
        READING,
        *(f"<h2>{html.escape(title)}</h2>{report.html_image(path, output, title)}" for title, path in images),
        f"<h2>Closing note</h2><p class=note>{html.escape(note)}"
        + (f"<br>{html.escape(s['note'])}" if s.get("note") else "") + "</p>",
    ]
    page = report.write_html(output / "report.html", "Model comparison (DeepFM paper, Table 2)", parts)
    ranking = [r["model"] for r in sorted(rows, key=lambda r: r["rank"])]
    return {"report": str(page), "results": str(output / "results.json"), "table": str(output / "table.csv"),
            "ranking": ranking, "auc": {r["model"]: round(r["auc_mean"], 5) for r in rows}, "note": note}


READING = """<ul>
<li>AUC and logloss: each run's best-validation bundle on the test day, mean ± sample std over seeds.</li>
<li>AUC vs LR: relative change of the mean AUC; logloss vs LR: relative reduction of the mean logloss.</li>
<li>calibration: mean predicted CTR / observed CTR on the test day (1 is calibrated).</li>
<li>time/epoch vs LR (the paper's Figure 6): training seconds per epoch (reading + steps, validation
excluded; FNN's FM pre-training included) relative to LR's, wall-clock on the machine named above.</li>
</ul>"""


def _setup(results: dict[str, Any]) -> str:
    s, data, m = results["settings"], results["data"], results.get("machine", {})
    return (f"<p>Data <code>{html.escape(data['path'])}</code>: {data['train_rows']:,} training rows, "
            f"{data['test_rows']:,} test rows (the test day). Every model trained by the production trainer "
            f"with the paper's settings (conf/models.yaml) and the same training settings; seeds {s['seeds']} "
            f"(a seed fixes the data order for every model), at most {s['epochs']} epoch(s) with early stopping, "
            f"{s['np']} rank(s) per training. Machine: {m.get('cpus', '?')} CPUs, CUDA {m.get('cuda', '?')}, "
            f"1-minute load average {m.get('load_average_1m', '?')} when the comparison ended.</p>")


def _efficiency(rows: list[dict[str, Any]], baseline: str, output: Path) -> tuple[str, Path]:
    """Figure 6: training time per epoch relative to the baseline (absolute seconds without one)."""
    relative = rows[0]["time_vs_baseline"] is not None
    key, unit = ("time_vs_baseline", f"x {baseline}") if relative else ("train_s_per_epoch", "seconds")
    title = f"Training time per epoch ({unit})"
    return title, report.plot_bars({r["model"]: r[key] for r in rows}, output / "efficiency.png", unit, title,
                                   reference=1.0 if relative else None)
