"""The pipeline on a cluster with every path on an object store: a real S3 server (SeaweedFS,
built by ``make setup-test``), a Spark standalone master with two workers (separate processes and
work directories), jobs submitted to it with ``spark-submit`` and the project shipped as a wheel
(``--py-files``), reaching S3 through S3A; training on two Horovod ranks whose run directory is on
S3 too; this process reads their output through ``deepfm.core.fs`` (pyarrow's S3 file system).

Nothing is written to the local disk but the server's own data and the logs generated before
they are uploaded: the test checks that the jobs' outputs exist on S3 only.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import yaml
from objectstore import CREDENTIALS, S3Store, seaweedfs
from sparkcluster import standalone
from testkit import ENV, REPO, VENV_BIN, build_wheel, deepfm_command

from deepfm.cli.config import spark_conf
from deepfm.core import fs
from deepfm.core.features import FeatureSpec
from deepfm.models.bundle import load_bundle
from deepfm.ops.spark import spark_submit_args
from deepfm.training.launch import horovodrun_command

pytestmark = pytest.mark.slow

END_DATE = dt.date(2026, 11, 3)
DAYS = 3  # two training days and a validation day
ROWS_PER_DAY = 1500
# Tiny data: few shuffle partitions, and Delta's log replayed in 2 tasks instead of 50.
SMALL = {"spark.sql.shuffle.partitions": "2", "spark.databricks.delta.snapshotPartitions": "2"}
# The jobs' environment: the store's credentials given explicitly (testkit's ENV is a snapshot of
# this process's environment taken when testkit was first imported, maybe before objectstore's).
JOB_ENV = {**ENV, **CREDENTIALS}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> S3Store:
    root = tmp_path_factory.mktemp("s3")
    with seaweedfs(root) as s3:
        fs.use_s3(s3.settings)
        yield s3


@pytest.fixture(autouse=True)
def _reach_the_store(store) -> None:
    """This process's S3 settings are the store's (a Spark session started since sets its own)."""
    fs.use_s3(store.settings)


@pytest.fixture(scope="module")
def cluster_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cluster")


@pytest.fixture(scope="module")
def cluster(cluster_root) -> str:
    """A standalone master URL with two workers of one core each (work dirs under ``cluster_root``)."""
    with standalone(cluster_root) as url:
        yield url


def executors_ran(cluster_root: Path) -> list[int]:
    """Per worker, the executors it ran that got the project (``<work dir>/app-*/<id>/``: their
    working directories, where Spark puts the ``--py-files``)."""
    workers = sorted(w for w in cluster_root.glob("worker*") if w.is_dir())
    return [len(list(w.glob("app-*/*/deepfm_ctr-*.zip"))) for w in workers]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project as a wheel, shipped as a ``.zip``: what executors import instead of the checkout.
    ``--py-files`` puts ``.zip``, ``.egg`` and ``.py`` files on the executors' path, not ``.whl``
    ones (executors given a ``.whl`` import whatever copy their Python has installed); a
    pure-Python wheel is a zip archive."""
    built = build_wheel(tmp_path_factory.mktemp("wheel"))
    return Path(shutil.copy(built, built.with_suffix(".zip")))


@pytest.fixture(scope="module")
def raw(store, tmp_path_factory) -> str:
    """Generated click logs (1% malformed), uploaded to the bucket's ``raw/``."""
    local = tmp_path_factory.mktemp("generated")
    start = END_DATE - dt.timedelta(days=DAYS - 1)
    args = f"--output {local} --days {DAYS} --rows-per-day {ROWS_PER_DAY} --start-date {start} --seed 5"
    generate = deepfm_command("generate-logs", *args.split(), "--malformed-fraction", "0.01")
    subprocess.run(generate, check=True, env=JOB_ENV)
    s3, path = fs.arrow(store.uri("raw"))
    pafs.copy_files(str(local), path, destination_filesystem=s3)
    return store.uri("raw")


def submit(store: S3Store, master: str, wheel: Path, cwd: Path, *job: str) -> subprocess.CompletedProcess:
    """``spark-submit --master MASTER --py-files WHEEL $(deepfm submit-args) JOB`` with the store's
    S3A settings, run from ``cwd``."""
    settings = {**store.spark_conf, **SMALL, "spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1",
                "spark.executor.memory": "1g"}  # fmt: skip
    conf = [a for k, v in settings.items() for a in ("--conf", f"{k}={v}")]
    command = [str(VENV_BIN / "spark-submit"), "--master", master, "--py-files", str(wheel), *conf,
               *spark_submit_args(spark_conf({}))]  # fmt: skip
    entry = str(REPO / "jobs" / f"{job[0]}.py")
    job_command = [*command, entry, *job[1:]]
    return subprocess.run(job_command, cwd=cwd, capture_output=True, text=True, env=JOB_ENV, timeout=600)


def preprocess(store: S3Store, master: str, wheel: Path, raw: str, cwd: Path) -> dict:
    result = submit(store, master, wheel, cwd, "preprocess", "--end-date", END_DATE.isoformat(), "--input", raw,
                    "--output", store.uri("processed", "{end_date}"), "--train-days", "2", "--validation-days", "1",
                    "--test-days", "0", "--row-group-rows", "500", "--day-cache", "")  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return fs.read_json(store.uri("processed", END_DATE.isoformat(), "summary.json"))


@pytest.fixture(scope="module")
def processed(store, cluster, wheel, raw, tmp_path_factory) -> dict:
    cwd = tmp_path_factory.mktemp("driver")
    first = preprocess(store, cluster, wheel, raw, cwd)
    assert [p.name for p in cwd.iterdir()] == []  # nothing written beside the driver
    return {"first": first, "second": preprocess(store, cluster, wheel, raw, cwd)}


def test_preprocessing_reads_and_writes_the_object_store_and_counts_reconcile(store, processed, cluster_root):
    assert executors_ran(cluster_root) == [2, 2]  # each run had an executor on each worker
    summary = processed["first"]
    output = store.uri("processed", END_DATE.isoformat())
    assert summary["totals"]["rows_read"] == DAYS * ROWS_PER_DAY
    assert summary["totals"]["rows_written"] + summary["totals"]["rows_quarantined"] == DAYS * ROWS_PER_DAY
    assert 0 < summary["totals"]["rows_quarantined"] < DAYS * ROWS_PER_DAY * 0.05
    spec = FeatureSpec.load(output)  # read back from S3, its vocabularies too
    assert spec.version == summary["spec_version"] and spec.directory == output
    field = spec.categorical_fields[0]
    assert spec.vocabulary_table(field).num_rows == field.vocabulary_size
    written = [f.removeprefix(output + "/") for f in fs.files_under(output)]
    assert {w.split("/")[0] for w in written} == {"train", "validation", "quarantine", "vocabularies",
                                                  "feature_spec.json", "summary.json"}  # fmt: skip
    assert sum(f.startswith("train/day=") and f.endswith(".parquet") for f in written) >= 2


def test_preprocessing_rerun_replaces_its_output_whole(store, processed):
    first, second = processed["first"], processed["second"]
    assert second["totals"] == first["totals"] and second["spec_version"] == first["spec_version"]
    # No staged object left behind (SeaweedFS's filer may still list an emptied folder's name:
    # S3 has no folders, so objects are what counts).
    output = store.uri("processed", END_DATE.isoformat())
    assert all(f.startswith(output + "/") for f in fs.files_under(store.uri("processed")))


def train_command(store: S3Store, root: Path) -> list[str]:
    """Two Horovod ranks (Gloo) training from the processed data on S3 with the arrow feeder, their
    run directory on S3 too; the S3 settings travel in a --config file (the job's ``spark``
    section), as a user would pass them."""
    settings = root / "s3.yaml"
    settings.write_text(yaml.safe_dump({"spark": store.spark_conf}))
    data, run = store.uri("processed", END_DATE.isoformat()), store.uri("runs", "deepfm")
    args = f"--data {data} --output {run} --model deepfm --loader arrow --epochs 1 --batch-size 256"
    return horovodrun_command(2, "localhost:2", [*args.split(), "--config", str(settings), "--set", "prefetch=0"])


def horovod(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, env={**JOB_ENV, "OMP_NUM_THREADS": "1"}, cwd=cwd,
                            timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


@pytest.fixture(scope="module")
def trained(store, processed, tmp_path_factory) -> dict:
    """A training run on S3, then the same command again: it resumes the checkpoint on S3."""
    root = tmp_path_factory.mktemp("train")
    command = train_command(store, root)
    horovod(command, root)
    first = fs.read_json(store.uri("runs", "deepfm", "summary.json"))
    again = horovod(command, root)
    return first | {"local": sorted(p.name for p in root.iterdir()), "again": again.stderr}


def test_two_ranks_train_from_the_object_store(trained):
    assert trained["world_size"] == 2 and trained["loader"] == "arrow" and trained["global_step"] > 0
    # ~3000 training rows in row groups of 500: three groups a rank, five or six batches of 256 each
    assert trained["global_step"] >= 5 and 0 < trained["val_auc"] < 1  # and validated on S3's validation day


def test_training_writes_its_run_directory_to_the_object_store_and_resumes_from_it(store, trained):
    run = store.uri("runs", "deepfm")
    assert trained["output"] == run and trained["bundle"] == fs.join(run, "bundle")
    assert trained["local"] == ["s3.yaml"]  # nothing of the run on the local disk
    written = {f.removeprefix(run + "/") for f in fs.files_under(run)}
    assert {"checkpoints/latest.pt", "metrics.json", "summary.json", "train.log", "bundle/bundle.json",
            "bundle/weights.pt", "bundle/validation_metrics.pt"} <= written  # fmt: skip
    assert not any(f.startswith(".") or "/." in f for f in written)  # no staged object left behind
    assert f"resuming from {fs.join(run, 'checkpoints', 'latest.pt')}" in trained["again"]
    metrics = fs.read_json(fs.join(run, "metrics.json"))
    assert metrics["resumed_at_steps"] == [trained["global_step"]]
    log = fs.read_text(fs.join(run, "train.log"))
    assert log.count("rank0 INFO") > 5 and "resuming from" in log  # both runs' lines, uploaded
    bundle = load_bundle(trained["bundle"])  # rebuilt from S3 alone
    assert bundle.name == "deepfm" and bundle.validation is not None


@pytest.fixture(scope="module")
def scored(store, cluster, wheel, raw, trained, tmp_path_factory) -> list[dict]:
    """``END_DATE`` scored twice on the cluster into a Delta table on S3 (the rerun replaces the day):
    the executors load the bundle from S3 inside ``mapInArrow`` with the project from the wheel."""
    cwd = tmp_path_factory.mktemp("scoring")
    args = ("score", "--date", END_DATE.isoformat(), "--model", trained["bundle"], "--input", raw,
            "--table", store.uri("delta", "scores"))  # fmt: skip
    summaries = []
    for _ in range(2):
        result = submit(store, cluster, wheel, cwd, *args)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
        summaries.append(json.loads(result.stdout.strip().splitlines()[-1]))
    return summaries


def test_scoring_on_the_cluster_into_delta_on_s3_reconciles_and_a_rerun_replaces_the_day(
    spark, store, trained, scored, cluster_root
):
    first, second = scored
    assert first["reconciled"] and second["reconciled"]
    assert first["rows_in"] == ROWS_PER_DAY == first["scored"] + first["rejected"] and first["rejected"] > 0
    assert second["version"] > first["version"]
    assert first["model_version"] == load_bundle(trained["bundle"]).version  # the bundle on S3, on no disk
    assert executors_ran(cluster_root) == [4, 4]  # two preprocessing and two scoring runs, on both workers
    for key, value in SMALL.items():
        spark.conf.set(key, value)
    hadoop = spark.sparkContext._jsc.hadoopConfiguration()
    for key, value in store.spark_conf.items():
        hadoop.set(key.removeprefix("spark.hadoop."), value)
    day = spark.read.format("delta").load(store.uri("delta", "scores")).where(f"date = '{END_DATE}'")
    assert day.count() == second["scored"]  # the rerun replaced the day: no row twice
    assert day.select("scored_at").distinct().count() == 1  # all from one run


@pytest.fixture(scope="module")
def reported(store, cluster, wheel, trained, scored, tmp_path_factory) -> dict:
    """The day's model report from the bundle and the Delta metrics table on S3, written to S3."""
    cwd = tmp_path_factory.mktemp("report")
    result = submit(store, cluster, wheel, cwd, "report", "--bundle", trained["bundle"], "--metrics-table",
                    store.uri("delta", "scores_metrics"), "--output", store.uri("reports", END_DATE.isoformat()),
                    "--date", END_DATE.isoformat())  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    # No file beside the driver (Spark's catalog leaves an empty spark-warehouse/ there, as scoring's does).
    assert [p for p in cwd.rglob("*") if not p.is_dir()] == []
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_report_of_a_bundle_on_s3_is_written_to_s3(store, reported):
    output = store.uri("reports", END_DATE.isoformat())
    assert reported["report"] == fs.join(output, "report.html") and reported["days"] == 1  # a rerun replaced the day
    assert {fs.name(f) for f in fs.files_under(output)} == {"report.html", "roc.png", "calibration.png",
                                                             "daily_metrics.png", "summary.json"}  # fmt: skip
    assert 'src="roc.png"' in fs.read_text(reported["report"])
    assert fs.read_json(fs.join(output, "summary.json")) == reported


def test_a_staged_folder_on_the_object_store_replaces_its_target_or_leaves_it(store):
    target = store.uri("staged", "out")
    with fs.staged_uri(target) as staging:
        fs.put_text(fs.join(staging, "day=1", "part.parquet"), "data")
        fs.put_text(fs.join(staging, "summary.json"), "{}")
    with pytest.raises(RuntimeError), fs.staged_uri(target) as staging:
        fs.put_text(fs.join(staging, "summary.json"), "half")
        raise RuntimeError("a failed job")
    assert fs.files_under(store.uri("staged")) == [f"{target}/day=1/part.parquet", f"{target}/summary.json"]
    assert fs.read_text(f"{target}/summary.json") == "{}"
