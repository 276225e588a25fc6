"""Run as each rank of a launcher (``horovodrun -np 2``, ``torchrun --nproc-per-node 2``): the
collectives of the launcher's backend, then the trainer's steps on this rank's half of each batch.

Usage: ``collectives_check.py OUT [--sparse-as-dense]``. Writes ``OUT/rank<r>.pt``: the final
model and batch-norm states and every collective's result. ``steps(world)`` are the batches, the
same in the test's single-process reference (which trains on the whole of each).
"""

import sys
from pathlib import Path

import torch
from testkit import model

from deepfm.models import make_optimizers
from deepfm.training.collectives import backend_of_environment, connect
from deepfm.training.feed import Batch
from deepfm.training.trainer import train_step

CARDINALITIES, NUMERIC, ROWS_PER_RANK, STEPS, LR = [30, 20, 50], 2, 16, 6, 0.01
# No dropout and no batch norm: the ranks' average must equal one process's step on the whole batch.
OVERRIDES = {"embedding_dim": 4, "hidden_units": [8], "dropout": 0.0, "batch_norm": False}


def tiny_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return model("deepfm", CARDINALITIES, NUMERIC, OVERRIDES)


def steps(world: int) -> list[tuple[Batch, float]]:
    """Each step's whole batch (rank r's share: rows r*ROWS_PER_RANK...) and its clip norm (every
    other step clips the averaged gradients)."""
    g = torch.Generator().manual_seed(7)
    rows = world * ROWS_PER_RANK
    batches = []
    for step in range(STEPS):
        cat = torch.stack([torch.randint(0, c, (rows,), generator=g) for c in CARDINALITIES], dim=1)
        batch = Batch(cat, torch.randn(rows, NUMERIC, generator=g), torch.randint(0, 2, (rows,), generator=g).float())
        batches.append((batch, 0.05 if step % 2 else 0.0))
    return batches


def main(out: str, *flags: str) -> None:
    comm = connect(backend_of_environment())
    net = tiny_model(seed=comm.rank)  # a different init on each rank: the broadcast equalises them
    optimizers = comm.distributed(make_optimizers(net, LR), sparse_as_dense="--sparse-as-dense" in flags)
    comm.broadcast_parameters(net)
    for optimizer in optimizers:
        comm.broadcast_optimizer_state(optimizer, net)
    share = slice(comm.rank * ROWS_PER_RANK, (comm.rank + 1) * ROWS_PER_RANK)
    for batch, clip in steps(comm.size):
        train_step(net, optimizers, Batch(*(t[share] for t in batch)), amp=False, clip_norm=clip, comm=comm)
    norm = torch.nn.BatchNorm1d(3)
    norm(torch.arange(8.0).repeat(3, 1).T + comm.rank)  # this rank's batch: mean 3.5 + rank
    comm.average_buffers(norm)
    results = {
        "model": net.state_dict(),
        "norm": norm.state_dict(),
        "sum": comm.allreduce_sum(torch.tensor([comm.rank + 1.0]), name="sum"),
        "min": comm.allreduce_min(comm.rank + 3, name="min"),
        "gathered": comm.allgather_object(("rank", comm.rank)),
        "broadcast": comm.broadcast_object({"from": comm.rank} if comm.is_primary else None, name="object"),
        "size": comm.size,
    }
    torch.save(results, Path(out) / f"rank{comm.rank}.pt")
    comm.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
