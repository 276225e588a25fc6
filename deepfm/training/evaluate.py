"""The one way a model is evaluated on a split: its predictions streamed into ``BinaryMetrics``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
from torch import nn

from deepfm.core.metrics import BinaryMetrics
from deepfm.training.feed import Batch


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast: fp32's exponent range, so no loss scaling (and no GradScaler) is needed."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Batch], device: torch.device, amp: bool = False) -> BinaryMetrics:
    """Metrics of ``model``'s predicted CTRs against the labels of ``batches`` (model left in
    eval mode while it runs, then restored). The state merges across shards by summing
    ``to_tensor()`` vectors."""
    was_training = model.training
    model.eval()
    metrics = BinaryMetrics()
    for batch in batches:
        batch = batch.to(device)
        with autocast(device, amp):
            logits = model(batch.cat, batch.num)  # (B,)
        metrics.update(torch.sigmoid(logits.float()).cpu(), batch.label.cpu())
    model.train(was_training)
    return metrics
