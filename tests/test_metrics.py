"""Exact and streaming AUC, logloss, calibration; merging across shards."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from deepfm.core.metrics import BinaryMetrics, auc, calibrating_shift, finite_or_none


def test_auc_hand_computed_with_a_tie():
    # positives 0.35, 0.8, 0.4 vs negatives 0.1, 0.4: wins 1+0, 1+1, 1+0.5 (tie) -> 4.5 / 6
    assert auc([0.1, 0.4, 0.35, 0.8, 0.4], [0, 0, 1, 1, 1]) == pytest.approx(0.75)


def test_auc_matches_sklearn_with_many_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 20, 3000) / 20.0  # 20 distinct values: heavy ties
    labels = (rng.random(3000) < 0.2 + 0.5 * scores).astype(float)
    assert auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auc_of_a_single_class_is_nan():
    assert math.isnan(auc([0.1, 0.2], [1, 1]))


def random_predictions(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    probs = torch.sigmoid(torch.randn(n, generator=g) * 1.5 - 1.0)
    labels = torch.bernoulli(probs, generator=g)
    return probs, labels


def test_streaming_metrics_match_exact_ones():
    probs, labels = random_predictions(20_000, seed=1)
    metrics = BinaryMetrics()
    for p, y in zip(probs.split(3000), labels.split(3000)):
        metrics.update(p, y)
    result = metrics.compute()
    assert result["n"] == 20_000
    assert abs(result["auc"] - roc_auc_score(labels.numpy(), probs.numpy())) <= result["auc_max_error"] + 1e-12
    assert result["auc_max_error"] < 1e-4
    assert result["logloss"] == pytest.approx(log_loss(labels.numpy(), probs.double().numpy()), rel=1e-9)
    assert result["ctr_observed"] == pytest.approx(labels.mean().item())
    assert result["ctr_predicted"] == pytest.approx(probs.double().mean().item())
    assert result["calibration"] == pytest.approx(result["ctr_predicted"] / result["ctr_observed"])


def test_binned_auc_is_exact_when_each_bin_holds_one_score_and_ties_count_half():
    probs = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.4])
    metrics = BinaryMetrics()
    metrics.update(probs, torch.tensor([0, 0, 1, 1, 1]))
    result = metrics.compute()
    assert result["auc"] == pytest.approx(0.75)


def test_shards_merge_by_summing_their_state_vectors():
    probs, labels = random_predictions(5000, seed=2)
    whole = BinaryMetrics()
    whole.update(probs, labels)
    shards = [BinaryMetrics() for _ in range(3)]
    for shard, p, y in zip(shards, probs.chunk(3), labels.chunk(3)):
        shard.update(p, y)

    allreduced = BinaryMetrics.from_tensor(sum(s.to_tensor() for s in shards))  # what an allreduce-sum does
    combined = allreduced.compute()
    for key, value in whole.compute().items():
        assert combined[key] == pytest.approx(value, rel=1e-12), key


def test_reliability_bins_report_predicted_and_observed_rates():
    metrics = BinaryMetrics(n_reliability_bins=4)
    metrics.update([0.1, 0.2, 0.3, 0.9, 0.95], [0, 1, 1, 1, 0])
    bins = metrics.compute()["reliability"]
    assert [(b["lower"], b["upper"], b["n"]) for b in bins] == [(0.0, 0.25, 2), (0.25, 0.5, 1), (0.75, 1.0, 2)]
    assert bins[0]["mean_predicted"] == pytest.approx(0.15) and bins[0]["observed"] == pytest.approx(0.5)
    assert bins[2]["mean_predicted"] == pytest.approx(0.925) and bins[2]["observed"] == pytest.approx(0.5)


def test_extreme_probabilities_stay_finite():
    metrics = BinaryMetrics()
    metrics.update([0.0, 1.0, 1.0], [0, 1, 0])
    result = metrics.compute()
    assert math.isfinite(result["logloss"]) and result["auc"] == pytest.approx(0.75)


def test_incompatible_binning_is_rejected():
    with pytest.raises(ValueError, match="this binning needs"):
        BinaryMetrics.from_tensor(BinaryMetrics(n_bins=16).to_tensor())
    with pytest.raises(ValueError, match="differ in shape"):
        BinaryMetrics().update([0.5, 0.5], [1])


def test_finite_or_none_drops_what_json_and_delta_cannot_hold():
    assert finite_or_none(0.5) == 0.5 and finite_or_none(None) is None
    assert finite_or_none(math.nan) is None and finite_or_none(math.inf) is None


def _metrics_of(logits: torch.Tensor, labels: torch.Tensor) -> BinaryMetrics:
    metrics = BinaryMetrics()
    metrics.update(torch.sigmoid(logits), labels)
    return metrics


def test_the_calibrating_shift_is_the_logloss_minimiser_and_matches_the_mean_to_the_ctr():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(50_000, generator=g, dtype=torch.float64) * 1.2 - 1.5
    labels = torch.bernoulli(torch.sigmoid(logits - 0.6), generator=g)  # the model over-predicts
    before = _metrics_of(logits, labels).compute()
    shift = calibrating_shift(_metrics_of(logits, labels))
    after = _metrics_of(logits + shift, labels).compute()
    assert before["calibration"] > 1.3 and shift == pytest.approx(-0.6, abs=0.05)
    assert after["calibration"] == pytest.approx(1.0, abs=1e-3)  # bin centres: ~1e-4 off
    # the exact minimiser of the logloss over a grid of shifts around it
    grid = torch.linspace(shift - 0.01, shift + 0.01, 41, dtype=torch.float64)
    losses = [log_loss(labels.numpy(), torch.sigmoid(logits + b).numpy()) for b in grid]
    assert float(grid[int(np.argmin(losses))]) == pytest.approx(shift, abs=1e-3)
    assert after["logloss"] < before["logloss"] and after["auc"] == pytest.approx(before["auc"], abs=1e-4)


def test_a_calibrated_model_needs_no_shift_and_a_single_class_gets_none():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(50_000, generator=g, dtype=torch.float64) - 2.0
    labels = torch.bernoulli(torch.sigmoid(logits), generator=g)
    assert calibrating_shift(_metrics_of(logits, labels)) == pytest.approx(0.0, abs=0.03)
    assert calibrating_shift(_metrics_of(logits, torch.zeros_like(logits))) == 0.0
