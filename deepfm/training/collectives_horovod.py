"""The one module that touches Horovod: its collectives behind ``Collectives``, and
``horovod.spark.run``.

Under ``horovodrun`` (Gloo on CPU, NCCL when Horovod was built with it and GPUs are present) or
``horovod.spark.run`` (the same, its ranks started by Spark tasks on the cluster's executors),
every method is the Horovod call it names.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from deepfm.models.optim import Optimizers
from deepfm.training.collectives import Collectives


class HorovodCollectives(Collectives):
    """``hvd.init()`` on construction; the ranks are Horovod's."""

    def __init__(self) -> None:
        import horovod.torch as hvd

        hvd.init()
        self._hvd = hvd
        self.rank, self.size = hvd.rank(), hvd.size()
        self.local_rank, self.local_size = hvd.local_rank(), hvd.local_size()

    def distributed(self, optimizers: Optimizers, sparse_as_dense: bool = False) -> Optimizers:
        """``hvd.DistributedOptimizer`` around each optimizer: sparse gradients are allgathered
        as (indices, values), dense ones allreduced, in the background during ``backward``."""
        return optimizers.wrap(
            lambda opt, named: self._hvd.DistributedOptimizer(
                opt, named_parameters=named, sparse_as_dense=sparse_as_dense
            )
        )

    @contextlib.contextmanager
    def _synchronized(self, optimizers: Optimizers) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for optimizer in optimizers:
                optimizer.synchronize()  # type: ignore[attr-defined]
                stack.enter_context(optimizer.skip_synchronize())  # type: ignore[attr-defined]
            yield

    def synchronized(self, optimizers: Optimizers) -> contextlib.AbstractContextManager[None]:
        """``synchronize`` + ``skip_synchronize`` of each optimizer."""
        return self._synchronized(optimizers)

    def average_buffers(self, module: torch.nn.Module) -> None:
        for name, buffer in module.named_buffers():
            if buffer.is_floating_point():
                buffer.copy_(self._hvd.allreduce(buffer, op=self._hvd.Average, name=f"buffer.{name}"))

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        self._hvd.broadcast_parameters(module.state_dict(), root_rank=0)

    def broadcast_optimizer_state(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> None:
        # Horovod initialises an empty state by a step with zero gradients first: Adam's step
        # count would start at 1, not at 0 as in one process (torch.distributed's) and the bias
        # corrections of every later step would differ. Fresh optimizers have nothing to share.
        if self.broadcast_object(bool(optimizer.state_dict()["state"]), name="optimizer_has_state"):
            self._hvd.broadcast_optimizer_state(optimizer, root_rank=0, model=model)

    def broadcast_object(self, obj: Any, name: str) -> Any:
        # The name is explicit: Horovod defaults it to ``type(obj).__name__``, which differs when
        # non-root ranks pass a placeholder (``None``), and mismatched names deadlock the collective.
        return self._hvd.broadcast_object(obj, root_rank=0, name=name)

    def allgather_object(self, obj: Any) -> list[Any]:
        return list(self._hvd.allgather_object(obj))

    def allreduce_sum(self, tensor: torch.Tensor, name: str) -> torch.Tensor:
        return self._hvd.allreduce(tensor, op=self._hvd.Sum, name=name)

    def allreduce_min(self, value: int, name: str) -> int:
        return int(self._hvd.allreduce(torch.tensor([value], dtype=torch.int64), op=self._hvd.Min, name=name).item())

    def shutdown(self) -> None:
        self._hvd.shutdown()


def spark_run(fn: Callable[..., Any], args: Sequence[Any], num_proc: int, python: str) -> list[Any]:
    """``fn(*args)`` on ``num_proc`` Horovod ranks, each started by a Spark task of the active
    session's cluster (Gloo between them) as ``python`` (the executors' interpreter); every
    rank's result, in rank order. A rank's environment is its executor's."""
    import horovod.spark

    return list(horovod.spark.run(fn, args=tuple(args), num_proc=num_proc, use_gloo=True, executable=python))
