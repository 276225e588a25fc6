"""Training on the cluster: the three launchers of ``deepfm train --launcher`` on a standalone
Spark master with two one-core workers and a SeaweedFS S3 server (``sparkcluster``,
``objectstore``: the cluster test's harness), the data preprocessed on that cluster onto S3.

``horovodrun`` starts two local ranks; ``horovod-spark`` and ``torch-distributor`` are
``spark-submit``ted to the cluster and run one rank in a task on each worker. Every run reads its
shards from S3 and writes its run directory there. The reference is one uninterrupted
``horovodrun`` run. Under each Spark launcher a run has its rank 1 killed mid-epoch (a lost
executor) and is rerun: it must resume from its checkpoint and end with a bundle on S3,
bit-identical weights on its ranks, and the reference's weights and validation AUC exactly (same
shards, batches and seeds; with one torch thread per rank, both collectives average two ranks'
gradients to the same bits). A killed ``horovodrun`` run resumes in ``tests/test_train.py`` (local
ranks) and from an S3 checkpoint in ``tests/test_cluster.py``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from objectstore import CREDENTIALS, S3Store, seaweedfs
from sparkcluster import standalone, submit_command
from testkit import ENV, build_wheel, deepfm_command

from deepfm.core import fs
from deepfm.models.bundle import load_bundle

pytestmark = pytest.mark.slow

END_DATE = dt.date(2026, 11, 3)  # two training days and a validation day of 1500 rows
JOB_ENV = {**ENV, **CREDENTIALS, "OMP_NUM_THREADS": "1"}
SMALL = {"spark.sql.shuffle.partitions": "2", "spark.executor.memory": "1g"}
SPARK_LAUNCHERS = ("horovod-spark", "torch-distributor")
LAUNCHERS = ("horovodrun", *SPARK_LAUNCHERS)
# ~2900 training rows in row groups of 500, 2 ranks of 40 rows a step: 36 steps an epoch.
TRAIN_ARGS = "--model deepfm --loader arrow --epochs 2 --batch-size 40 --checkpoint-every 10 --set prefetch=0".split()


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> S3Store:
    with seaweedfs(tmp_path_factory.mktemp("s3")) as s3:
        fs.use_s3(s3.settings)
        yield s3


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> str:
    with standalone(tmp_path_factory.mktemp("cluster")) as url:
        yield url


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project as a ``.zip`` for ``--py-files`` (``tests/test_cluster.py`` says why a zip)."""
    built = build_wheel(tmp_path_factory.mktemp("wheel"))
    return built.rename(built.with_suffix(".zip"))


def spark_submit(
    store: S3Store, cluster: str, wheel: Path, job: str, *args: str, conf: dict | None = None
) -> list[str]:
    return submit_command(cluster, wheel, {**store.spark_conf, **SMALL, **(conf or {})}, job, *args)


@pytest.fixture(scope="module")
def processed(store, cluster, wheel, tmp_path_factory) -> str:
    """Generated logs preprocessed on the cluster into ``processed/`` on S3."""
    local = tmp_path_factory.mktemp("raw")
    start = (END_DATE - dt.timedelta(days=2)).isoformat()
    generate = deepfm_command("generate-logs", "--output", str(local), "--days", "3", "--rows-per-day", "1500",
                              "--start-date", start, "--seed", "5")  # fmt: skip
    subprocess.run(generate, check=True, env=JOB_ENV, capture_output=True)
    command = spark_submit(store, cluster, wheel, "preprocess", "--end-date", END_DATE.isoformat(), "--input",
                           str(local), "--output", store.uri("processed"), "--train-days", "2", "--validation-days",
                           "1", "--test-days", "0", "--row-group-rows", "500", "--day-cache", "")  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, env=JOB_ENV, cwd=local, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return store.uri("processed")


def run_dir(store: S3Store, name: str) -> str:
    return store.uri("launchers", name, "run")


def train_args(store: S3Store, data: str, launcher: str, output: str, root: Path) -> list[str]:
    """The same training for every launcher; the S3 settings in a --config file (the job's spark
    section), as a user passes them."""
    settings = root / "s3.yaml"
    settings.write_text(yaml.safe_dump({"spark": store.spark_conf}))
    return ["--data", data, "--output", output, "--launcher", launcher, "--np", "2", *TRAIN_ARGS,
            "--config", str(settings)]  # fmt: skip


def launch(
    store: S3Store, cluster: str, wheel: Path, data: str, launcher: str, output: str, root: Path
) -> subprocess.Popen:
    """The training's command, started: ``deepfm train`` itself for horovodrun, else spark-submit
    to the cluster. The ranks of TorchDistributor are processes of the executors' own, which do
    not see ``--py-files``: the wheel, in each executor's working directory, is on their path."""
    args = train_args(store, data, launcher, output, root)
    if launcher == "horovodrun":
        command = deepfm_command("train", *args)
    else:  # a failed task fails the job: the rerun is what resumes
        conf = {"spark.executorEnv.PYTHONPATH": wheel.name, "spark.task.maxFailures": "1"}
        command = spark_submit(store, cluster, wheel, "train", *args, conf=conf)
    return subprocess.Popen(command, cwd=root, env=JOB_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip


def finished(process: subprocess.Popen) -> str:
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stdout[-3000:] + stderr[-6000:]
    return stderr


def rank_processes(rank: int, under: Path) -> list[int]:
    """This machine's processes that are rank ``rank`` of a training started by this module: those
    working under ``under`` (its temporary folders hold the horovodrun ranks' folder and the
    executors' work directories), so another test's trainings running beside it are left alone.
    Horovod's ranks carry HOROVOD_RANK, torchrun's workers LOCAL_RANK and RANK (their agent has no
    LOCAL_RANK)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError):
            if not (environ.parent / "cwd").resolve().is_relative_to(under):
                continue
            variables = dict(
                v.split("=", 1) for v in environ.read_bytes().decode(errors="replace").split("\0") if "=" in v
            )
            horovod = variables.get("HOROVOD_RANK") == str(rank)
            torch_rank = "LOCAL_RANK" in variables and variables.get("RANK") == str(rank)
            if horovod or torch_rank:
                found.append(int(environ.parent.name))
    return found


def kill_a_rank_mid_epoch(process: subprocess.Popen, output: str, under: Path) -> None:
    """Once the run's first checkpoint is on S3, kill -9 of rank 1 alone (as a lost executor
    would); the job then fails."""
    checkpoint = fs.join(output, "checkpoints", "latest.pt")
    deadline = time.monotonic() + 300
    while not fs.exists(checkpoint):
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before a checkpoint"
        time.sleep(0.2)
    victims = rank_processes(1, under)
    assert victims, "no rank 1 found"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.communicate(timeout=300)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode != 0, "the job did not fail with its rank"


@pytest.fixture(scope="module")
def reference(store, cluster, wheel, processed, tmp_path_factory) -> dict:
    """An uninterrupted horovodrun run's metrics (with its summary), read back from S3."""
    output = run_dir(store, "horovodrun")
    finished(launch(store, cluster, wheel, processed, "horovodrun", output, tmp_path_factory.mktemp("reference")))
    return fs.read_json(fs.join(output, "metrics.json"))


@pytest.fixture(scope="module")
def resumed(store, cluster, wheel, processed, tmp_path_factory) -> dict[str, dict]:
    """Per Spark launcher, a run killed mid-epoch, then rerun to its end: the rerun's metrics and
    the text that says it resumed (its train.log, or its stderr)."""
    results, base = {}, tmp_path_factory.getbasetemp().resolve()
    for launcher in SPARK_LAUNCHERS:
        root, output = tmp_path_factory.mktemp(launcher), run_dir(store, launcher)
        kill_a_rank_mid_epoch(launch(store, cluster, wheel, processed, launcher, output, root), output, base)
        deadline = time.monotonic() + 60  # rank 0 ends on its own: its collectives fail, or Spark kills its task
        while rank_processes(0, base) and time.monotonic() < deadline:
            time.sleep(0.5)
        survivors = rank_processes(0, base) + rank_processes(1, base)
        assert not survivors, f"a rank of the killed {launcher} run survived"
        stderr = finished(launch(store, cluster, wheel, processed, launcher, output, root))
        results[launcher] = {**fs.read_json(fs.join(output, "metrics.json")),
                             "log": fs.read_text(fs.join(output, "train.log")) + stderr}  # fmt: skip
    return results


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_each_launcher_trains_two_ranks_to_a_bundle_on_s3(store, reference, resumed, launcher):
    metrics = {"horovodrun": reference, **resumed}[launcher]
    summary = metrics["summary"]
    assert summary["world_size"] == 2 and summary["output"] == run_dir(store, launcher)
    digests = metrics["weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]  # bit-identical weights on both ranks
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2] and summary["global_step"] > 50
    bundle = load_bundle(summary["bundle"])  # from S3
    assert bundle.name == "deepfm" and bundle.validation is not None
    assert bundle.validation.compute()["auc"] == pytest.approx(summary["val_auc"], abs=1e-3)  # after its logit shift


@pytest.mark.parametrize("launcher", SPARK_LAUNCHERS)
def test_a_run_whose_rank_was_killed_resumes_to_the_weights_of_an_uninterrupted_one(reference, resumed, launcher):
    metrics = resumed[launcher]
    (resumed_at,) = metrics["resumed_at_steps"]
    assert resumed_at > 0 and resumed_at % 10 == 0 and "resuming from" in metrics["log"]
    assert metrics["weight_digests"] == reference["weight_digests"]
    assert metrics["summary"]["global_step"] == reference["summary"]["global_step"]


def test_the_launchers_reach_the_same_validation_auc(reference, resumed):
    aucs = {launcher: run["summary"]["val_auc"] for launcher, run in resumed.items()}
    assert reference["summary"]["val_auc"] > 0.6  # the planted signal is learnt
    assert set(aucs.values()) == {reference["summary"]["val_auc"]}, aucs
