"""Optimizers that keep the per-batch cost of the embedding tables proportional to the batch.

The categorical tables (``nn.Embedding(sparse=True)``) get sparse gradients and a
``torch.optim.SparseAdam``, which updates only the rows a batch touched (lazy Adam); all other
parameters (MLP, numeric-field vectors, biases) get a dense ``torch.optim.Adam``. A dense Adam
over a multi-million-row table would read and write every row at every step.

Data-parallel ranks average the gradients in ``step()``
(``deepfm.training.collectives.Collectives.distributed``: Horovod wraps each optimizer separately
through ``wrap``); sparse gradients travel as the allgather of their (index, value) pairs, which
is what we want here: the traffic grows with the batch, not the table.

Regularisation of the tables that acts under Adam: ``row_decay`` shrinks the rows a step touched
by ``lr * row_decay`` after the step (decoupled weight decay, as AdamW, applied lazily like
SparseAdam itself). Across ranks the gradient seen after ``step`` is the allgathered one, so
every rank decays the same rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

NamedParameters = list[tuple[str, nn.Parameter]]


class Optimizers:
    """Several plain torch optimizers driven as one (``zero_grad``/``step``/state dicts).

    ``row_decay``: decoupled weight decay of the touched rows of sparse parameters (see above).
    A parameter group's ``lr_scale`` (1 when absent) makes its step size that multiple of the one
    base step size (``lr``, ``set_lr``).
    """

    def __init__(
        self,
        optimizers: list[torch.optim.Optimizer],
        named_parameters: list[NamedParameters],
        row_decay: float = 0.0,
    ) -> None:
        if len(optimizers) != len(named_parameters):
            raise ValueError("one named-parameter list per optimizer is needed")
        self.optimizers = optimizers
        self.named_parameters = named_parameters
        self.row_decay = row_decay

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
        if self.row_decay:
            self._decay_touched_rows()

    @property
    def lr(self) -> float:
        """The base step size (each parameter group steps by it times its ``lr_scale``)."""
        group = self.optimizers[0].param_groups[0]
        return float(group["lr"]) / group.get("lr_scale", 1.0)

    def set_lr(self, lr: float) -> None:
        """A new base step size, each parameter group keeping its scale (the plateau schedule lowers it)."""
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)

    @torch.no_grad()
    def _decay_touched_rows(self) -> None:
        for optimizer in self.optimizers:
            for group in optimizer.param_groups:
                shrink = 1.0 - group["lr"] * self.row_decay
                for param in group["params"]:
                    if param.grad is not None and param.grad.is_sparse:
                        rows = param.grad.coalesce().indices()[0]
                        param.index_copy_(0, rows, param.index_select(0, rows) * shrink)

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
            self.row_decay,
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
    model: nn.Module,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    row_decay: float = 0.0,
    sparse_lr_scale: float = 1.0,
) -> Optimizers:
    """SparseAdam for the sparse embedding tables (step size ``lr * sparse_lr_scale``), Adam for
    everything else (``lr``), same ``betas``; ``row_decay``: decoupled weight decay of the tables'
    touched rows."""
    sparse, dense = split_sparse_parameters(model)
    optimizers: list[torch.optim.Optimizer] = []
    groups: list[NamedParameters] = []
    if sparse:
        tables = {"params": [p for _, p in sparse], "lr": lr * sparse_lr_scale, "lr_scale": sparse_lr_scale}
        optimizers.append(torch.optim.SparseAdam([tables], betas=betas, eps=eps))
        groups.append(sparse)
    if dense:
        optimizers.append(torch.optim.Adam([p for _, p in dense], lr=lr, betas=betas, eps=eps))
        groups.append(dense)
    return Optimizers(optimizers, groups, row_decay)


@torch.no_grad()
def clip_grad_norm(parameters: list[nn.Parameter], max_norm: float) -> float:
    """Scale all gradients so their global L2 norm is at most ``max_norm``; returns the norm before.

    ``torch.nn.utils.clip_grad_norm_`` refuses sparse gradients; here a sparse gradient counts
    once per row after coalescing (the duplicate rows of an allgather are summed, as the
    optimizer will).
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    squares = [(g.coalesce().values() if g.is_sparse else g).float().square().sum() for g in grads]
    total = float(torch.stack(squares).sum().sqrt()) if squares else 0.0
    if total > max_norm:
        scale = max_norm / (total + 1e-6)
        for param in parameters:
            if param.grad is not None:
                param.grad.mul_(scale)
    return total
