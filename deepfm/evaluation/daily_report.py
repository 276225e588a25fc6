"""The daily pipeline's report for one model: its ROC and calibration on the validation that
selected it (the state the trainer saved in the bundle: nothing is scored again), and the scoring
metrics of every day from the Delta metrics table, as one offline HTML page with its PNGs."""

from __future__ import annotations

import html
from typing import Any

import pandas as pd
from pyspark.sql import SparkSession

from deepfm.core import fs
from deepfm.core.metrics import finite_or_none
from deepfm.evaluation.curves import calibration_points, roc_curve
from deepfm.evaluation.html import Column, fmt, html_image, html_table, write_html
from deepfm.evaluation.plots import plot_calibration, plot_daily, plot_roc
from deepfm.models.bundle import Bundle, BundleError
from deepfm.serving.delta import TableRef

METRIC_COLUMNS: list[Column] = [
    ("auc", "AUC", fmt(4)),
    ("logloss", "logloss", fmt(4)),
    ("calibration", "calibration", fmt(3)),
]
DAILY_COLUMNS: list[Column] = [
    ("date", "date", str),
    ("model_name", "model", str),
    ("model_version", "model version", str),
    ("scored", "scored", fmt(0)),
    ("rejected", "rejected", fmt(0)),
    ("mean_ctr", "mean predicted CTR", fmt(4)),
    ("observed_ctr", "observed CTR", fmt(4)),
    *METRIC_COLUMNS,
]


def read_metrics_table(spark: SparkSession, table: str) -> pd.DataFrame:
    """The scoring metrics Delta table (a path or a metastore name) as pandas; empty if absent."""
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


def daily_report(
    bundle: Bundle, runs: pd.DataFrame, output: str, date: str | None = None, calibration_groups: int = 10
) -> dict[str, Any]:
    """The report of ``bundle`` in folder ``output`` (any URI): ROC and calibration of its
    validation, and the scoring metrics of every day (``runs``: rows of the Delta metrics table)
    with ``date`` (default: the newest) highlighted. Returns the summary (``report`` is the HTML
    page's URI)."""
    if bundle.validation is None:
        raise BundleError(f"bundle {bundle.name} {bundle.version} holds no validation metrics: train it again")
    metrics = bundle.validation
    selected_on = metrics.compute()
    data = bundle.meta.get("extra", {}).get("data", "?")
    label = f"{bundle.name} (AUC {selected_on['auc']:.4f})"
    roc = plot_roc({label: roc_curve(metrics)}, fs.join(output, "roc.png"), title="ROC on the validation split")
    calibration = plot_calibration(
        {bundle.name: calibration_points(metrics, calibration_groups)},
        fs.join(output, "calibration.png"),
        title="Calibration on the validation split",
    )
    days = latest_per_day(runs)
    date = date or (days["date"].iloc[-1] if len(days) else None)
    parts = [
        f"<p>Model <b>{html.escape(bundle.name)}</b> version {html.escape(str(bundle.version))}, on the split it "
        f"was selected on (the validation split of <code>{html.escape(str(data))}</code>: {selected_on['n']:,} rows, "
        f"observed CTR {selected_on['ctr_observed']:.4f}, predicted {selected_on['ctr_predicted']:.4f}).</p>",
        html_table([selected_on], METRIC_COLUMNS),
        html_image(roc, output, "ROC curve"),
        html_image(calibration, output, "calibration plot"),
        "<h2>Scoring metrics by day (Delta metrics table, newest run per day)</h2>",
    ]
    if len(days):
        trend = plot_daily(days, fs.join(output, "daily_metrics.png"), highlight=date)
        rows = days.to_dict("records")[::-1]
        parts += [
            html_table(rows, DAILY_COLUMNS, highlight=lambda r: r["date"] == date),
            html_image(trend, output, "metrics by day"),
        ]
    else:
        parts.append("<p>No scoring run recorded yet.</p>")
    day: dict[str, Any] = next((r for r in days.to_dict("records") if r["date"] == date), {}) if len(days) else {}
    page = write_html(fs.join(output, "report.html"), f"Daily model report {date or ''}".strip(), parts)
    return {
        "report": page,
        "date": date,
        "model": bundle.name,
        "model_version": bundle.version,
        "validation_auc": selected_on["auc"],
        "validation_logloss": selected_on["logloss"],
        "validation_calibration": selected_on["calibration"],
        "day_auc": finite_or_none(day.get("auc")),
        "day_logloss": finite_or_none(day.get("logloss")),
        "days": len(days),
    }
