"""The comparison's numbers: one row per model over its seeds (means, stds, gains relative to a
baseline, ranks), per-epoch means, averaged calibration groups, sweep series, and the closing
note that says where DeepFM stands against seed noise."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from deepfm.evaluation.plots import HISTORY_PANELS


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
        rows.append(
            {
                "model": model,
                "runs": len(rs),
                "auc_mean": auc_mean,
                "auc_std": auc_std,
                "logloss_mean": logloss_mean,
                "logloss_std": logloss_std,
                "calibration": float(np.mean([r["calibration"] for r in rs])),
                "val_auc_mean": float(np.mean([r.get("val_auc", np.nan) for r in rs])),
                "train_s_per_epoch": float(np.mean([r["train_seconds_per_epoch"] for r in rs])),
                "epochs_run": float(np.mean([r["epochs_run"] for r in rs])),
                "params": rs[0]["params"],
                # seeds whose best epoch was their last: still improving when training ended
                "improving_at_end": sum(r["best_epoch"] == r["epochs_run"] for r in rs),
            }
        )
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
    keys = [k for k, _ in HISTORY_PANELS]
    table = pd.DataFrame([e for r in runs for e in r["history"]]).groupby("epoch")[keys].mean()
    return {"epoch": epochs, **{k: table.loc[epochs, k].tolist() for k in keys}}


def mean_calibration(runs: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Equal-count groups averaged over seeds, group by group (quantile groups line up)."""
    groups = min(len(r["calibration_points"]) for r in runs)
    return [
        {k: float(np.mean([r["calibration_points"][g][k] for r in runs])) for k in ("mean_predicted", "observed")}
        for g in range(groups)
    ]


def study_series(entry: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    """``{model: {"auc": [...], "logloss": [...]}}`` aligned with the study's values."""
    series: dict[str, dict[str, list[float]]] = {}
    for p in entry["points"]:
        s = series.setdefault(
            p["model"], {"auc": [np.nan] * len(entry["values"]), "logloss": [np.nan] * len(entry["values"])}
        )
        i = entry["values"].index(p["value"])
        s["auc"][i], s["logloss"][i] = p["auc"], p["logloss"]
    return series


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
    still = (
        f" Still improving at their last epoch (more epochs may reorder them): {', '.join(improving)}."
        if improving
        else ""
    )
    if mine is best:
        runner = next((r for r in rows if r["rank"] == 2), None)
        lead = (
            (
                f", {mine['auc_mean'] - runner['auc_mean']:.4f} AUC ahead of {runner['model']}; "
                f"{_paired(results['runs'], target, runner['model'])}"
            )
            if runner
            else ""
        )
        return f"{target} ranks first by mean test AUC{lead}.{still}"
    gap = best["auc_mean"] - mine["auc_mean"]
    s = results["settings"]
    if min(best["runs"], mine["runs"]) < 2:
        spread = "one seed: no seed-to-seed spread to compare the gap with; rerun with --seeds 2 or more"
    else:
        noise = max(best["auc_std"], mine["auc_std"])
        spread = f"{'within' if gap <= 2 * noise else 'beyond'} twice the larger seed std, {noise:.4f}"
    return (
        f"{target} ranks {mine['rank']} of {len(rows)}: {gap:.4f} AUC below {best['model']} ({spread}; "
        f"{_paired(results['runs'], best['model'], target)}). Scale of this run: "
        f"{results['data']['train_rows']:,} training rows, {len(s['seeds'])} seed(s), "
        f"at most {s['epochs']} epoch(s).{still}"
    )


PAIRED_BASELINES = ("lr", "fm", "fm_dnn")  # the and the paper's contrasts for DeepFM


def paired(
    runs: list[dict[str, Any]], target: str = "deepfm", others: tuple[str, ...] = PAIRED_BASELINES
) -> list[dict]:
    """``target``'s test AUC minus each other model's, seed by seed (a seed gives both the same
    data order and initial draws): a gain that holds in every seed is not seed noise."""
    auc = {(r["model"], r["seed"]): r["auc"] for r in runs}
    rows = []
    for other in others:
        seeds = sorted(seed for model, seed in auc if model == target and (other, seed) in auc)
        if not seeds:
            continue
        diffs = [auc[target, seed] - auc[other, seed] for seed in seeds]
        mean, std = _mean_std(diffs)
        rows.append(
            {
                "versus": other,
                "seeds": len(seeds),
                "wins": sum(d > 0 for d in diffs),
                "auc_diff_mean": mean,
                "auc_diff_std": std,
                "auc_diff_min": min(diffs),
                "per_seed": ", ".join(f"{seed}: {d:+.4f}" for seed, d in zip(seeds, diffs)),
            }
        )
    return rows


def _paired(runs: list[dict[str, Any]], a: str, b: str) -> str:
    """How often ``a`` beat ``b`` seed by seed (a seed gives both the same data order)."""
    auc = {(r["model"], r["seed"]): r["auc"] for r in runs}
    seeds = sorted(seed for model, seed in auc if model == a and (b, seed) in auc)
    wins = sum(auc[a, seed] > auc[b, seed] for seed in seeds)
    return f"{a} higher on {wins} of {len(seeds)} seed(s)"
