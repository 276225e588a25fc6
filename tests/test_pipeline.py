"""The daily pipeline end to end on generated logs: real spark-submit, horovodrun and Delta.

One module-scoped run of ``pipelines/daily.py run`` (the CLI a user types) feeds the
assertions; the Airflow test then runs the DAG with ``airflow dags test`` for the next day.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from pyspark.sql import functions as F
from testkit import REPO as REPO_ROOT

from deepfm.core.tracking import TrackingSettings
from deepfm.models.bundle import load_bundle
from deepfm.serving.score import ScoreOptions
from deepfm.serving.score import run as run_scoring

pytestmark = pytest.mark.slow

RUN_DATE = dt.date(2026, 11, 20)
TRAIN_DAYS = 3
ROWS_PER_DAY = 3000
AIRFLOW_BIN = REPO_ROOT / ".airflow-venv" / "bin" / "airflow"


def write_conf(conf_dir: Path) -> None:
    """A copy of the packaged defaults whose pipeline settings train small and fast."""
    shutil.copytree(REPO_ROOT / "deepfm" / "conf", conf_dir, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__*"))
    pipeline = (conf_dir / "pipeline.yaml").read_text()
    pipeline = pipeline.replace("train_days: 7", f"train_days: {TRAIN_DAYS}")
    pipeline = pipeline.replace('train_args: ["--epochs", "2"]', 'train_args: ["--epochs", "1", "--batch-size", "256"]')
    (conf_dir / "pipeline.yaml").write_text(pipeline)


def pipeline_cli(workdir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "pipelines" / "daily.py"), "--workdir", str(workdir), "--quiet", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )


@pytest.fixture(scope="module")
def pipeline_env(tmp_path_factory) -> dict[str, str]:
    conf_dir = tmp_path_factory.mktemp("conf")
    write_conf(conf_dir)
    environ = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # the workdir's own store
    return {**environ, "DEEPFM_CONF_DIR": str(conf_dir), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, pipeline_env) -> Path:
    root = tmp_path_factory.mktemp("pipeline")
    days = TRAIN_DAYS + 3  # D-4..D for the first run, and D+1 for the Airflow run
    subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "jobs" / "generate_logs.py"),
            "--output",
            str(root / "raw"),
            "--days",
            str(days),
            "--rows-per-day",
            str(ROWS_PER_DAY),
            "--start-date",
            (RUN_DATE - dt.timedelta(days=TRAIN_DAYS + 1)).isoformat(),
            "--seed",
            "3",
            "--malformed-fraction",
            "0.01",
        ],
        check=True,
        env=pipeline_env,
    )
    result = pipeline_cli(root, pipeline_env, "run", "--date", RUN_DATE.isoformat())
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return root


def store(workdir: Path) -> str:
    """The pipeline's MLflow store: its default, a SQLite database in the work directory."""
    return f"sqlite:///{workdir / 'mlflow.db'}"


def markers(root: Path, day: dt.date) -> dict[str, dict]:
    return {
        step: json.loads((root / "markers" / day.isoformat() / f"{step}.json").read_text())["summary"]
        for step in ("preprocess", "train", "score", "report")
    }


def raw_lines(root: Path, day: dt.date) -> int:
    return sum(len(p.read_text().splitlines()) for p in (root / "raw" / f"date={day.isoformat()}").glob("*.tsv"))


def delta_day(spark, root: Path, day: dt.date):
    table = spark.read.format("delta").load(str(root / "delta" / "ctr_scores"))
    return table.where(F.col("date") == F.lit(day.isoformat()).cast("date"))


def delta_versions(spark, root: Path) -> int:
    return spark.sql(f"DESCRIBE HISTORY delta.`{root / 'delta' / 'ctr_scores'}`").count()


def test_every_stage_reconciles(workdir, spark):
    summary = markers(workdir, RUN_DATE)
    pre = summary["preprocess"]["totals"]
    assert pre["rows_read"] == pre["rows_written"] + pre["rows_quarantined"]
    assert pre["rows_read"] == sum(
        raw_lines(workdir, RUN_DATE - dt.timedelta(days=i)) for i in range(1, TRAIN_DAYS + 2)
    )
    assert pre["rows_quarantined"] > 0  # the generator planted malformed rows

    train = summary["train"]
    assert train["world_size"] == 2
    assert train["val_auc"] > 0.55, train  # tiny data, one epoch: learning, not converged
    registry = MlflowClient(store(workdir))
    assert train["registered_version"] == "1" and train["promoted"]
    version = registry.get_model_version_by_alias("deepfm-ctr", "production")
    assert str(version.version) == "1" and version.tags["run_date"] == RUN_DATE.isoformat()
    assert version.tags["spec_version"] == summary["preprocess"]["spec_version"]
    assert registry.get_run(train["mlflow_run_id"]).data.tags["spec_version"] == version.tags["spec_version"]

    score = summary["score"]
    assert score["rows_in"] == raw_lines(workdir, RUN_DATE) == score["scored"] + score["rejected"]
    day = delta_day(spark, workdir, RUN_DATE)
    assert day.count() == score["scored"]
    assert day.select("impression_id").distinct().count() == score["scored"]
    assert day.where((F.col("ctr") < 0) | (F.col("ctr") > 1)).count() == 0

    report = Path(summary["report"]["report"])
    assert report.exists() and RUN_DATE.isoformat() in report.read_text()
    assert summary["report"]["day_auc"] == pytest.approx(score["auc"])


def test_rerun_skips_every_step_and_leaves_the_table_unchanged(workdir, spark, pipeline_env):
    before_rows, before_versions = delta_day(spark, workdir, RUN_DATE).count(), delta_versions(spark, workdir)
    result = pipeline_cli(workdir, pipeline_env, "run", "--date", RUN_DATE.isoformat())
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert all(summary[step].get("skipped") for step in ("preprocess", "train", "score", "report")), summary
    assert delta_versions(spark, workdir) == before_versions

    forced = pipeline_cli(workdir, pipeline_env, "run", "--date", RUN_DATE.isoformat(), "--step", "score", "--force")
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert delta_day(spark, workdir, RUN_DATE).count() == before_rows  # replaced, not duplicated
    assert delta_versions(spark, workdir) > before_versions


def test_failed_step_stops_the_run_with_its_log_tail(workdir, pipeline_env):
    missing_day = RUN_DATE + dt.timedelta(days=30)
    result = pipeline_cli(workdir, pipeline_env, "run", "--date", missing_day.isoformat(), "--step", "preprocess")
    assert result.returncode == 1
    assert "step preprocess failed" in result.stderr
    assert not (workdir / "markers" / missing_day.isoformat() / "preprocess.json").exists()


@pytest.mark.skipif(not AIRFLOW_BIN.exists(), reason="Airflow's virtualenv is created by make setup")
def test_airflow_dag_loads_and_runs_the_next_day(workdir, pipeline_env, tmp_path, spark):
    config = tmp_path / "pipeline.yaml"  # a settings file the DAG passes on (DEEPFM_CONFIG): the defaults' model
    config.write_text("model: deepfm\n")
    airflow_env = {
        **pipeline_env,
        "DEEPFM_CONFIG": str(config),
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "pipelines"),
        "DEEPFM_WORKDIR": str(workdir),
        "DEEPFM_START": RUN_DATE.isoformat(),
    }
    python = AIRFLOW_BIN.parent / "python"
    subprocess.run([str(AIRFLOW_BIN), "db", "migrate"], check=True, capture_output=True, env=airflow_env, timeout=300)
    check = (
        "from airflow.models import DagBag; import os, json;"
        "b = DagBag(os.environ['AIRFLOW__CORE__DAGS_FOLDER'], include_examples=False);"
        "d = b.get_dag('deepfm_daily_ctr');"
        "print(json.dumps({'errors': {k: str(v) for k, v in b.import_errors.items()},"
        "'tasks': {t.task_id: sorted(t.downstream_task_ids) for t in d.tasks},"
        "'catchup': d.catchup, 'schedule': str(d.schedule_interval), 'retries': d.default_args['retries'],"
        "'commands': {t.task_id: t.bash_command for t in d.tasks}}))"
    )
    loaded = subprocess.run([str(python), "-c", check], capture_output=True, text=True, env=airflow_env, timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    dag = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert dag["errors"] == {}
    assert dag["tasks"] == {"preprocess": ["train"], "train": ["score"], "score": ["report"], "report": []}
    assert dag["catchup"] is True and dag["schedule"] == "@daily" and dag["retries"] >= 1
    assert all(f"--workdir {workdir} --config {config} run" in command for command in dag["commands"].values())

    next_day = RUN_DATE + dt.timedelta(days=1)
    run = subprocess.run(
        [str(AIRFLOW_BIN), "dags", "test", "deepfm_daily_ctr", next_day.isoformat()],
        capture_output=True,
        text=True,
        env=airflow_env,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    summary = markers(workdir, next_day)
    assert summary["score"]["scored"] == delta_day(spark, workdir, next_day).count() > 0
    shared = [(RUN_DATE - dt.timedelta(days=k)).isoformat() for k in range(TRAIN_DAYS, 0, -1)]
    assert summary["preprocess"]["day_cache"]["reused"] == {"validation": shared, "value_counts": shared[:-1]}
    warm_start = (workdir / "logs" / next_day.isoformat() / "train.log").read_text().splitlines()[0]
    assert f"--warm-start {workdir / 'models' / RUN_DATE.isoformat() / 'bundle'}" in warm_start

    # The registry: one version per day, the alias on the newest; scoring by alias, and a rollback.
    registry = MlflowClient(store(workdir))
    assert summary["train"]["registered_version"] == "2"
    assert str(registry.get_model_version_by_alias("deepfm-ctr", "production").version) == "2"
    tracking = TrackingSettings(tracking_uri=store(workdir))
    by_alias = ScoreOptions(next_day, "models:/deepfm-ctr@production", str(tmp_path / "alias_scores"),
                            str(workdir / "raw"), tracking=tracking)  # fmt: skip
    assert (
        run_scoring(spark, by_alias)["model_version"]
        == load_bundle(workdir / "models" / next_day.isoformat() / "bundle").version
    )
    rollback = pipeline_cli(workdir, pipeline_env, "promote", "--version", "1")
    assert rollback.returncode == 0, rollback.stderr[-3000:]
    assert str(registry.get_model_version_by_alias("deepfm-ctr", "production").version) == "1"
    assert (
        run_scoring(spark, by_alias)["model_version"]
        == load_bundle(workdir / "models" / RUN_DATE.isoformat() / "bundle").version
    )


def test_one_run_of_a_date_at_a_time_while_dates_run_side_by_side(workdir, pipeline_env):
    """Three runs at once: two of one date (one is refused, naming the other) and one of the next
    date; the two that run share the days of their windows in the day cache."""
    next_day = RUN_DATE + dt.timedelta(days=1)
    before = {day: markers(workdir, day)["preprocess"] for day in (RUN_DATE, next_day)}
    runs = [(day, preprocess_cli(workdir, pipeline_env, day)) for day in (RUN_DATE, next_day, RUN_DATE)]
    done = [(day, proc.wait(timeout=900), proc) for day, proc in runs]
    refused = [proc for day, code, proc in done if code == 2]
    assert len(refused) == 1 and sorted(code for _, code, _ in done) == [0, 0, 2]
    assert "is held by another run (host" in refused[0].stderr.read()  # type: ignore[union-attr]
    for day in (RUN_DATE, next_day):  # the same outputs as the runs one after the other
        after = markers(workdir, day)["preprocess"]
        assert after["days"] == before[day]["days"] and after["spec_version"] == before[day]["spec_version"]


def preprocess_cli(workdir: Path, env: dict[str, str], day: dt.date) -> subprocess.Popen:
    command = [sys.executable, str(REPO_ROOT / "pipelines" / "daily.py"), "--workdir", str(workdir), "--quiet"]
    command += ["run", "--date", day.isoformat(), "--step", "preprocess", "--force"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)


def test_late_data_retrains_and_scores_with_the_new_model(workdir, pipeline_env, spark):
    """A training day of RUN_DATE is delivered again with more lines after its run finished; the
    rerun's steps up to scoring (the report is the same mechanism once more)."""
    late_day = RUN_DATE - dt.timedelta(days=2)
    day_file = next((workdir / "raw" / f"date={late_day.isoformat()}").glob("*.tsv"))
    lines = day_file.read_text().splitlines(keepends=True)
    day_file.write_text("".join(lines + lines[:500]))
    old_bundle = load_bundle(workdir / "models" / RUN_DATE.isoformat() / "bundle")
    summary = {}
    for step in ("preprocess", "train", "score"):
        result = pipeline_cli(workdir, pipeline_env, "run", "--date", RUN_DATE.isoformat(), "--step", step)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        summary.update(json.loads(result.stdout.strip().splitlines()[-1]))
    assert not any(summary[step].get("skipped") for step in ("preprocess", "train", "score"))
    assert summary["preprocess"]["days"][late_day.isoformat()]["rows_read"] == len(lines) + 500
    model = workdir / "models" / RUN_DATE.isoformat()
    new_bundle = load_bundle(model / "bundle")
    assert new_bundle.version != old_bundle.version and new_bundle.spec.version == summary["preprocess"]["spec_version"]
    assert json.loads((model / "metrics.json").read_text())["resumed_at_steps"] == []  # trained, not resumed
    assert len(list((model / "superseded").iterdir())) == 1  # the earlier run, kept aside
    assert summary["score"]["model_version"] == new_bundle.version
    assert delta_day(spark, workdir, RUN_DATE).count() == summary["score"]["scored"]
