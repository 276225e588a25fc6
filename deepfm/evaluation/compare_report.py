"""The comparison's report: table.csv, the PNGs and report.html, drawn from results.json alone."""

from __future__ import annotations

import html
from typing import Any

import numpy as np
import pandas as pd

from deepfm.core import fs
from deepfm.evaluation import plots
from deepfm.evaluation.aggregate import (
    closing_note,
    mean_calibration,
    mean_history,
    paired,
    study_series,
    summarize,
)
from deepfm.evaluation.html import Column, fmt, html_image, html_table, write_html

TABLE_COLUMNS: list[Column] = [
    ("rank", "rank", str),
    ("model", "model", str),
    ("runs", "seeds", str),
    ("auc", "test AUC (mean ± std)", str),
    ("logloss", "test logloss (mean ± std)", str),
    ("val_auc_mean", "validation AUC", fmt(4)),
    ("auc_gain_pct", "AUC vs LR (%)", fmt(2)),
    ("logloss_gain_pct", "logloss vs LR (% lower)", fmt(2)),
    ("calibration", "calibration (pred/obs)", fmt(3)),
    ("time_vs_baseline", "time/epoch vs LR", fmt(2)),
    ("train_s_per_epoch", "s/epoch", fmt(1)),
    ("epochs_run", "epochs", fmt(1)),
    ("params", "parameters", fmt(0)),
]


def _display(row: dict[str, Any]) -> dict[str, Any]:
    return {
        **row,
        "auc": f"{row['auc_mean']:.4f} ± {row['auc_std']:.4f}",
        "logloss": f"{row['logloss_mean']:.4f} ± {row['logloss_std']:.4f}",
    }


def render(results: dict[str, Any], output: str) -> dict[str, Any]:
    """table.csv, the PNGs and report.html in folder ``output`` (any URI), all computed from
    ``results`` (results.json)."""
    s = results["settings"]
    rows = summarize(results["runs"], s["baseline"])
    fs.put_text(fs.join(output, "table.csv"), pd.DataFrame(rows).to_csv(index=False))
    by_model = {r["model"]: [x for x in results["runs"] if x["model"] == r["model"]] for r in rows}
    fpr = np.asarray(results["roc_fpr"])
    curves = {
        f"{r['model']} (AUC {r['auc_mean']:.4f})": (fpr, np.mean([x["roc_tpr"] for x in by_model[r["model"]]], axis=0))
        for r in rows
    }
    reference = next((label for label in curves if label.split(" ")[0] == s["baseline"]), None)
    images = [
        (
            "ROC curves of all models on the test day (averaged over seeds)",
            plots.plot_roc(curves, fs.join(output, "roc.png"), reference=reference),
        ),
        (
            "Calibration on the test day (equal-count score groups, averaged over seeds)",
            plots.plot_calibration(
                {m: mean_calibration(rs) for m, rs in by_model.items()}, fs.join(output, "calibration.png")
            ),
        ),
        (
            "Train and validation curves per epoch (mean over seeds)",
            plots.plot_history({m: mean_history(rs) for m, rs in by_model.items()}, fs.join(output, "history.png")),
        ),
        _efficiency(rows, s["baseline"], output),
    ]
    for name, entry in results.get("studies", {}).items():
        title = f"Figure {entry['figure']}: {name}"
        images.append(
            (
                title,
                plots.plot_sweep(
                    title,
                    entry["x_label"],
                    [str(v) for v in entry["values"]],
                    study_series(entry),
                    fs.join(output, f"study_{name}.png"),
                ),
            )
        )
    note = closing_note(rows, results)
    pairs = paired(results["runs"])
    parts = [
        _setup(results),
        html_table([_display(r) for r in rows], TABLE_COLUMNS, highlight=lambda r: r["model"] == "deepfm"),
        READING,
        *_paired_table(pairs),
        *_ceilings(results.get("ceilings")),
        *(f"<h2>{html.escape(title)}</h2>{html_image(path, output, title)}" for title, path in images),
        f"<h2>Closing note</h2><p class=note>{html.escape(note)}"
        + (f"<br>{html.escape(s['note'])}" if s.get("note") else "")
        + "</p>",
    ]
    page = write_html(fs.join(output, "report.html"), "Model comparison (DeepFM paper, Table 2)", parts)
    ranking = [r["model"] for r in sorted(rows, key=lambda r: r["rank"])]
    return {
        "report": str(page),
        "results": fs.join(output, "results.json"),
        "table": fs.join(output, "table.csv"),
        "ranking": ranking,
        "auc": {r["model"]: round(r["auc_mean"], 5) for r in rows},
        "paired": pairs,
        "note": note,
    }


READING = """<ul>
<li>test AUC and logloss: each run's bundle, selected on the validation split (early stopping, best
epoch), scored on the test split no training opened; mean ± sample std over seeds. Validation AUC:
the selecting validation's, for comparison (it is optimistic: the selection saw it).</li>
<li>AUC vs LR: relative change of the mean AUC; logloss vs LR: relative reduction of the mean logloss.</li>
<li>calibration: mean predicted CTR / observed CTR on the test day (1 is calibrated).</li>
<li>time/epoch vs LR (the paper's Figure 6): training seconds per epoch (reading + steps, validation
excluded; FNN's FM pre-training included) relative to LR's, wall-clock on the machine named above.</li>
</ul>"""


PAIRED_COLUMNS: list[Column] = [
    ("versus", "DeepFM against", str),
    ("seeds", "seeds", str),
    ("wins", "seeds DeepFM higher", str),
    ("auc_diff_mean", "test AUC difference (mean)", fmt(4)),
    ("auc_diff_std", "std", fmt(4)),
    ("auc_diff_min", "smallest", fmt(4)),
    ("per_seed", "seed: difference", str),
]


def _paired_table(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    return [
        "<h2>DeepFM against its baselines, seed by seed</h2>",
        "<p>DeepFM's test AUC minus the other model's in the same seed (same data order).</p>",
        html_table(rows, PAIRED_COLUMNS),
    ]


CEILING_COLUMNS: list[Column] = [("name", "reference", str), ("auc", "AUC", fmt(4)), ("logloss", "logloss", fmt(4))]


def _ceilings(ceilings: dict[str, Any] | None) -> list[str]:
    """The generator's reference ceilings on the test day, when the logs were generated."""
    if not ceilings:
        return []
    rows = [{"name": name, **values} for name, values in ceilings["values"].items()]
    return [
        "<h2>What the data holds (generated logs)</h2>",
        f"<p>Ceilings on the test day {html.escape(ceilings['test_day'])}: the true click probability, and "
        f"the true probability without the effects of values seen fewer than {ceilings['min_count']} times "
        "on the training days, up to order 1, 2 or all orders. No model reaches them on small data; the "
        "gap is what more data, or a better model, could still win.</p>",
        html_table(rows, CEILING_COLUMNS),
    ]


def _setup(results: dict[str, Any]) -> str:
    s, data, m = results["settings"], results["data"], results.get("machine", {})
    return (
        f"<p>Data <code>{html.escape(data['path'])}</code>: {data['train_rows']:,} training rows, "
        f"{data.get('validation_rows', 0):,} validation rows (model selection), {data['test_rows']:,} test rows "
        "(the test day, opened only to score each run's selected bundle). Every model trained by the production "
        f"trainer with the paper's settings (deepfm/conf/models.yaml) and the same training settings; seeds "
        f"{s['seeds']} "
        f"(a seed fixes the data order for every model), at most {s['epochs']} epoch(s) with early stopping, "
        f"{s['np']} rank(s) per training. Machine: {m.get('cpus', '?')} CPUs, CUDA {m.get('cuda', '?')}, "
        f"1-minute load average {m.get('load_average_1m', '?')} when the comparison ended.</p>"
    )


def _efficiency(rows: list[dict[str, Any]], baseline: str, output: str) -> tuple[str, str]:
    """Figure 6: training time per epoch relative to the baseline (absolute seconds without one)."""
    relative = rows[0]["time_vs_baseline"] is not None
    key, unit = ("time_vs_baseline", f"x {baseline}") if relative else ("train_s_per_epoch", "seconds")
    title = f"Training time per epoch ({unit})"
    return title, plots.plot_bars(
        {r["model"]: r[key] for r in rows},
        fs.join(output, "efficiency.png"),
        unit,
        title,
        reference=1.0 if relative else None,
    )
