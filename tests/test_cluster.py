"""The daily pipeline on a cluster with every data path on an object store: a real S3 server
(SeaweedFS, built by ``make setup-test``), a Spark standalone master with two workers (separate
processes and work directories), the pipeline's Spark steps submitted to it with the project
shipped as a wheel (``spark.submit.pyFiles``), reaching S3 through S3A; training on two Horovod
ranks reading from S3 with Petastorm, their run directory on S3 too; this process reads the outputs through
``deepfm.core.fs`` (pyarrow's S3 file system).

The raw logs, processed data, models, Delta tables and reports are on S3; the pipeline's work
directory keeps only its markers, locks, logs and MLflow store, and nothing is written beside the
drivers: the tests check both.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import yaml
from objectstore import CREDENTIALS, S3Store, seaweedfs
from pyspark.sql import functions as F
from sparkcluster import standalone
from testkit import ENV, PYTHON, REPO, build_wheel, deepfm_command

from deepfm.core import fs
from deepfm.core.features import FeatureSpec
from deepfm.models.bundle import load_bundle
from deepfm.serving.delta import TableRef, ensure_table
from deepfm.serving.score import SCORES_SCHEMA, ScoreOptions
from deepfm.serving.score import run as run_scoring

pytestmark = pytest.mark.slow

RUN_DATE = dt.date(2026, 11, 4)
TRAIN_DAYS = 2  # and a validation day, and the scored day RUN_DATE
ROWS_PER_DAY = 1500
STEPS = ("preprocess", "train", "score", "report")
# Tiny data: few shuffle partitions, and Delta's log replayed in 2 tasks instead of 50.
SMALL = {"spark.sql.shuffle.partitions": "2", "spark.databricks.delta.snapshotPartitions": "2"}
# The jobs' environment: the store's credentials given explicitly (testkit's ENV is a snapshot of
# this process's environment taken when testkit was first imported, maybe before objectstore's).
# The pipeline's MLflow store is its work directory's own (the default), not the test process's.
JOB_ENV = {k: v for k, v in {**ENV, **CREDENTIALS}.items() if k != "MLFLOW_TRACKING_URI"}


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
    """Generated click logs (1% malformed) of the run date's window, uploaded to the bucket's ``raw/``."""
    local = tmp_path_factory.mktemp("generated")
    start = RUN_DATE - dt.timedelta(days=TRAIN_DAYS + 1)
    args = f"--output {local} --days {TRAIN_DAYS + 2} --rows-per-day {ROWS_PER_DAY} --start-date {start} --seed 5"
    generate = deepfm_command("generate-logs", *args.split(), "--malformed-fraction", "0.01")
    subprocess.run(generate, check=True, env=JOB_ENV)
    s3, path = fs.arrow(store.uri("raw"))
    pafs.copy_files(str(local), path, destination_filesystem=s3)
    return store.uri("raw")


@dataclass(frozen=True)
class Daily:
    """The pipeline's local work directory, the folder its drivers run in, its settings file."""

    workdir: Path
    cwd: Path
    config: Path

    def run(self, *args: str) -> dict:
        """``pipelines/daily.py run ARGS``: the summary it prints for the run date."""
        command = [PYTHON, str(REPO / "pipelines" / "daily.py"), "--workdir", str(self.workdir), "--config",
                   str(self.config), "--quiet", "run", "--date", RUN_DATE.isoformat(), *args]  # fmt: skip
        result = subprocess.run(command, cwd=self.cwd, capture_output=True, text=True, env=JOB_ENV, timeout=900)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    def log(self, step: str) -> str:
        return (self.workdir / "logs" / RUN_DATE.isoformat() / f"{step}.log").read_text()


@pytest.fixture(scope="module")
def daily(store, cluster, wheel, raw, tmp_path_factory) -> Daily:
    """The pipeline's settings: its data on S3, its Spark steps on the cluster with the wheel, the
    S3A settings (for the training ranks too) in the settings file's ``spark`` section."""
    root = tmp_path_factory.mktemp("daily")
    spark = {**store.spark_conf, **SMALL, "spark.master": cluster, "spark.submit.pyFiles": str(wheel),
             "spark.driver.host": "127.0.0.1", "spark.driver.bindAddress": "127.0.0.1",
             "spark.executor.memory": "1g"}  # fmt: skip
    settings = {
        "storage": store.uri("daily"), "raw_dir": raw, "train_days": TRAIN_DAYS, "spark": spark,
        "preprocess_args": ["--row-group-rows", "500"],
        "train_args": ["--epochs", "1", "--batch-size", "256", "--set", "prefetch=0"],  # Petastorm's loader
    }  # fmt: skip
    (root / "cluster.yaml").write_text(yaml.safe_dump(settings))
    (root / "driver").mkdir()
    return Daily(root / "work", root / "driver", root / "cluster.yaml")


@pytest.fixture(scope="module")
def first_run(daily) -> dict:
    return daily.run()


def s3_session(spark, store: S3Store):
    """The test's Spark session reading the store (its Hadoop configuration set at run time)."""
    for key, value in SMALL.items():
        spark.conf.set(key, value)
    hadoop = spark.sparkContext._jsc.hadoopConfiguration()
    for key, value in store.spark_conf.items():
        hadoop.set(key.removeprefix("spark.hadoop."), value)
    return spark


def scored_day(spark, store: S3Store):
    table = spark.read.format("delta").load(store.uri("daily", "delta", "ctr_scores"))
    return table.where(F.col("date") == F.lit(RUN_DATE.isoformat()).cast("date"))


def table_versions(spark, store: S3Store) -> int:
    return spark.sql(f"DESCRIBE HISTORY delta.`{store.uri('daily', 'delta', 'ctr_scores')}`").count()


def test_the_daily_pipeline_runs_on_the_cluster_with_every_data_path_on_the_object_store(
    store, daily, first_run, cluster_root
):
    assert not any(first_run[step].get("skipped") for step in STEPS)
    assert executors_ran(cluster_root) == [3, 3]  # preprocessing, scoring and the report, on both workers
    # The local disk: the run's state only; no file beside the drivers (Spark's catalog leaves an
    # empty spark-warehouse/ there).
    assert {p.name for p in daily.workdir.iterdir()} <= {"markers", "locks", "logs", "mlflow.db", "mlartifacts"}
    assert [p for p in daily.cwd.rglob("*") if not p.is_dir()] == []
    day = RUN_DATE.isoformat()
    written = {f.removeprefix(store.uri("daily") + "/") for f in fs.files_under(store.uri("daily"))}
    assert {f"processed/{day}/feature_spec.json", f"processed/{day}/summary.json", f"models/{day}/summary.json",
            f"models/{day}/checkpoints/latest.pt", f"models/{day}/bundle/bundle.json", f"models/{day}/train.log",
            f"reports/{day}/report.html"} <= written  # fmt: skip
    assert {w.split("/")[0] for w in written} == {"processed", "day_cache", "models", "delta", "rejects", "reports"}
    assert {w.split("/")[2] for w in written if w.startswith("processed/")} == {
        "train", "validation", "quarantine", "vocabularies", "feature_spec.json", "summary.json"}  # fmt: skip
    assert not any("/." in w for w in written)  # no staged object left behind


def test_every_stage_reconciles_on_the_object_store(spark, store, daily, first_run):
    pre = first_run["preprocess"]["totals"]
    assert pre["rows_read"] == (TRAIN_DAYS + 1) * ROWS_PER_DAY == pre["rows_written"] + pre["rows_quarantined"]
    assert 0 < pre["rows_quarantined"] < pre["rows_read"] * 0.05
    spec = FeatureSpec.load(store.uri("daily", "processed", RUN_DATE.isoformat()))  # read back from S3
    assert spec.version == first_run["preprocess"]["spec_version"]

    train = first_run["train"]
    assert train["world_size"] == 2 and train["loader"] == "petastorm" and 0 < train["val_auc"] < 1
    # ~3000 training rows in row groups of 500: three groups a rank, five or six batches of 256 each
    assert train["global_step"] >= 5 and train["registered_version"] == "1" and train["promoted"]
    bundle = load_bundle(train["bundle"])  # rebuilt from S3 alone
    assert train["bundle"] == store.uri("daily", "models", RUN_DATE.isoformat(), "bundle")
    assert bundle.spec.version == spec.version and bundle.validation is not None

    score = first_run["score"]
    assert score["reconciled"] and score["rows_in"] == ROWS_PER_DAY == score["scored"] + score["rejected"]
    assert score["rejected"] > 0 and score["model_version"] == bundle.version  # the executors loaded it from S3
    day = scored_day(s3_session(spark, store), store)
    assert day.count() == score["scored"] == day.select("impression_id").distinct().count()

    report = first_run["report"]
    assert report["report"] == store.uri("daily", "reports", RUN_DATE.isoformat(), "report.html")
    assert RUN_DATE.isoformat() in fs.read_text(report["report"]) and report["day_auc"] == pytest.approx(score["auc"])


def test_two_dates_scored_at_once_by_one_driver_both_commit_to_delta_on_s3(spark, store, first_run):
    """Two threads of one session score two days into one table on S3, as in tests/test_scoring.py.
    One driver: Delta's default S3 LogStore orders its commits (several drivers need the DynamoDB
    LogStore, README); the executors reach S3 with the session's Hadoop settings, set at run time."""
    session = s3_session(spark, store)
    table = store.uri("two_dates", "scores")
    ensure_table(session, TableRef.of(table), SCORES_SCHEMA, ["date"])
    days = (RUN_DATE - dt.timedelta(days=1), RUN_DATE)
    results: dict[dt.date, object] = {}

    def score(day: dt.date) -> None:
        try:
            options = ScoreOptions(day, first_run["train"]["bundle"], table, store.uri("raw"))
            results[day] = run_scoring(session, options)
        except Exception as exc:
            results[day] = exc

    threads = [threading.Thread(target=score, args=(day,)) for day in days]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    summaries = [results[day] for day in days]
    assert all(isinstance(s, dict) for s in summaries), [str(s) for s in summaries]
    for day, summary in zip(days, summaries, strict=True):
        rows = session.read.format("delta").load(table).where(F.col("date") == F.lit(day.isoformat()).cast("date"))
        assert rows.count() == summary["scored"] > 0 and summary["reconciled"]  # type: ignore[index]
    history = session.sql(f"DESCRIBE HISTORY delta.`{table}`").where("operation = 'WRITE'").collect()
    assert sorted(h["version"] for h in history) == sorted(s["version"] for s in summaries)  # type: ignore[index]


def test_a_rerun_skips_every_step_and_leaves_the_table_unchanged(spark, store, daily, first_run):
    versions = table_versions(s3_session(spark, store), store)
    again = daily.run()
    assert all(again[step].get("skipped") for step in STEPS), again
    assert table_versions(spark, store) == versions


def test_training_resumes_from_its_checkpoint_on_the_object_store(store, daily, first_run):
    """A training whose marker is lost (killed after its last checkpoint) runs again: the same
    command resumes from the checkpoint on S3."""
    (daily.workdir / "markers" / RUN_DATE.isoformat() / "train.json").unlink()
    resumed = daily.run("--step", "train")["train"]
    run = store.uri("daily", "models", RUN_DATE.isoformat())
    assert f"resuming from {fs.join(run, 'checkpoints', 'latest.pt')}" in daily.log("train")
    assert fs.read_json(fs.join(run, "metrics.json"))["resumed_at_steps"] == [first_run["train"]["global_step"]]
    assert fs.read_text(fs.join(run, "train.log")).count("resuming from") == 1  # both runs' lines, uploaded
    assert resumed["registered_version"] == "2"


def test_forced_steps_replace_their_outputs_whole(spark, store, daily, first_run, cluster_root):
    versions = table_versions(s3_session(spark, store), store)
    preprocessed = daily.run("--step", "preprocess", "--force")["preprocess"]
    days = [(RUN_DATE - dt.timedelta(days=k)).isoformat() for k in range(TRAIN_DAYS + 1, 0, -1)]
    assert first_run["preprocess"]["day_cache"]["reused"] == {"validation": [], "value_counts": []}
    assert preprocessed["day_cache"]["reused"] == {"validation": days, "value_counts": days[:-1]}  # kept on S3
    assert preprocessed["totals"] == first_run["preprocess"]["totals"]
    assert preprocessed["spec_version"] == first_run["preprocess"]["spec_version"]
    processed = store.uri("daily", "processed")  # no staged object left beside the output
    assert all(f.startswith(fs.join(processed, RUN_DATE.isoformat()) + "/") for f in fs.files_under(processed))

    rescored = daily.run("--step", "score", "--force")["score"]
    day = scored_day(spark, store)
    assert day.count() == rescored["scored"] == first_run["score"]["scored"]  # the day replaced, no row twice
    assert rescored["model_version"] == load_bundle(first_run["train"]["bundle"]).version
    assert day.select("scored_at").distinct().count() == 1 and table_versions(spark, store) > versions
    assert executors_ran(cluster_root) == [5, 5]


def test_a_staged_folder_on_the_object_store_replaces_its_target_or_leaves_it(store):
    """A staged folder replaces its target whole or, when its block fails, leaves it as it was; the
    next writer removes what a killed writer of this host staged, never a live writer's."""
    target = store.uri("staged", "out")
    dead = subprocess.run([PYTHON, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = store.uri("staged", f".out.tmp-{fs.HOST}-{dead.stdout.strip()}-0123abcd")
    alive = store.uri("staged", f".out.tmp-{fs.HOST}-{os.getpid()}-0123abcd")
    for staged in (orphan, alive):
        fs.put_text(fs.join(staged, "part.parquet"), "staged")
    with fs.staged_uri(target) as staging:
        fs.put_text(fs.join(staging, "day=1", "part.parquet"), "data")
        fs.put_text(fs.join(staging, "summary.json"), "{}")
    with pytest.raises(RuntimeError), fs.staged_uri(target) as staging:
        fs.put_text(fs.join(staging, "summary.json"), "half")
        raise RuntimeError("a failed job")
    assert fs.files_under(store.uri("staged")) == [f"{alive}/part.parquet", f"{target}/day=1/part.parquet",
                                                   f"{target}/summary.json"]  # fmt: skip
    assert fs.read_text(f"{target}/summary.json") == "{}"
