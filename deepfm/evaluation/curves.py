"""Curves from a ``BinaryMetrics`` accumulator: ROC and calibration points.

They read its documented state layout (per-logit-bin negatives, then positives, in ascending
score order), so a curve costs nothing beyond the metrics the trainer and scoring already keep.
"""

from __future__ import annotations

import numpy as np

from deepfm.core.metrics import BinaryMetrics

Curve = tuple[np.ndarray, np.ndarray]


def score_bins(metrics: BinaryMetrics) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per logit bin, ascending score: negatives, positives and the probability at the bin centre."""
    n = metrics.n_bins
    state = metrics.state.numpy()
    width = 2 * metrics.logit_range / n
    centres = -metrics.logit_range + (np.arange(n) + 0.5) * width
    return state[:n], state[n : 2 * n], 1.0 / (1.0 + np.exp(-centres))


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
    return [
        {"n": int(n[g]), "mean_predicted": float(predicted[g] / n[g]), "observed": float(clicks[g] / n[g])}
        for g in range(groups)
        if n[g] > 0
    ]
