"""Binary-classification metrics for CTR models: AUC, logloss, calibration, reliability.

``BinaryMetrics`` is a streaming accumulator whose whole state is a fixed-size float64 vector
of counts and sums, so shards merge by adding their ``to_tensor()`` vectors (an allreduce-sum across ranks, or Spark
tasks' accumulators) and ``BinaryMetrics.from_tensor`` of the sum: no gather of predictions.

AUC precision of the binned accumulator: scores are bucketed into ``n_bins`` equal-width bins
of the logit over ``[-logit_range, logit_range]`` (finer in probability where CTR predictions
live: a bin spans ``p(1-p) * 2 * logit_range / n_bins`` in probability, about 1e-5 at
p = 0.03 with the defaults). Pairs within one bin count as ties (1/2), so the AUC is exact
whenever no bin holds a positive and a negative with different scores; otherwise the error is
at most ``auc_max_error`` = sum over bins of ``pos_b * neg_b / (2 P N)``, reported by
``compute()``. ``auc(scores, labels)`` is the exact sort-based AUC for tests and small arrays.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

ArrayLike = torch.Tensor | np.ndarray | list[float]
LOG_CLAMP = 1e-7  # probabilities are clipped to [1e-7, 1 - 1e-7] for logloss (float32 sigmoid saturates)


def finite_or_none(value: float | None) -> float | None:
    """``value`` as a float, or None when missing or not finite (JSON and Delta have no NaN)."""
    return float(value) if value is not None and math.isfinite(value) else None


def _as_float64(values: ArrayLike) -> torch.Tensor:
    return torch.as_tensor(values).detach().to("cpu", torch.float64).flatten()


def _auc_from_counts(negatives: torch.Tensor, positives: torch.Tensor) -> float:
    """AUC from per-score-group label counts, groups in ascending score order, ties as 1/2."""
    n_pos, n_neg = positives.sum(), negatives.sum()
    if n_pos == 0 or n_neg == 0:
        return math.nan
    negatives_below = negatives.cumsum(0) - negatives
    wins = (positives * (negatives_below + 0.5 * negatives)).sum()
    return float(wins / (n_pos * n_neg))


def auc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Exact ROC AUC (Mann-Whitney), tied scores counting 1/2; NaN with a single class."""
    scores, labels = _as_float64(scores), _as_float64(labels)
    _, group = torch.unique(scores, return_inverse=True)
    n_groups = int(group.max()) + 1 if len(group) else 0
    positives = torch.bincount(group, weights=labels, minlength=n_groups)
    negatives = torch.bincount(group, weights=1.0 - labels, minlength=n_groups)
    return _auc_from_counts(negatives, positives)


def calibrating_shift(metrics: BinaryMetrics, steps: int = 30) -> float:
    """The constant ``b`` whose addition to every logit minimises the logloss of ``metrics``'
    predictions: at the optimum the mean prediction equals the observed CTR (the intercept's
    score equation), so ``sigmoid(z + b)`` is calibrated on these rows on average.

    Newton's method on the logit histogram (bin centres; a bin is 0.0005 wide in the logit with
    the default binning), so it needs no second pass over the rows. 0 with a single class.
    """
    negatives, positives = metrics.logit_histogram()
    if positives.sum() == 0 or negatives.sum() == 0:
        return 0.0
    width = 2 * metrics.logit_range / metrics.n_bins
    centres = -metrics.logit_range + width * (torch.arange(metrics.n_bins, dtype=torch.float64) + 0.5)
    counts = positives + negatives
    shift = 0.0
    for _ in range(steps):
        p = torch.sigmoid(centres + shift)
        gradient = float((counts * p - positives).sum())  # d logloss sum / d shift
        curvature = float((counts * p * (1 - p)).sum())
        step = max(-1.0, min(1.0, gradient / curvature))  # bounded: saturated logits curve little
        shift -= step
        if abs(step) < 1e-9:
            break
    return shift


class BinaryMetrics:
    """Streaming, mergeable AUC / logloss / calibration over (probability, 0-1 label) pairs.

    State (all float64, summed when merging): per-logit-bin negatives and positives
    ``[n_bins]`` each; per-reliability-bin (equal width in probability) count, positives and
    summed predictions ``[n_reliability_bins]`` each; and count, positives, summed predictions
    and summed logloss.
    """

    N_SCALARS = 4  # count, positives, prediction sum, logloss sum

    def __init__(self, n_bins: int = 2**16, n_reliability_bins: int = 10, logit_range: float = 16.0) -> None:
        self.n_bins = n_bins
        self.n_reliability_bins = n_reliability_bins
        self.logit_range = logit_range
        self.state = torch.zeros(self.state_size(n_bins, n_reliability_bins), dtype=torch.float64)

    @staticmethod
    def state_size(n_bins: int, n_reliability_bins: int) -> int:
        return 2 * n_bins + 3 * n_reliability_bins + BinaryMetrics.N_SCALARS

    def _views(self) -> tuple[torch.Tensor, ...]:
        """(negatives, positives, rel_count, rel_positives, rel_prediction_sum, scalars) views into ``state``."""
        r = self.n_reliability_bins
        return torch.split(self.state, [self.n_bins, self.n_bins, r, r, r, self.N_SCALARS])

    def update(self, probs: ArrayLike, labels: ArrayLike) -> None:
        """Add a batch: ``probs [B]`` in [0, 1], ``labels [B]`` in {0, 1} (any shape, flattened)."""
        probs, labels = _as_float64(probs), _as_float64(labels)
        if probs.shape != labels.shape:
            raise ValueError(f"probs {tuple(probs.shape)} and labels {tuple(labels.shape)} differ in shape")
        negatives, positives, rel_count, rel_positives, rel_prediction_sum, scalars = self._views()

        clipped = probs.clamp(LOG_CLAMP, 1 - LOG_CLAMP)
        logit = torch.logit(clipped).clamp(-self.logit_range, self.logit_range)
        score_bin = ((logit + self.logit_range) * (self.n_bins / (2 * self.logit_range))).long()
        score_bin = score_bin.clamp(max=self.n_bins - 1)
        positives.index_add_(0, score_bin, labels)
        negatives.index_add_(0, score_bin, 1.0 - labels)

        reliability_bin = (probs * self.n_reliability_bins).long().clamp(0, self.n_reliability_bins - 1)
        rel_count.index_add_(0, reliability_bin, torch.ones_like(probs))
        rel_positives.index_add_(0, reliability_bin, labels)
        rel_prediction_sum.index_add_(0, reliability_bin, probs)

        logloss = -(labels * clipped.log() + (1.0 - labels) * (-clipped).log1p())
        scalars += torch.stack([torch.tensor(float(len(probs))), labels.sum(), probs.sum(), logloss.sum()])

    def logit_histogram(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(negatives, positives) per logit bin, ``[n_bins]`` each (copies)."""
        negatives, positives, *_ = self._views()
        return negatives.clone(), positives.clone()

    def to_tensor(self) -> torch.Tensor:
        """The state as one float64 vector (a copy): allreduce-sum it across workers."""
        return self.state.clone()

    @classmethod
    def from_tensor(
        cls, state: torch.Tensor, n_bins: int = 2**16, n_reliability_bins: int = 10, logit_range: float = 16.0
    ) -> BinaryMetrics:
        """Rebuild from a (possibly summed) ``to_tensor()``; pass the binning it was made with."""
        metrics = cls(n_bins, n_reliability_bins, logit_range)
        if state.shape != metrics.state.shape:
            raise ValueError(f"state has shape {tuple(state.shape)}, this binning needs {tuple(metrics.state.shape)}")
        metrics.state = state.detach().to("cpu", torch.float64).clone()
        return metrics

    def compute(self) -> dict[str, Any]:
        """``auc``, ``auc_max_error``, ``logloss``, ``ctr_observed``, ``ctr_predicted``,
        ``calibration`` (predicted / observed CTR), ``n`` and ``reliability`` (one dict per
        non-empty probability bin: ``lower``, ``upper``, ``n``, ``mean_predicted``, ``observed``).
        """
        negatives, positives, rel_count, rel_positives, rel_prediction_sum, scalars = self._views()
        count, n_positives, prediction_sum, logloss_sum = scalars.tolist()
        n_negatives = count - n_positives
        ctr_observed = n_positives / count if count else math.nan
        ctr_predicted = prediction_sum / count if count else math.nan
        pairs = n_positives * n_negatives
        return {
            "auc": _auc_from_counts(negatives, positives),
            "auc_max_error": float((positives * negatives).sum() / (2 * pairs)) if pairs else math.nan,
            "logloss": logloss_sum / count if count else math.nan,
            "ctr_observed": ctr_observed,
            "ctr_predicted": ctr_predicted,
            "calibration": ctr_predicted / ctr_observed if n_positives else math.nan,
            "n": int(count),
            "reliability": self._reliability(rel_count, rel_positives, rel_prediction_sum),
        }

    def _reliability(
        self, count: torch.Tensor, positives: torch.Tensor, prediction_sum: torch.Tensor
    ) -> list[dict[str, float]]:
        width = 1.0 / self.n_reliability_bins
        return [
            {
                "lower": i * width,
                "upper": (i + 1) * width,
                "n": int(count[i]),
                "mean_predicted": float(prediction_sum[i] / count[i]),
                "observed": float(positives[i] / count[i]),
            }
            for i in range(self.n_reliability_bins)
            if count[i] > 0
        ]
