"""Static, offline-viewable reports: PNG plots and one HTML page that embeds them by relative path.

Reusable pieces, shared by the model comparison (``deepfm.compare``) and the daily pipeline's
report (``jobs/report.py``):

  - curves from a ``BinaryMetrics`` accumulator: ``roc_curve`` and ``calibration_points``
    (read from its documented state layout: per-logit-bin negatives, then positives, in
    ascending score order), and ``roc_on_grid`` to average ROC curves over seeds;
  - ``bundle_test_metrics``: a model bundle's metrics on a split (the test day);
  - plots: ``plot_roc``, ``plot_calibration``, ``plot_history`` (train/validation per epoch),
    ``plot_bars`` (efficiency), ``plot_sweep`` (hyper-parameter studies), ``plot_daily``;
  - HTML: ``html_table``, ``html_image``, ``write_html``;
  - ``daily_report``: one model's ROC and calibration on its test split, and the scoring
    metrics of every day from the Delta metrics table (``read_metrics_table``).
"""
from __future__ import annotations

import html
import math
import numbers
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from deepfm.data import make_loader  # noqa: E402
from deepfm.metrics import BinaryMetrics  # noqa: E402
from deepfm.models import model_names  # noqa: E402

Curve = tuple[np.ndarray, np.ndarray]
DPI = 110


# ------------------------------------------------------------------ curves from BinaryMetrics


def score_bins(metrics: BinaryMetrics) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per logit bin, ascending score: negatives, positives and the probability at the bin centre."""
    n = metrics.n_bins
    state = metrics.state.numpy()
    width = 2 * metrics.logit_range / n
    centres = -metrics.logit_range + (np.arange(n) + 0.5) * width
    return state[:n], state[n:2 * n], 1.0 / (1.0 + np.exp(-centres))


def roc_curve(metrics: BinaryMetrics) -> Curve:
    """(FPR, TPR) points, lowering the threshold one non-empty bin at a time from (0, 0) to (1, 1).

    Joined by straight lines, the area under them is ``metrics.compute()["auc"]`` (ties count 1/2).
    """
    negatives, positives, _ = score_bins(metrics)
    used = (negatives + positives) > 0
    negatives, positives = negatives[used][::-1], positives[used][::-1]
    fpr = np.concatenate([[0.0], np.cumsum(negatives) / negatives.sum()])
    tpr = np.concatenate([[0.0], np.cumsum(positives) / positives.sum()])
    return fpr, tpr


def roc_on_grid(fpr: np.ndarray, tpr: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """TPR of the piecewise-linear ROC at each FPR of ``grid`` (the top of a vertical step).

    Curves on one grid can be averaged point by point ("vertical averaging", Fawcett 2006).
    """
    j = np.clip(np.searchsorted(fpr, grid, side="right"), 1, len(fpr) - 1)
    x0, x1, y0, y1 = fpr[j - 1], fpr[j], tpr[j - 1], tpr[j]
    span = x1 - x0
    t = np.divide(grid - x0, span, out=np.ones_like(grid, dtype=float), where=span > 0)
    return y0 + np.clip(t, 0.0, 1.0) * (y1 - y0)


def calibration_points(metrics: BinaryMetrics, groups: int = 10) -> list[dict[str, float]]:
    """Reliability points over ``groups`` equal-count score groups (quantiles of the prediction).

    CTR predictions crowd into the lowest equal-width probability bins, so quantile groups of
    the fine logit bins show calibration where the traffic is. ``mean_predicted`` uses each
    logit bin's centre (bins are 2**-11 logit wide by default: far below plotting precision).
    """
    negatives, positives, prob = score_bins(metrics)
    count = negatives + positives
    total = count.sum()
    if total == 0:
        return []
    mid_rank = np.cumsum(count) - count / 2  # a bin joins the group its middle row falls in
    group = np.minimum(mid_rank / total * groups, groups - 1).astype(int)
    n = np.bincount(group, count, minlength=groups)
    clicks = np.bincount(group, positives, minlength=groups)
    predicted = np.bincount(group, count * prob, minlength=groups)
    return [{"n": int(n[g]), "mean_predicted": float(predicted[g] / n[g]), "observed": float(clicks[g] / n[g])}
            for g in range(groups) if n[g] > 0]


@torch.no_grad()
def bundle_test_metrics(model: torch.nn.Module, spec: Any, split: Path, loader: str = "arrow",
                        batch_size: int = 16384) -> BinaryMetrics:
    """``model``'s predictions on every row of the Parquet ``split`` (e.g. ``<data>/test``)."""
    model.eval()
    metrics = BinaryMetrics()
    for batch in make_loader(loader, split, spec, batch_size=batch_size, shuffle=False).epoch(0):
        metrics.update(torch.sigmoid(model(batch.cat, batch.num).float()), batch.label)
    return metrics


# ---------------------------------------------------------------------------------- plots


def colors(labels: Sequence[str]) -> dict[str, Any]:
    """One colour per label; a label starting with a registry model's name gets that model's
    colour (tab10 has one per model), so a model looks the same in every plot."""
    palette, names = plt.get_cmap("tab10").colors, model_names()

    def index(position: int, label: str) -> int:
        head = label.split(" ", 1)[0]
        return names.index(head) if head in names else position

    return {label: palette[index(i, label) % len(palette)] for i, label in enumerate(labels)}


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def plot_roc(curves: dict[str, Curve], path: Path, title: str = "ROC on the test day",
             reference: str | None = None, zoom: float = 0.2) -> Path:
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
        side.set(xlim=(0, 1), xlabel="false positive rate", ylabel=f"TPR - TPR of {reference.split(' ')[0]}",
                 title=f"true positive rate gained over {reference.split(' ')[0]}")
    else:
        top = max(float(np.interp(zoom, fpr, tpr)) for fpr, tpr in curves.values())
        side.plot([0, zoom], [0, zoom], ls=":", color="grey", lw=1)
        side.set(xlim=(0, zoom), ylim=(0, min(1.0, 1.1 * top)), xlabel="false positive rate",
                 ylabel="true positive rate", title=f"zoom: FPR <= {zoom}")
    for ax in (full, side):
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_calibration(points: dict[str, list[dict[str, float]]], path: Path,
                     title: str = "Calibration on the test day (equal-count groups)") -> Path:
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


def plot_history(histories: dict[str, dict[str, list[float]]], path: Path) -> Path:
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


def plot_bars(values: dict[str, float], path: Path, ylabel: str, title: str, reference: float | None = None) -> Path:
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


def plot_sweep(title: str, x_label: str, x_values: Sequence[str], series: dict[str, dict[str, list[float]]],
               path: Path) -> Path:
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


def plot_daily(days: pd.DataFrame, path: Path, highlight: str | None = None) -> Path:
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


# ----------------------------------------------------------------------------------- HTML

Column = tuple[str, str, Callable[[Any], str]]  # key, header, formatter

CSS = """body{font-family:sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}tr.hi td{background:#fff3c4}
img{max-width:100%;border:1px solid #eee;margin:0.5em 0}
.note{background:#f7f7f7;padding:0.8em;border-left:4px solid #888}"""


def fmt(digits: int) -> Callable[[Any], str]:
    """A formatter printing numbers with ``digits`` decimals and missing values as 'n/a'."""
    def format_value(value: Any) -> str:
        if value is None or (isinstance(value, numbers.Real) and math.isnan(value)):
            return "n/a"
        return f"{value:,.{digits}f}" if isinstance(value, numbers.Real) else str(value)
    return format_value


def html_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column],
               highlight: Callable[[dict], bool] = lambda r: False) -> str:
    """Rows as an HTML table, cells escaped and formatted per column; ``highlight`` rows stand out."""
    head = "".join(f"<th>{html.escape(header)}</th>" for _, header, _ in columns)
    body = "".join(
        f"<tr{' class=hi' if highlight(row) else ''}>"
        + "".join(f"<td>{html.escape(render(row.get(key)))}</td>" for key, _, render in columns) + "</tr>"
        for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def html_image(path: Path, page_dir: Path, alt: str) -> str:
    """An ``<img>`` with a path relative to the page, so the folder renders offline anywhere."""
    return f'<img src="{html.escape(path.relative_to(page_dir).as_posix())}" alt="{html.escape(alt)}">'


def write_html(path: Path, title: str, parts: Sequence[str]) -> Path:
    """A self-contained page: ``parts`` are HTML fragments, in order."""
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)
    return path


# --------------------------------------------------------------------------- daily report

METRIC_COLUMNS: list[Column] = [
    ("auc", "AUC", fmt(4)), ("logloss", "logloss", fmt(4)), ("calibration", "calibration", fmt(3)),
]
DAILY_COLUMNS: list[Column] = [
    ("date", "date", str), ("model_name", "model", str), ("model_version", "model version", str),
    ("scored", "scored", fmt(0)), ("rejected", "rejected", fmt(0)), ("mean_ctr", "mean predicted CTR", fmt(4)),
    ("observed_ctr", "observed CTR", fmt(4)), *METRIC_COLUMNS,
]


def read_metrics_table(table: str) -> pd.DataFrame:
    """The scoring metrics Delta table (a path or a metastore name) as pandas; empty if absent."""
    from deepfm.scoring import TableRef
    from deepfm.spark import get_spark

    spark = get_spark("deepfm-report")
    ref = TableRef.of(table)
    if not ref.exists(spark):
        return pd.DataFrame(columns=[key for key, _, _ in DAILY_COLUMNS] + ["scored_at"])
    return spark.sql(f"SELECT * FROM {ref.ident}").toPandas()


def latest_per_day(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per date, the newest scoring run of that date (reruns replace a day), by date."""
    if runs.empty:
        return runs
    runs = runs.assign(date=runs["date"].astype(str)).sort_values(["date", "scored_at"])
    return runs.drop_duplicates("date", keep="last").reset_index(drop=True)


def daily_report(bundle: Any, data: Path, runs: pd.DataFrame, output: Path, date: str | None = None,
                 calibration_groups: int = 10) -> dict[str, Any]:
    """The pipeline's report for one model: its ROC and calibration on ``<data>/test``, and the
    scoring metrics of every day (``runs``: rows of the Delta metrics table) with ``date``
    (default: the newest) highlighted. Returns the summary (``report`` is the HTML path).
    """
    output.mkdir(parents=True, exist_ok=True)
    metrics = bundle_test_metrics(bundle.model, bundle.spec, Path(data) / "test")
    test = metrics.compute()
    label = f"{bundle.name} (AUC {test['auc']:.4f})"
    roc = plot_roc({label: roc_curve(metrics)}, output / "roc.png", title="ROC on the test split")
    calibration = plot_calibration({bundle.name: calibration_points(metrics, calibration_groups)},
                                   output / "calibration.png", title="Calibration on the test split")
    days = latest_per_day(runs)
    date = date or (days["date"].iloc[-1] if len(days) else None)
    parts = [
        f"<p>Model <b>{html.escape(bundle.name)}</b> version {html.escape(str(bundle.version))}, "
        f"test split of <code>{html.escape(str(data))}</code> ({test['n']:,} rows, observed CTR "
        f"{test['ctr_observed']:.4f}, predicted {test['ctr_predicted']:.4f}).</p>",
        html_table([test], METRIC_COLUMNS),
        html_image(roc, output, "ROC curve"), html_image(calibration, output, "calibration plot"),
        "<h2>Scoring metrics by day (Delta metrics table, newest run per day)</h2>",
    ]
    if len(days):
        trend = plot_daily(days, output / "daily_metrics.png", highlight=date)
        rows = days.to_dict("records")[::-1]
        parts += [html_table(rows, DAILY_COLUMNS, highlight=lambda r: r["date"] == date),
                  html_image(trend, output, "metrics by day")]
    else:
        parts.append("<p>No scoring run recorded yet.</p>")
    day = next((r for r in days.to_dict("records") if r["date"] == date), {}) if len(days) else {}
    page = write_html(output / "report.html", f"Daily model report {date or ''}".strip(), parts)
    return {"report": str(page), "date": date, "model": bundle.name, "model_version": bundle.version,
            "test_auc": test["auc"], "test_logloss": test["logloss"], "test_calibration": test["calibration"],
            "day_auc": _finite(day.get("auc")), "day_logloss": _finite(day.get("logloss")), "days": len(days)}


def _finite(value: Any) -> float | None:
    return float(value) if value is not None and np.isfinite(value) else None
