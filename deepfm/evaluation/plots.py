"""Plots of the reports, as PNG files: ROC, calibration, per-epoch history, bars, sweeps, daily trend.

A model keeps its colour in every plot (``colors``), so pictures of one report compare at a glance.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from deepfm.core import fs
from deepfm.evaluation.curves import Curve
from deepfm.models import model_names

DPI = 110


def colors(labels: Sequence[str]) -> dict[str, Any]:
    """One colour per label; a label starting with a registry model's name gets that model's
    colour (tab10 has one per model), so a model looks the same in every plot."""
    palette, names = plt.get_cmap("tab10"), model_names()

    def index(position: int, label: str) -> int:
        head = label.split(" ", 1)[0]
        return names.index(head) if head in names else position

    return {label: palette(index(i, label) % palette.N) for i, label in enumerate(labels)}


def _save(fig: plt.Figure, path: fs.PathLike) -> str:
    """``fig`` as a PNG at ``path`` (any URI); the figure is closed."""
    fig.tight_layout()
    saved = fs.put_stream(path, lambda stream: fig.savefig(stream, format="png", dpi=DPI))
    plt.close(fig)
    return saved


def plot_roc(
    curves: dict[str, Curve],
    path: fs.PathLike,
    title: str = "ROC on the test day",
    reference: str | None = None,
    zoom: float = 0.2,
) -> str:
    """One ROC line per label (put the AUC in the label). Beside it: with ``reference`` (one of
    the labels; all curves on one FPR grid), each TPR minus the reference's, where curves that
    overlap on the ROC part; without, a zoom on FPR <= ``zoom``."""
    fig, (full, side) = plt.subplots(1, 2, figsize=(11, 4.8))
    palette = colors(list(curves))
    for label, (fpr, tpr) in curves.items():
        full.plot(fpr, tpr, lw=1.3, color=palette[label], label=label)
        lift = tpr - curves[reference][1] if reference else tpr
        side.plot(fpr, lift, lw=1.3, color=palette[label])
    full.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
    full.set(xlim=(0, 1), ylim=(0, 1), xlabel="false positive rate", ylabel="true positive rate", title=title)
    full.legend(fontsize=7, loc="lower right")
    if reference:
        side.axhline(0, ls=":", color="grey")
        side.set(
            xlim=(0, 1),
            xlabel="false positive rate",
            ylabel=f"TPR - TPR of {reference.split(' ')[0]}",
            title=f"true positive rate gained over {reference.split(' ')[0]}",
        )
    else:
        top = max(float(np.interp(zoom, fpr, tpr)) for fpr, tpr in curves.values())
        side.plot([0, zoom], [0, zoom], ls=":", color="grey", lw=1)
        side.set(
            xlim=(0, zoom),
            ylim=(0, min(1.0, 1.1 * top)),
            xlabel="false positive rate",
            ylabel="true positive rate",
            title=f"zoom: FPR <= {zoom}",
        )
    for ax in (full, side):
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_calibration(
    points: dict[str, list[dict[str, float]]],
    path: fs.PathLike,
    title: str = "Calibration on the test day (equal-count groups)",
) -> str:
    """Observed CTR against mean predicted CTR per score group; the diagonal is perfect calibration."""
    fig, ax = plt.subplots(figsize=(6, 5.2))
    palette = colors(list(points))
    top = 0.0
    for label, pts in points.items():
        x, y = [p["mean_predicted"] for p in pts], [p["observed"] for p in pts]
        ax.plot(x, y, marker="o", ms=3, lw=1.2, color=palette[label], label=label)
        top = max([top, *x, *y])
    top = min(1.0, top * 1.05) or 1.0
    ax.plot([0, top], [0, top], ls=":", color="grey", lw=1)
    ax.set(xlim=(0, top), ylim=(0, top), xlabel="mean predicted CTR", ylabel="observed CTR", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, path)


HISTORY_PANELS = (("train_loss", "train logloss"), ("val_logloss", "validation logloss"), ("val_auc", "validation AUC"))


def plot_history(histories: dict[str, dict[str, list[float]]], path: fs.PathLike) -> str:
    """Per-epoch curves: ``{label: {"epoch": [...], "train_loss": [...], "val_logloss": [...], "val_auc": [...]}}``."""
    fig, axes = plt.subplots(1, len(HISTORY_PANELS), figsize=(14, 4.2))
    palette = colors(list(histories))
    for ax, (key, name) in zip(axes, HISTORY_PANELS):
        for label, h in histories.items():
            ax.plot(h["epoch"], h[key], marker="o", ms=3, color=palette[label], label=label)
        ax.set(xlabel="epoch", title=name)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7)
    return _save(fig, path)


def plot_bars(
    values: dict[str, float], path: fs.PathLike, ylabel: str, title: str, reference: float | None = None
) -> str:
    """One bar per label with its value printed on top (e.g. training time relative to LR)."""
    fig, ax = plt.subplots(figsize=(max(5.0, 0.8 * len(values) + 2), 4.2))
    labels = list(values)
    bars = ax.bar(labels, [values[k] for k in labels], color=[colors(labels)[k] for k in labels])
    ax.bar_label(bars, fmt="%.2f", fontsize=8)
    if reference is not None:
        ax.axhline(reference, ls=":", color="grey")
    ax.set(ylabel=ylabel, title=title)
    ax.tick_params(axis="x", rotation=30)
    return _save(fig, path)


def plot_sweep(
    title: str, x_label: str, x_values: Sequence[str], series: dict[str, dict[str, list[float]]], path: fs.PathLike
) -> str:
    """A hyper-parameter study as the paper draws it: AUC and logloss panels, one line per model.

    ``series[model]["auc"|"logloss"]`` align with ``x_values`` (NaN where a point is missing).
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    palette = colors(list(series))
    positions = np.arange(len(x_values))
    for ax, key, name in zip(axes, ("auc", "logloss"), ("AUC", "Logloss")):
        for label, values in series.items():
            ax.plot(positions, values[key], marker="o", ms=4, color=palette[label], label=label)
        ax.set(xticks=positions, xlabel=x_label, ylabel=name, title=f"{title}: {name}")
        ax.set_xticklabels(list(x_values))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return _save(fig, path)


DAILY_PANELS = (("auc", "AUC"), ("logloss", "logloss"), ("calibration", "calibration (pred / obs CTR)"))


def plot_daily(days: pd.DataFrame, path: fs.PathLike, highlight: str | None = None) -> str:
    """AUC, logloss and calibration of the scoring runs by date; ``highlight`` marks one date.

    The x axis is a time axis (not one category per run), so a day without a run shows as a gap.
    """
    fig, axes = plt.subplots(1, len(DAILY_PANELS), figsize=(13, 3.8))
    dates = pd.to_datetime(days["date"].astype(str)).tolist()
    marked = pd.Timestamp(highlight) if highlight else None
    for ax, (key, name) in zip(axes, DAILY_PANELS):
        values = days[key].astype(float).tolist()
        ax.plot(dates, values, marker="o", ms=4)
        if marked in dates:
            i = dates.index(marked)
            ax.plot([dates[i]], [values[i]], marker="o", ms=10, mfc="none", mec="red", mew=2)
        if key == "calibration":
            ax.axhline(1.0, ls=":", color="grey")
        ax.set(title=name)
        locator = mdates.AutoDateLocator(maxticks=8)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(alpha=0.3)
    return _save(fig, path)
