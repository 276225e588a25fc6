"""What the trainer needs of its ranks, as one small interface: ``Collectives``.

Three implementations, one per way of running: ``SingleProcess`` (a plain ``deepfm train``: every
collective is the identity), ``HorovodCollectives`` (``deepfm.training.collectives_horovod``:
under ``horovodrun`` or ``horovod.spark.run``) and ``TorchCollectives``
(``deepfm.training.collectives_torch``: torch.distributed under ``torchrun`` or Spark's
TorchDistributor). The trainer calls only the methods below; it never imports Horovod or
``torch.distributed``.

Example::

    comm = connect(backend_of_environment())  # under horovodrun: Horovod; under torchrun: torch
    optimizers = comm.distributed(make_optimizers(model, lr))  # step() applies averaged gradients
"""

from __future__ import annotations

import contextlib
import os
from abc import ABC, abstractmethod
from typing import Any

import torch

from deepfm.models.optim import Optimizers

BACKENDS = ("single", "horovod", "torch")
# Set by the launchers in every rank they start.
_HOROVOD_RANK_VARS = ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")
_TORCHRUN_VARS = ("TORCHELASTIC_RUN_ID", "LOCAL_WORLD_SIZE")


class Collectives(ABC):
    """The ranks of one training and the collectives between them.

    Every collective is called by every rank in the same order (names, where given, label the
    operation in Horovod's timeline and must match across ranks).
    """

    rank: int  # this process's rank, 0..size-1
    size: int  # ranks in the training
    local_rank: int  # rank among the ranks of this host (picks its GPU)
    local_size: int  # ranks on this host (they share its CPU cores)

    @property
    def is_primary(self) -> bool:
        """Rank 0: the one that writes checkpoints, bundles, metrics and logs progress."""
        return self.rank == 0

    @abstractmethod
    def distributed(self, optimizers: Optimizers, sparse_as_dense: bool = False) -> Optimizers:
        """``optimizers`` whose ``step()`` applies the gradients averaged over ranks.

        Sparse embedding gradients travel as (row, value) pairs gathered from every rank, whose
        size grows with the batch, not the table; ``sparse_as_dense`` reduces whole dense tables
        instead (cheaper only when a batch touches a large share of the vocabulary).
        """

    @abstractmethod
    def synchronized(self, optimizers: Optimizers) -> contextlib.AbstractContextManager[None]:
        """A block in which the averaged gradients are in place (to clip them) and ``step()`` does
        not average them again. ``optimizers`` come from ``distributed``."""

    @abstractmethod
    def average_buffers(self, module: torch.nn.Module) -> None:
        """Floating buffers (batch-norm running statistics) averaged over ranks: each rank
        normalised its own batches, and the bundle and the ranks' evaluations need one set."""

    @abstractmethod
    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Every rank gets rank 0's parameters and buffers (in place)."""

    @abstractmethod
    def broadcast_optimizer_state(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> None:
        """Every rank continues from rank 0's optimizer state (moments, step counts, step size)."""

    @abstractmethod
    def broadcast_object(self, obj: Any, name: str) -> Any:
        """Rank 0's picklable ``obj`` on every rank (other ranks may pass a placeholder)."""

    @abstractmethod
    def allgather_object(self, obj: Any) -> list[Any]:
        """Every rank's picklable ``obj``, in rank order."""

    @abstractmethod
    def allreduce_sum(self, tensor: torch.Tensor, name: str) -> torch.Tensor:
        """Element-wise sum over ranks, as a new tensor on ``tensor``'s device (mergeable statistics)."""

    @abstractmethod
    def allreduce_min(self, value: int, name: str) -> int:
        """The smallest ``value`` over ranks (equal steps per epoch on every rank)."""

    @abstractmethod
    def shutdown(self) -> None:
        """Leave the group; no collective after this."""


class SingleProcess(Collectives):
    """One process, rank 0 of 1: every collective returns its input."""

    rank, size, local_rank, local_size = 0, 1, 0, 1

    def distributed(self, optimizers: Optimizers, sparse_as_dense: bool = False) -> Optimizers:
        return optimizers

    def synchronized(self, optimizers: Optimizers) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def average_buffers(self, module: torch.nn.Module) -> None:
        pass

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        pass

    def broadcast_optimizer_state(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> None:
        pass

    def broadcast_object(self, obj: Any, name: str) -> Any:
        return obj

    def allgather_object(self, obj: Any) -> list[Any]:
        return [obj]

    def allreduce_sum(self, tensor: torch.Tensor, name: str) -> torch.Tensor:
        return tensor.clone()

    def allreduce_min(self, value: int, name: str) -> int:
        return value

    def shutdown(self) -> None:
        pass


SINGLE_PROCESS = SingleProcess()  # stateless: one instance serves every single-process caller


def backend_of_environment(environ: dict[str, str] | None = None) -> str:
    """The backend of the launcher that started this process, from the variables it set in each
    rank: ``horovod`` (horovodrun, horovod.spark, mpirun), ``torch`` (torchrun, TorchDistributor)
    or ``single`` (nothing: a plain process)."""
    env = os.environ if environ is None else environ
    if any(var in env for var in _HOROVOD_RANK_VARS):
        return "horovod"
    if any(var in env for var in _TORCHRUN_VARS):
        return "torch"
    return "single"


def connect(backend: str, device: str = "auto") -> Collectives:
    """Join the ranks of ``backend`` (one of ``BACKENDS``). ``device`` is the trainer's setting:
    torch.distributed uses NCCL for a CUDA device and Gloo otherwise."""
    if backend == "horovod":
        from deepfm.training.collectives_horovod import HorovodCollectives

        return HorovodCollectives()
    if backend == "torch":
        from deepfm.training.collectives_torch import TorchCollectives

        uses_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        return TorchCollectives("nccl" if uses_cuda else "gloo")
    if backend == "single":
        return SingleProcess()
    raise ValueError(f"collectives backend must be one of {BACKENDS}, not {backend!r}")
