"""Optimizers that keep the per-batch cost of the embedding tables proportional to the batch.

The categorical tables (``nn.Embedding(sparse=True)``) get sparse gradients and a
``torch.optim.SparseAdam``, which updates only the rows a batch touched (lazy Adam); all other
parameters (MLP, numeric-field vectors, biases) get a dense ``torch.optim.Adam``. A dense Adam
over a multi-million-row table would read and write every row at every step.

Horovod: wrap each optimizer separately, e.g.
``opts = opts.wrap(lambda opt, named: hvd.DistributedOptimizer(opt, named_parameters=named))``.
Horovod reduces sparse gradients by allgather of their (index, value) pairs, which is what we
want here: the traffic grows with the batch, not the table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

NamedParameters = list[tuple[str, nn.Parameter]]


class Optimizers:
    """Several plain torch optimizers driven as one (``zero_grad``/``step``/state dicts)."""

    def __init__(self, optimizers: list[torch.optim.Optimizer], named_parameters: list[NamedParameters]) -> None:
        if len(optimizers) != len(named_parameters):
            raise ValueError("one named-parameter list per optimizer is needed")
        self.optimizers = optimizers
        self.named_parameters = named_parameters

    def __iter__(self) -> Iterator[torch.optim.Optimizer]:
        return iter(self.optimizers)

    def __len__(self) -> int:
        return len(self.optimizers)

    def zero_grad(self) -> None:
        # No arguments: Horovod's DistributedOptimizer.zero_grad takes none (torch's default
        # already sets gradients to None, which the sparse tables need anyway).
        for optimizer in self.optimizers:
            optimizer.zero_grad()

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [optimizer.state_dict() for optimizer in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        states = state["optimizers"]
        if len(states) != len(self.optimizers):
            raise ValueError(f"state holds {len(states)} optimizers, this object has {len(self.optimizers)}")
        for optimizer, optimizer_state in zip(self.optimizers, states):
            optimizer.load_state_dict(optimizer_state)

    def wrap(self, wrapper: Callable[[torch.optim.Optimizer, NamedParameters], torch.optim.Optimizer]) -> Optimizers:
        """A new ``Optimizers`` with ``wrapper(optimizer, its named parameters)`` applied to each."""
        return Optimizers(
            [wrapper(opt, named) for opt, named in zip(self.optimizers, self.named_parameters)],
            self.named_parameters,
        )


def split_sparse_parameters(model: nn.Module) -> tuple[NamedParameters, NamedParameters]:
    """``(sparse, dense)`` named parameters: weights of ``nn.Embedding(sparse=True)`` vs the rest."""
    sparse_ids = {id(module.weight) for module in model.modules() if isinstance(module, nn.Embedding) and module.sparse}
    sparse: NamedParameters = []
    dense: NamedParameters = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (sparse if id(param) in sparse_ids else dense).append((name, param))
    return sparse, dense


def make_optimizers(
    model: nn.Module, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
) -> Optimizers:
    """SparseAdam for the sparse embedding tables, Adam for everything else (same ``lr``/``betas``)."""
    sparse, dense = split_sparse_parameters(model)
    optimizers: list[torch.optim.Optimizer] = []
    groups: list[NamedParameters] = []
    if sparse:
        optimizers.append(torch.optim.SparseAdam([p for _, p in sparse], lr=lr, betas=betas, eps=eps))
        groups.append(sparse)
    if dense:
        optimizers.append(torch.optim.Adam([p for _, p in dense], lr=lr, betas=betas, eps=eps))
        groups.append(dense)
    return Optimizers(optimizers, groups)
