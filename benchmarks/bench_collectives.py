"""Gradient averaging under torch.distributed (Gloo, 2 ranks on this host): DDP against the
explicit averaging of ``deepfm.training.collectives_torch``, on DeepFM training steps.

  none      each rank steps alone (no communication): the baseline of the same run
  explicit  ``TorchCollectives.distributed``: one allreduce of the dense gradients packed in one
            buffer, the sparse embedding rows allgathered (counts, rows, values), in ``step()``
  ddp       ``DistributedDataParallel(model)``: buckets of dense gradients allreduced during
            ``backward``, each sparse gradient by Gloo's sparse allreduce

Run as ``python benchmarks/bench_collectives.py`` (it starts itself under ``torchrun``); rank 0
prints samples/s per rank of each (best of ``--repeats`` interleaved rounds) and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from deepfm.models import build_model, make_optimizers
from deepfm.training.collectives import connect
from deepfm.training.feed import Batch
from deepfm.training.trainer import train_step

sys.path.insert(0, str(Path(__file__).parent))
from bench_train import CARDINALITIES, N_NUMERIC, paper_model_config


def batches(count: int, rows: int, seed: int) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    cat = [torch.stack([torch.randint(0, c, (rows,), generator=g) for c in CARDINALITIES], 1)]
    return [
        Batch(
            cat[0][torch.randperm(rows, generator=g)],
            torch.randn(rows, N_NUMERIC, generator=g),
            torch.randint(0, 2, (rows,), generator=g).float(),
        )
        for _ in range(count)
    ]


def ranks(args: argparse.Namespace) -> None:
    comm = connect("torch", "cpu")
    torch.set_num_threads(1)
    config = paper_model_config()
    data = batches(args.steps, args.batch_size, seed=comm.rank)

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        return build_model("deepfm", list(CARDINALITIES), N_NUMERIC, config)

    explicit_model, ddp_model, none_model = model(), model(), model()
    explicit = (explicit_model, comm.distributed(make_optimizers(explicit_model, 1e-3)))
    ddp = DistributedDataParallel(ddp_model, broadcast_buffers=False)
    ddp_optimizers = make_optimizers(ddp_model, 1e-3)
    none = (none_model, make_optimizers(none_model, 1e-3))

    def ddp_step(batch: Batch) -> None:
        loss = F.binary_cross_entropy_with_logits(ddp(batch.cat, batch.num), batch.label)
        ddp_optimizers.zero_grad()
        loss.backward()
        ddp_optimizers.step()

    steps = {
        "none": lambda b: train_step(*none, b, amp=False),
        "explicit": lambda b: train_step(*explicit, b, amp=False, comm=comm),
        "ddp": ddp_step,
    }
    best = dict.fromkeys(steps, 0.0)
    for _ in range(args.repeats):
        for name, step in steps.items():
            step(data[0])  # warm
            comm.allreduce_min(0, name="start")  # both ranks start together
            start = time.perf_counter()
            for batch in data:
                step(batch)
            rate = args.steps * args.batch_size / (time.perf_counter() - start)
            best[name] = max(best[name], min(comm.allgather_object(rate)))
    if comm.is_primary:
        print(f"gradient averaging, 2 Gloo ranks, DeepFM, batch {args.batch_size} per rank, best of {args.repeats}")
        for name, rate in best.items():
            print(f"  {name:10s} {rate:>10,.0f} samples/s per rank   {rate / best['none']:.2f}x none")
        print(json.dumps({k: round(v) for k, v in best.items()}))
    comm.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if "LOCAL_RANK" in os.environ:
        ranks(args)
        return
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc-per-node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sys.exit(subprocess.run([*torchrun, __file__, *sys.argv[1:]], env=env).returncode)


if __name__ == "__main__":
    main()
