"""The collectives behind ``deepfm.training.collectives``: each backend's ranks, started by their
real launcher (``torchrun`` for torch.distributed, ``horovodrun`` for Horovod), take the
trainer's steps on halves of each batch and must end where one process ends on the whole batches
(the averaged gradients, sparse embedding rows included), identical on every rank.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from collectives_check import LR, steps, tiny_model
from testkit import ENV, PYTHON, REPO, VENV_BIN

from deepfm.models import make_optimizers
from deepfm.training.collectives import backend_of_environment
from deepfm.training.launch import horovodrun
from deepfm.training.trainer import train_step

SCRIPT = str(Path(__file__).parent / "scripts" / "collectives_check.py")
RUN_ENV = {**ENV, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{REPO}:{Path(__file__).parent / 'scripts'}"}


def one_process() -> dict[str, torch.Tensor]:
    """The reference: rank 0's initial weights trained in this process on the whole batches."""
    net = tiny_model(seed=0)
    optimizers = make_optimizers(net, LR)
    for batch, clip in steps(world=2):
        train_step(net, optimizers, batch, amp=False, clip_norm=clip)
    return net.state_dict()


def ranks(command: list[str], out: Path) -> list[dict]:
    result = subprocess.run(command, capture_output=True, text=True, env=RUN_ENV, cwd=REPO, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


def check(results: list[dict]) -> None:
    first, second = results
    reference = one_process()
    for name, weights in reference.items():  # the ranks' average is the whole batch's gradient
        torch.testing.assert_close(first["model"][name], weights, rtol=1e-5, atol=1e-6, msg=name)
        assert torch.equal(first["model"][name], second["model"][name]), name  # bit-identical across ranks
    assert torch.equal(first["norm"]["running_mean"], second["norm"]["running_mean"])
    # momentum 0.1 x the mean of the ranks' batch means (3.5 and 4.5); rank 0's own would be 0.35
    torch.testing.assert_close(first["norm"]["running_mean"], torch.full((3,), 0.4))
    for result in results:
        assert result["size"] == 2 and result["sum"].item() == 3.0 and result["min"] == 3
        assert result["gathered"] == [("rank", 0), ("rank", 1)] and result["broadcast"] == {"from": 0}


@pytest.mark.parametrize("flags", [[], ["--sparse-as-dense"]], ids=["sparse", "sparse-as-dense"])
def test_torch_distributed_ranks_average_like_one_process(tmp_path, flags):
    torchrun = [str(VENV_BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", SCRIPT, str(tmp_path), *flags]
    check(ranks(torchrun, tmp_path))


@pytest.mark.slow
def test_horovod_ranks_average_like_one_process(tmp_path):
    check(ranks(horovodrun(2, "localhost:2", [SCRIPT, str(tmp_path)], PYTHON), tmp_path))


def test_the_backend_is_the_launchers():
    assert backend_of_environment({}) == "single"
    assert backend_of_environment({"HOROVOD_RANK": "1"}) == "horovod"  # horovodrun, horovod.spark.run
    assert backend_of_environment({"TORCHELASTIC_RUN_ID": "x", "LOCAL_WORLD_SIZE": "2"}) == "torch"  # torchrun
