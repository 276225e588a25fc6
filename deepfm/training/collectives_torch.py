"""The one module that touches torch.distributed: ``Collectives`` over a process group (Gloo on
CPU, NCCL on GPUs), as ``torchrun`` and Spark's TorchDistributor start it (``env://``: the
``MASTER_ADDR``, ``MASTER_PORT``, ``RANK`` and ``WORLD_SIZE`` they set in each rank).

Gradients are averaged explicitly in the optimizers' ``step()``, not by DDP: one allreduce of
every dense gradient packed into one buffer, and the sparse embedding gradients allgathered as
(row, value) pairs, packed likewise, in rank order and divided by the ranks: the gradient
Horovod's DistributedOptimizer hands its optimizer. NCCL has no sparse allreduce (DDP's sparse
path needs Gloo), and the trainer's model, checkpoints and clipping stay as they are.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn

from deepfm.models.optim import Optimizers
from deepfm.training.collectives import Collectives


class TorchCollectives(Collectives):
    """Joins the process group of ``backend`` (``gloo`` or ``nccl``) from the launcher's variables."""

    def __init__(self, backend: str = "gloo") -> None:
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.local_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        # NCCL's tensors live on this rank's GPU; Gloo's on the CPU.
        self.device = torch.device("cuda", self.local_rank) if backend == "nccl" else torch.device("cpu")
        if backend == "nccl":
            torch.cuda.set_device(self.device)
        if not tdist.is_initialized():
            tdist.init_process_group(backend, init_method="env://")
        self.rank, self.size = tdist.get_rank(), tdist.get_world_size()

    def distributed(self, optimizers: Optimizers, sparse_as_dense: bool = False) -> Optimizers:
        return AveragedOptimizers(optimizers, self, sparse_as_dense)

    @contextlib.contextmanager
    def _synchronized(self, optimizers: Optimizers) -> Iterator[None]:
        if not isinstance(optimizers, AveragedOptimizers):
            raise TypeError("synchronized needs the optimizers of `distributed`")
        optimizers.synchronize()
        yield

    def synchronized(self, optimizers: Optimizers) -> contextlib.AbstractContextManager[None]:
        return self._synchronized(optimizers)

    @torch.no_grad()
    def average_buffers(self, module: nn.Module) -> None:
        for buffer in module.buffers():
            if buffer.is_floating_point():
                buffer.copy_(self.allreduce_sum(buffer, "buffer") / self.size)

    @torch.no_grad()
    def broadcast_parameters(self, module: nn.Module) -> None:
        for tensor in module.state_dict().values():
            on_device = tensor.to(self.device)
            tdist.broadcast(on_device, src=0)
            tensor.copy_(on_device)

    def broadcast_optimizer_state(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
        state = self.broadcast_object(optimizer.state_dict() if self.is_primary else None, "optimizer_state")
        if not self.is_primary:
            optimizer.load_state_dict(state)

    def broadcast_object(self, obj: Any, name: str) -> Any:
        box = [obj]
        tdist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def allgather_object(self, obj: Any) -> list[Any]:
        gathered: list[Any] = [None] * self.size
        tdist.all_gather_object(gathered, obj)
        return gathered

    def allreduce_sum(self, tensor: torch.Tensor, name: str) -> torch.Tensor:
        total = tensor.detach().to(self.device, copy=True)
        tdist.all_reduce(total, op=tdist.ReduceOp.SUM)
        return total.to(tensor.device)

    def allreduce_min(self, value: int, name: str) -> int:
        smallest = torch.tensor([value], dtype=torch.int64, device=self.device)
        tdist.all_reduce(smallest, op=tdist.ReduceOp.MIN)
        return int(smallest.item())

    def shutdown(self) -> None:
        if tdist.is_initialized():
            tdist.destroy_process_group()

    @torch.no_grad()
    def average_gradients(self, parameters: list[nn.Parameter], sparse_as_dense: bool = False) -> None:
        """Replace each gradient by its average over ranks (every rank holds a gradient for the
        same parameters: one model, one graph)."""
        with_grad = [p for p in parameters if p.grad is not None]
        gathered = [not sparse_as_dense and p.grad.is_sparse for p in with_grad]  # type: ignore[union-attr]
        sparse = [p for p, g in zip(with_grad, gathered) if g]
        dense = [p for p, g in zip(with_grad, gathered) if not g]
        if dense:
            self._average_dense(dense)
        if sparse:
            self._gather_sparse(sparse)

    def _average_dense(self, parameters: list[nn.Parameter]) -> None:
        grads = [p.grad.to_dense() for p in parameters]  # type: ignore[union-attr]
        flat = self.allreduce_sum(torch.cat([g.reshape(-1) for g in grads]), "gradients") / self.size
        for param, grad, averaged in zip(parameters, grads, flat.split([g.numel() for g in grads])):
            averaged = averaged.view_as(grad)
            # A sparse table reduced densely stays sparse for its optimizer: the rows any rank touched.
            param.grad = averaged.to_sparse(1) if param.grad.is_sparse else averaged  # type: ignore[union-attr]

    def _gather_sparse(self, parameters: list[nn.Parameter]) -> None:
        """Every rank's (row, value) pairs of each sparse gradient, concatenated in rank order,
        values divided by the ranks; three collectives for all tables: counts, rows, values."""
        grads: list[torch.Tensor] = [p.grad for p in parameters]  # type: ignore[misc]
        rows = [g._indices()[0] for g in grads]  # uncoalesced, as backward made them
        values = [g._values().reshape(-1) for g in grads]  # (nnz * row size,)
        widths = [math.prod(g.shape[1:]) for g in grads]
        local_counts = torch.tensor([len(r) for r in rows], dtype=torch.int64)
        # per rank, per table
        counts: list[list[int]] = [c.tolist() for c in self._all_gather_padded(local_counts, [len(grads)] * self.size)]
        value_counts = [[n * w for n, w in zip(rank_counts, widths)] for rank_counts in counts]
        all_rows = self._all_gather_padded(torch.cat(rows), [sum(c) for c in counts])
        all_values = self._all_gather_padded(torch.cat(values), [sum(c) for c in value_counts])
        for i, (param, grad) in enumerate(zip(parameters, grads)):
            table_rows = torch.cat([r.split(c)[i] for r, c in zip(all_rows, counts)])
            table_values = torch.cat([v.split(c)[i] for v, c in zip(all_values, value_counts)])
            merged = table_values.view(-1, *grad.shape[1:]) / self.size
            param.grad = torch.sparse_coo_tensor(table_rows.unsqueeze(0), merged, grad.shape, check_invariants=False)

    def _all_gather_padded(self, tensor: torch.Tensor, lengths: list[int]) -> list[torch.Tensor]:
        """Every rank's 1-d ``tensor`` (rank k's of ``lengths[k]`` elements), in rank order, on
        ``tensor``'s device: Gloo and NCCL gather equal shapes only, so each is padded to the longest."""
        padded = torch.zeros(max(lengths), dtype=tensor.dtype, device=self.device)
        padded[: len(tensor)] = tensor
        gathered = [torch.empty_like(padded) for _ in range(self.size)]
        tdist.all_gather(gathered, padded)
        return [g[:n].to(tensor.device) for g, n in zip(gathered, lengths)]


class AveragedOptimizers(Optimizers):
    """``Optimizers`` whose ``step()`` first averages the gradients over ranks (once per step:
    ``synchronize`` inside ``TorchCollectives.synchronized`` does it early, for clipping)."""

    def __init__(self, inner: Optimizers, comm: TorchCollectives, sparse_as_dense: bool) -> None:
        super().__init__(inner.optimizers, inner.named_parameters, inner.row_decay)
        self._comm, self._sparse_as_dense, self._averaged = comm, sparse_as_dense, False

    def synchronize(self) -> None:
        if not self._averaged:
            parameters = [p for named in self.named_parameters for _, p in named]
            self._comm.average_gradients(parameters, self._sparse_as_dense)
            self._averaged = True

    def zero_grad(self) -> None:
        super().zero_grad()
        self._averaged = False

    def step(self) -> None:
        self.synchronize()
        super().step()
        self._averaged = False
