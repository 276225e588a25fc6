"""The one module that touches Horovod: data-parallel plumbing for the trainer.

Launched by ``horovodrun`` (Gloo on CPU, NCCL when Horovod was built with it and GPUs are
present) every function here is the Horovod call it names; launched as a plain
``python -m deepfm train`` it falls back to one process (rank 0 of 1) without importing
Horovod at all, so the trainer also runs where Horovod is not installed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch

_LAUNCHER_RANK_VARS = ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")
_hvd: Any = None  # horovod.torch once ``init`` ran under a launcher


def launched_by_horovod() -> bool:
    """True when a launcher (horovodrun, mpirun, jsrun) started this process as one rank."""
    return any(var in os.environ for var in _LAUNCHER_RANK_VARS)


def init() -> None:
    """``hvd.init()`` under a launcher; nothing for a single process. Idempotent."""
    global _hvd
    if _hvd is None and launched_by_horovod():
        import horovod.torch as hvd

        hvd.init()
        _hvd = hvd


def rank() -> int:
    return _hvd.rank() if _hvd else 0


def size() -> int:
    return _hvd.size() if _hvd else 1


def local_rank() -> int:
    """Rank among the processes of this host (picks the GPU)."""
    return _hvd.local_rank() if _hvd else 0


def local_size() -> int:
    """Processes on this host (they share its CPU cores)."""
    return _hvd.local_size() if _hvd else 1


def is_primary() -> bool:
    """Rank 0: the one that writes checkpoints, bundles, metrics and logs progress."""
    return rank() == 0


def distributed_optimizer(
    optimizer: torch.optim.Optimizer,
    named_parameters: Iterable[tuple[str, torch.nn.Parameter]],
    sparse_as_dense: bool = False,
) -> torch.optim.Optimizer:
    """``hvd.DistributedOptimizer``: gradients are averaged across ranks inside ``step()``.

    Sparse embedding gradients are allgathered as (indices, values) unless
    ``sparse_as_dense``, which allreduces the whole dense table instead: cheaper only when
    a batch touches a large share of the vocabulary.
    """
    if not _hvd:
        return optimizer
    return _hvd.DistributedOptimizer(
        optimizer, named_parameters=list(named_parameters), sparse_as_dense=sparse_as_dense
    )


@contextlib.contextmanager
def synchronized(optimizers: Iterable[torch.optim.Optimizer]) -> Iterator[None]:
    """The averaged gradients are in place inside the block (to clip them), and ``step()`` in it
    does not wait for them again (``synchronize`` + ``skip_synchronize``)."""
    with contextlib.ExitStack() as stack:
        if _hvd:
            for optimizer in optimizers:
                optimizer.synchronize()  # type: ignore[attr-defined]
                stack.enter_context(optimizer.skip_synchronize())  # type: ignore[attr-defined]
        yield


def average_buffers(module: torch.nn.Module) -> None:
    """Floating buffers (batch-norm running statistics) averaged over ranks: each rank's differ,
    as each normalised its own batches, and the bundle and the ranks' evaluations need one set."""
    if _hvd:
        for name, buffer in module.named_buffers():
            if buffer.is_floating_point():
                buffer.copy_(_hvd.allreduce(buffer, op=_hvd.Average, name=f"buffer.{name}"))


def broadcast_parameters(module: torch.nn.Module, root_rank: int = 0) -> None:
    """Every rank starts from ``root_rank``'s weights."""
    if _hvd:
        _hvd.broadcast_parameters(module.state_dict(), root_rank=root_rank)


def broadcast_optimizer_state(
    optimizer: torch.optim.Optimizer, model: torch.nn.Module | None = None, root_rank: int = 0
) -> None:
    """Every rank continues from ``root_rank``'s optimizer state (moments, step counts)."""
    if _hvd:
        _hvd.broadcast_optimizer_state(optimizer, root_rank=root_rank, model=model)


def broadcast_object(obj: Any, root_rank: int = 0, name: str = "broadcast_object") -> Any:
    """``root_rank``'s picklable ``obj`` on every rank.

    The name is explicit: Horovod defaults it to ``type(obj).__name__``, which differs when
    non-root ranks pass a placeholder (``None``), and mismatched names deadlock the collective.
    """
    return _hvd.broadcast_object(obj, root_rank=root_rank, name=name) if _hvd else obj


def allgather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order."""
    return _hvd.allgather_object(obj) if _hvd else [obj]


def allreduce_sum(tensor: torch.Tensor, name: str | None = None) -> torch.Tensor:
    """Element-wise sum over ranks (mergeable metric statistics)."""
    return _hvd.allreduce(tensor, op=_hvd.Sum, name=name) if _hvd else tensor


def allreduce_min(value: int, name: str | None = None) -> int:
    """The smallest ``value`` over ranks (equalised steps per epoch)."""
    if not _hvd:
        return value
    return int(_hvd.allreduce(torch.tensor([value], dtype=torch.int64), op=_hvd.Min, name=name).item())


def shutdown() -> None:
    if _hvd:
        _hvd.shutdown()
