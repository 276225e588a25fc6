"""Report pieces: curves from BinaryMetrics, plots and HTML, the daily model report."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import matplotlib.dates as mdates
import numpy as np
import pandas as pd
import pytest
import torch
from testkit import model_for_spec
from tiny_ctr_data import write_dataset

import deepfm.cli.report as report_job
from deepfm.core.metrics import BinaryMetrics, auc
from deepfm.evaluation import curves, daily_report, html, plots
from deepfm.models.bundle import BundleError, load_bundle, save_bundle
from deepfm.training.evaluate import evaluate
from deepfm.training.feed import make_loader


def _validation_metrics(bundle, data: Path) -> BinaryMetrics:
    loader = make_loader("arrow", data / "validation", bundle.spec, 256, shuffle=False)
    return evaluate(bundle.model, loader.epoch(0), torch.device("cpu"))


def _scores(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Calibrated scores: labels drawn with the predicted probability."""
    rng = np.random.default_rng(seed)
    probs = 1 / (1 + np.exp(-rng.normal(-1.0, 1.2, n)))
    return probs, (rng.random(n) < probs).astype(float)


def _metrics(probs: np.ndarray, labels: np.ndarray) -> BinaryMetrics:
    metrics = BinaryMetrics()
    metrics.update(probs, labels)
    return metrics


def test_roc_curve_area_is_the_auc():
    probs, labels = _scores()
    metrics = _metrics(probs, labels)
    fpr, tpr = curves.roc_curve(metrics)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    area = np.trapz(tpr, fpr)
    assert area == pytest.approx(metrics.compute()["auc"], abs=1e-12)
    assert area == pytest.approx(auc(probs, labels), abs=1e-4)
    grid = np.linspace(0, 1, 2001)
    on_grid = curves.roc_on_grid(fpr, tpr, grid)
    assert on_grid[-1] == 1.0 and np.all(np.diff(on_grid) >= 0)
    assert np.trapz(on_grid, grid) == pytest.approx(area, abs=2e-3)


def test_roc_on_grid_takes_the_top_of_vertical_steps():
    fpr, tpr = np.array([0.0, 0.0, 0.5, 0.5, 1.0]), np.array([0.0, 0.4, 0.6, 0.9, 1.0])
    on_grid = curves.roc_on_grid(fpr, tpr, np.array([0.0, 0.25, 0.5, 0.75]))
    assert on_grid.tolist() == pytest.approx([0.4, 0.5, 0.9, 0.95])


def test_calibration_points_are_equal_count_groups_near_the_diagonal():
    probs, labels = _scores(20000)
    points = curves.calibration_points(_metrics(probs, labels), groups=5)
    assert len(points) == 5 and sum(p["n"] for p in points) == 20000
    assert all(abs(p["n"] - 4000) < 50 for p in points)
    predicted = [p["mean_predicted"] for p in points]
    assert predicted == sorted(predicted)
    assert all(abs(p["observed"] - p["mean_predicted"]) < 0.03 for p in points)
    assert curves.calibration_points(BinaryMetrics()) == []


def test_html_table_escapes_formats_and_highlights(tmp_path):
    rows = [{"model": "<lr>", "auc": 0.71234, "n": np.int64(1234)}, {"model": "deepfm", "auc": float("nan"), "n": 5}]
    table = html.html_table(
        rows,
        [("model", "model", str), ("auc", "AUC", html.fmt(3)), ("n", "n", html.fmt(0))],
        highlight=lambda r: r["model"] == "deepfm",
    )
    assert "&lt;lr&gt;" in table and "0.712" in table and "1,234" in table and "n/a" in table
    assert table.count("class=hi") == 1
    png = plots.plot_bars({"lr": 1.0, "deepfm": 2.5}, tmp_path / "img" / "bars.png", "x lr", "time")
    page = html.write_html(tmp_path / "page.html", "T", [table, html.html_image(png, tmp_path, "bars")])
    assert 'src="img/bars.png"' in Path(page).read_text() and Path(png).read_bytes()[:4] == b"\x89PNG"


def test_a_model_keeps_its_colour_across_plots():
    one, other = plots.colors(["lr", "deepfm (AUC 0.7)"]), plots.colors(["deepfm", "fm", "day"])
    assert one["deepfm (AUC 0.7)"] == other["deepfm"] and one["lr"] != other["fm"]


def test_latest_per_day_keeps_the_newest_rerun():
    t = pd.Timestamp("2024-01-02 10:00")
    runs = pd.DataFrame(
        {
            "date": [dt.date(2024, 1, 2), dt.date(2024, 1, 1), dt.date(2024, 1, 2)],
            "scored_at": [t, t, t + pd.Timedelta(hours=1)],
            "auc": [0.1, 0.2, None],
        }
    )
    days = daily_report.latest_per_day(runs)  # the newest run whole, even where it lacks a value
    assert days["date"].tolist() == ["2024-01-01", "2024-01-02"] and days["auc"].tolist()[0] == 0.2
    assert np.isnan(days["auc"].tolist()[1])


def test_daily_plot_puts_runs_on_a_time_axis_so_a_missing_day_is_a_gap(monkeypatch, tmp_path):
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig) or path)
    days = pd.DataFrame(
        {
            "date": ["2024-01-01", "2024-01-02", "2024-01-05"],
            "auc": [0.70, 0.71, 0.69],
            "logloss": [0.5, 0.5, 0.51],
            "calibration": [1.0, 0.98, 1.02],
        }
    )
    plots.plot_daily(days, tmp_path / "daily.png", highlight="2024-01-05")
    for ax in figures[0].axes:
        line, marker = ax.lines[:2]
        plotted = line.get_xydata()[:, 0]  # x in axis units: day numbers on a time axis, 0, 1, 2 on a category one
        assert np.diff(plotted).tolist() == [1.0, 3.0]
        assert marker.get_xydata()[:, 0].tolist() == [mdates.date2num(pd.Timestamp("2024-01-05"))]


@pytest.fixture(scope="module")
def bundle_and_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("daily")
    spec = write_dataset(root / "data", train_rows=600, test_rows=900, row_group_rows=100)
    torch.manual_seed(0)
    model = model_for_spec("lr", spec)
    save_bundle(root / "bundle", model, spec, extra={"data": str(root / "data")})
    validation = _validation_metrics(load_bundle(root / "bundle"), root / "data")  # what the trainer saves
    save_bundle(root / "bundle", model, spec, extra={"data": str(root / "data")}, validation=validation)
    return root / "bundle", root / "data"


def _runs(aucs: list[float]) -> pd.DataFrame:
    n = len(aucs)
    return pd.DataFrame(
        {
            "date": [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in range(n)],
            "scored_at": pd.date_range("2024-01-02", periods=n),
            "model_name": ["lr"] * n,
            "model_version": ["v1"] * n,
            "scored": [900] * n,
            "rejected": [3] * n,
            "mean_ctr": [0.3] * n,
            "observed_ctr": [0.31] * n,
            "auc": aucs,
            "logloss": [0.6] * n,
            "calibration": [0.97] * n,
        }
    )


def test_daily_report_shows_the_model_and_every_day(bundle_and_data, tmp_path):
    bundle_dir, data = bundle_and_data
    bundle = load_bundle(bundle_dir)
    # The report's folder may be any URI, as the bundle's may.
    summary = daily_report.daily_report(bundle, _runs([0.71, 0.72, 0.735]), f"file://{tmp_path}/a", date="2024-01-02")
    assert summary["report"] == f"file://{tmp_path}/a/report.html"
    page = (tmp_path / "a" / "report.html").read_text()
    for png in ("roc.png", "calibration.png", "daily_metrics.png"):
        assert f'src="{png}"' in page and (tmp_path / "a" / png).stat().st_size > 1000
    assert all(d in page for d in ("2024-01-01", "2024-01-02", "2024-01-03")) and "0.7350" in page
    assert summary["date"] == "2024-01-02" and summary["day_auc"] == 0.72 and summary["days"] == 3
    expected = _validation_metrics(bundle, data).compute()  # the saved validation, not scored again
    assert summary["validation_auc"] == pytest.approx(expected["auc"]) and f"{expected['auc']:.4f}" in page
    # The plots are drawn from the inputs: other metrics, another picture.
    daily_report.daily_report(bundle, _runs([0.6, 0.65, 0.7]), str(tmp_path / "b"))
    assert (tmp_path / "a" / "daily_metrics.png").read_bytes() != (tmp_path / "b" / "daily_metrics.png").read_bytes()
    empty = daily_report.daily_report(bundle, _runs([])[:0], str(tmp_path / "c"))
    assert empty["days"] == 0 and "No scoring run recorded yet" in Path(empty["report"]).read_text()
    save_bundle(tmp_path / "old", bundle.model, bundle.spec)  # a bundle without its validation
    with pytest.raises(BundleError, match="no validation metrics"):
        daily_report.daily_report(load_bundle(tmp_path / "old"), _runs([0.7]), str(tmp_path / "d"))


@pytest.mark.slow
def test_report_job_reads_the_delta_metrics_table(bundle_and_data, tmp_path, spark, capsys):
    """``deepfm report`` end to end: Spark reads the metrics table ``deepfm score`` appends to
    (in this process, so the job reuses the test session instead of starting a second JVM)."""
    from deepfm.serving.delta import TableRef, append_record, ensure_table
    from deepfm.serving.score import METRICS_SCHEMA

    bundle_dir, _ = bundle_and_data
    table = tmp_path / "metrics"
    ref = TableRef.of(str(table))
    ensure_table(spark, ref, METRICS_SCHEMA, [])
    for record in _runs([0.7, 0.75]).to_dict("records"):
        append_record(
            spark,
            ref,
            METRICS_SCHEMA,
            {
                **record,
                "scored_at": record["scored_at"].to_pydatetime(),
                "run_id": "r",
                "spec_version": "s",
                "table_version": 1,
                "rows_in": 903,
                "labeled": 900,
            },
        )
    assert (
        report_job.main(["--bundle", str(bundle_dir), "--metrics-table", str(table), "--output", str(tmp_path / "out")])
        == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["date"] == "2024-01-02" and summary["day_auc"] == 0.75 and summary["days"] == 2
    assert Path(summary["report"]).exists() and (tmp_path / "out" / "daily_metrics.png").exists()
    assert json.loads((tmp_path / "out" / "summary.json").read_text()) == summary
