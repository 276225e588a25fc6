"""Airflow DAG of the daily CTR pipeline: preprocess >> train >> score >> report, once a day.

Airflow runs in its own virtualenv (``.airflow-venv``, see requirements-airflow.txt); each task
shells out to the pipeline's CLI in the project's virtualenv, the same command a user types,
so a task's skip-if-done markers, logs and failure tails are the pipeline's own. ``ds`` (the
logical date of the run) is the pipeline's run date D. ``catchup`` backfills missed days in
order (``max_active_runs=1``: each day warm-starts from the day before).

Settings come from the environment of the scheduler:
  DEEPFM_REPO      checkout of this repository (default: this file's parent's parent)
  DEEPFM_WORKDIR   pipeline work directory (default: conf/pipeline.yaml's workdir)
  DEEPFM_CONFIG    a pipeline settings file (--config): on a cluster, its storage and raw_dir
                   (s3a:// URIs) and its spark section (master, S3 endpoint) reach every step
  DEEPFM_START     first run date of the schedule (default 2026-11-01)
  DEEPFM_LAUNCHER  who starts the training's ranks (default: conf/pipeline.yaml's launcher)
"""

from __future__ import annotations

import itertools
import os
from datetime import datetime, timedelta
from pathlib import Path

from airflow import DAG
from airflow.operators.bash import BashOperator

REPO = Path(os.environ.get("DEEPFM_REPO", Path(__file__).resolve().parent.parent))
PYTHON = REPO / ".venv" / "bin" / "python"
WORKDIR = os.environ.get("DEEPFM_WORKDIR", "")
CONFIG = os.environ.get("DEEPFM_CONFIG", "")
START = datetime.fromisoformat(os.environ.get("DEEPFM_START", "2026-11-01"))
LAUNCHER = os.environ.get("DEEPFM_LAUNCHER", "")
STEPS = ("preprocess", "train", "score", "report")


def step_command(step: str) -> str:
    options = (
        (f" --workdir {WORKDIR}" if WORKDIR else "")
        + (f" --config {CONFIG}" if CONFIG else "")
        + (f" --launcher {LAUNCHER}" if LAUNCHER else "")
    )
    return f"cd {REPO} && {PYTHON} pipelines/daily.py{options} run --date {{{{ ds }}}} --step {step}"


with DAG(
    dag_id="deepfm_daily_ctr",
    description="Daily DeepFM CTR pipeline: Spark preprocessing, Horovod training, Delta scoring",
    schedule="@daily",
    start_date=START,
    catchup=True,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5), "depends_on_past": True},
    tags=["ctr", "deepfm"],
) as dag:
    tasks = [BashOperator(task_id=step, bash_command=step_command(step)) for step in STEPS]
    for upstream, downstream in itertools.pairwise(tasks):
        upstream >> downstream
