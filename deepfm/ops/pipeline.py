"""The daily pipeline: preprocess → train → score → report for one run date, as real subprocesses.

For run date D (the newest day of logs): preprocess with D-1 as the validation day and the
``train_days`` before it for training (no test day: D is held out), train (warm-started from the
newest earlier bundle, selected on D-1), then score day D into the Delta table, and write the
day's model report. Each step is the
command a user would type (``spark-submit``, ``horovodrun``), run with its own log; each writes
a JSON summary file that the pipeline reads back. A step that finished writes a marker holding a
fingerprint of its command and inputs; a rerun skips it while the fingerprint matches (``force``
reruns everything). A failed step stops the run with its log tail, and the next run starts again
from that step.

The data of a run lives under the storage root, a path or any URI (``s3a://bucket/ctr``: the
jobs reach it through Spark's Hadoop file systems and ``deepfm.core.fs``; by default the work
directory); the raw logs may be anywhere too::

    raw/date=YYYY-MM-DD/...         raw click logs (input; the default raw folder)
    processed/<D>/                  preprocessing output for run date D
    day_cache/                      each raw day's validation and value counts, kept between runs
    models/<D>/bundle/              the model trained for D, a version of the registered model; the
                                    alias (production) names the newest trained date's
    delta/ctr_scores/               scored impressions (Delta, partitioned by date)
    delta/ctr_scores_metrics/       one row per scoring run (Delta)
    rejects/<D>/                    rows scoring could not parse
    reports/<D>/report.html         the model's ROC and calibration, daily metrics over time

What belongs to the machine that runs the pipeline stays in its local work directory::

    mlflow.db, mlartifacts/         the MLflow store of every step's runs and the model registry
    logs/<D>/<step>.log             each step's full output (and score.json, scoring's summary)
    markers/<D>/<step>.json         success markers (fingerprint + the step's JSON summary)
    locks/<D>.lock                  held by the run of date D (one run of a date at a time)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from deepfm import ENTRY_POINT
from deepfm.core import fs
from deepfm.core import tracking as tracking_store
from deepfm.core.features import FORMAT_VERSION
from deepfm.core.tracking import TrackingSettings
from deepfm.ops.locks import exclusive
from deepfm.training.artifacts import SUMMARY
from deepfm.training.launch import LaunchSettings, train_command

log = logging.getLogger(__name__)

STEPS = ("preprocess", "train", "score", "report")
LOG_TAIL_LINES = 40


class StepFailed(RuntimeError):
    """A pipeline step exited non-zero; the message carries its log tail."""


@dataclass(frozen=True)
class PipelineSettings:
    """What a run needs besides the date; the command line fills it from ``deepfm/conf/pipeline.yaml``."""

    workdir: Path  # local: markers, locks, logs, the default MLflow store
    raw_dir: str  # a path or URI
    storage: str  # a path or URI: processed data, models, Delta tables, rejects, reports, day cache
    model: str = "deepfm"
    train_days: int = 7
    num_workers: int = 2
    hosts: str = "localhost:2"
    launcher: str = "horovodrun"  # deepfm train --launcher
    train_args: tuple[str, ...] = ()
    preprocess_args: tuple[str, ...] = ()
    score_args: tuple[str, ...] = ()
    spark_submit: tuple[str, ...] = ()  # spark-submit's own arguments (ops.spark.spark_submit_args)
    spark: Mapping[str, str] = field(default_factory=dict)  # every step's Spark and S3 settings (see build_steps)
    python: str = sys.executable
    registered_model: str = "deepfm-ctr"  # each day's model is a version of it
    alias: str = "production"  # follows the newest trained date
    tracking: TrackingSettings = field(default_factory=TrackingSettings)  # tracking_uri resolved: one store


@dataclass(frozen=True)
class RunPaths:
    """Where run date ``date``'s inputs and outputs live: its data under ``storage`` (a path or
    URI; empty: the work directory ``root``), its markers, locks and logs under ``root``."""

    root: Path
    date: dt.date
    storage: str = ""

    @property
    def day(self) -> str:
        return self.date.isoformat()

    def data(self, *parts: str) -> str:
        return fs.join(self.storage or self.root, *parts)

    @property
    def processed(self) -> str:
        return self.data("processed", self.day)

    @property
    def day_cache(self) -> str:
        return self.data("day_cache")

    @property
    def models(self) -> str:
        return self.data("models")

    @property
    def model_run(self) -> str:
        return fs.join(self.models, self.day)

    @property
    def bundle(self) -> str:
        return fs.join(self.model_run, "bundle")

    @property
    def scores_table(self) -> str:
        return self.data("delta", "ctr_scores")

    @property
    def metrics_table(self) -> str:
        return self.data("delta", "ctr_scores_metrics")

    @property
    def rejects(self) -> str:
        return self.data("rejects")

    @property
    def report(self) -> str:
        return self.data("reports", self.day)

    @property
    def logs(self) -> Path:
        return self.root / "logs" / self.day

    @property
    def lock(self) -> Path:
        return self.root / "locks" / f"{self.day}.lock"

    def marker(self, step: str) -> Path:
        return self.root / "markers" / self.day / f"{step}.json"


@dataclass(frozen=True)
class Step:
    """One subprocess of the run: its command, the summary file it writes, and what its
    fingerprint depends on."""

    name: str
    command: list[str]
    summary_file: str  # a path or URI
    input_dirs: tuple[str, ...] = ()  # paths or URIs
    upstream: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    force_args: tuple[str, ...] = ()  # added when forced (not part of the fingerprint): redo, do not resume
    on_success: Callable[[dict[str, Any]], dict[str, Any]] | None = None  # adds to the summary


def previous_bundle(paths: RunPaths) -> str | None:
    """The newest bundle trained for a date before ``paths.date`` (for warm starts)."""
    candidates = []
    for marker in (paths.root / "markers").glob("*/train.json"):
        day = dt.date.fromisoformat(marker.parent.name)
        bundle = fs.join(paths.models, day.isoformat(), "bundle")
        if day < paths.date and fs.exists(bundle):
            candidates.append((day, bundle))
    return max(candidates)[1] if candidates else None


def _options(**values: object) -> list[str]:
    """``--key value`` pairs in order (underscores in keys as dashes)."""
    return [item for key, value in values.items() for item in (f"--{key.replace('_', '-')}", str(value))]


def _conf_options(spark: Mapping[str, str]) -> list[str]:
    """Spark settings as spark-submit's ``--conf key=value`` pairs."""
    return [item for key, value in spark.items() for item in ("--conf", f"{key}={value}")]


def _tracking_options(tracking: TrackingSettings) -> list[str]:
    """The step's MLflow settings as ``--set`` options: every step tracks to the pipeline's store."""
    values = {
        "enabled": str(tracking.enabled).lower(),
        "tracking_uri": tracking.tracking_uri,
        "experiment": tracking.experiment,
    }
    return [item for key, value in values.items() for item in ("--set", f"tracking.mlflow.{key}={value}")]


def day_roles(date: dt.date, train_days: int) -> dict[str, str]:
    """Each day's role in run date ``date``: the training days, the validation day that selects
    the model (early stopping, the kept bundle), and the scored day, which no step before
    scoring opens."""
    validation = date - dt.timedelta(days=1)
    first, last = validation - dt.timedelta(days=train_days), validation - dt.timedelta(days=1)
    return {"train": f"{first}..{last}", "validation": validation.isoformat(), "scored": date.isoformat()}


def build_steps(settings: PipelineSettings, paths: RunPaths) -> list[Step]:
    """The steps of run date ``paths.date``, as the commands a user would type. ``settings.spark``
    reaches every step: spark-submit's ``--conf`` (a master, ``spark.submit.pyFiles``, S3A's
    endpoint) and training's ``spark`` section (how its ranks reach S3)."""
    venv_bin = Path(settings.python).parent
    validation_day = dt.date.fromisoformat(day_roles(paths.date, settings.train_days)["validation"])
    spark_submit = [str(venv_bin / "spark-submit"), *settings.spark_submit, *_conf_options(settings.spark), ENTRY_POINT]
    tracking = _tracking_options(settings.tracking)
    ranks_spark = ["--set", f"spark={json.dumps(dict(settings.spark))}"] if settings.spark else []
    preprocess = Step(
        "preprocess",
        [*spark_submit, "preprocess", *_options(
            input=settings.raw_dir, output=paths.processed, end_date=validation_day.isoformat(),
            train_days=settings.train_days, validation_days=1, test_days=0, day_cache=paths.day_cache,
        ), *settings.preprocess_args],
        summary_file=fs.join(paths.processed, "summary.json"),
        input_dirs=tuple(fs.join(settings.raw_dir, f"date={(validation_day - dt.timedelta(days=i)).isoformat()}")
                         for i in range(settings.train_days + 1)),
    )  # fmt: skip
    warm = previous_bundle(paths)
    train_args = [
        *_options(data=paths.processed, output=paths.model_run, model=settings.model),
        *(_options(warm_start=warm) if warm else []), *tracking, *ranks_spark, *settings.train_args,
    ]  # fmt: skip
    train = Step(
        "train",
        train_command(
            LaunchSettings(settings.launcher, settings.num_workers, settings.hosts),
            train_args,
            settings.python,
            spark_submit,
        ),
        summary_file=fs.join(paths.model_run, SUMMARY),
        upstream=("preprocess",),
        force_args=("--fresh",),
        on_success=partial(publish, settings, paths),
    )
    score = Step(
        "score",
        [*spark_submit, "score", *_options(
            date=paths.day, model=paths.bundle, input=settings.raw_dir, table=paths.scores_table,
            metrics_table=paths.metrics_table, rejects=paths.rejects, summary=paths.logs / "score.json",
        ), *tracking, *settings.score_args],
        summary_file=str(paths.logs / "score.json"),
        input_dirs=(fs.join(settings.raw_dir, f"date={paths.day}"),),
        upstream=("train",),
    )  # fmt: skip
    report = Step(
        "report",
        [*spark_submit, "report", *_options(
            bundle=paths.bundle, metrics_table=paths.metrics_table, output=paths.report, date=paths.day,
        )],
        summary_file=fs.join(paths.report, "summary.json"),
        upstream=("score",),
    )  # fmt: skip
    return [preprocess, train, score, report]


def fingerprint(step: Step, paths: RunPaths) -> str:
    """Hash of the command, the input files (names and sizes), the upstream fingerprints and the
    feature-spec format (outputs of an older format, which this code refuses to read, are redone)."""
    upstream = [read_marker(paths, name).get("fingerprint") for name in step.upstream]
    listings = [sorted(fs.sizes_under(d).items()) for d in step.input_dirs]
    payload = json.dumps([FORMAT_VERSION, step.command, listings, upstream])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def read_marker(paths: RunPaths, step: str) -> dict[str, Any]:
    marker = paths.marker(step)
    return json.loads(marker.read_text()) if marker.exists() else {}


def run_command(step: Step, log_path: Path, echo: Callable[[str], None]) -> None:
    """Run ``step.command``, streaming its output to ``log_path`` and to ``echo``; a failure raises
    ``StepFailed`` with the output's tail."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: deque[str] = deque(maxlen=400)
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYTHONUNBUFFERED": "1", **step.env}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    with (
        log_path.open("w") as log_file,
        subprocess.Popen(step.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc,
    ):
        log_file.write("$ " + " ".join(step.command) + "\n")
        for line in proc.stdout:  # type: ignore[union-attr]
            log_file.write(line)
            tail.append(line.rstrip("\n"))
            echo(line.rstrip("\n"))
    if proc.returncode != 0:
        excerpt = "\n".join(list(tail)[-LOG_TAIL_LINES:])
        raise StepFailed(f"step {step.name} failed (exit {proc.returncode}); log {log_path}:\n{excerpt}")


def run_step(
    step: Step, paths: RunPaths, force: bool = False, echo: Callable[[str], None] = lambda line: None
) -> dict[str, Any]:
    """Run one step unless its marker says it already finished with the same fingerprint."""
    fp = fingerprint(step, paths)
    marker = read_marker(paths, step.name)
    if not force and marker.get("fingerprint") == fp:
        log.info("[%s] %s: already done (marker %s), skipping", paths.day, step.name, paths.marker(step.name))
        return {**marker.get("summary", {}), "skipped": True}
    paths.marker(step.name).unlink(missing_ok=True)
    log.info("[%s] %s: running (log %s)", paths.day, step.name, paths.logs / f"{step.name}.log")
    started = time.time()
    command = [*step.command, *step.force_args] if force else step.command
    run_command(dataclasses.replace(step, command=command), paths.logs / f"{step.name}.log", echo)
    summary = {**fs.read_json(step.summary_file), "seconds": round(time.time() - started, 1)}
    if step.on_success is not None:  # before the marker: a failure here reruns the step
        summary.update(step.on_success(summary))
    fs.write_json(paths.marker(step.name), {"fingerprint": fp, "summary": summary})
    log.info("[%s] %s: done in %.0f s", paths.day, step.name, summary["seconds"])
    return summary


def publish(settings: PipelineSettings, paths: RunPaths, train_summary: dict[str, Any]) -> dict[str, Any]:
    """Register the day's bundle (logged by its training run) as a version of the registered model,
    tagged with its data, and move the alias to it when it is the newest trained date."""
    run_id = train_summary.get("mlflow_run_id")
    if not settings.tracking.enabled or not run_id:
        return {}
    spec = fs.read_json(fs.join(paths.processed, "summary.json"))
    tags = {
        "run_date": paths.day, "train_days": ",".join(spec["train_days"]),
        "validation_days": ",".join(spec["validation_days"]),
        "spec_version": spec["spec_version"], "bundle": str(paths.bundle),
    }  # fmt: skip
    name, tracking = settings.registered_model, settings.tracking
    version = tracking_store.register(tracking, paths.root, name, run_id, "bundle", tags)
    current = tracking_store.alias_version(tracking, paths.root, name, settings.alias)
    promoted = current is None or current[1].get("run_date", "") <= paths.day
    if promoted:
        tracking_store.promote(tracking, paths.root, name, version, settings.alias)
    return {"registered_model": name, "registered_version": version, "promoted": promoted}


def run_date(
    settings: PipelineSettings,
    date: dt.date,
    force: bool = False,
    only: str | None = None,
    echo: Callable[[str], None] = lambda line: None,
) -> dict[str, dict[str, Any]]:
    """Run (or resume) every step of one run date, holding the date's lock (``locks.Locked`` when
    another run of the date holds it); returns each step's summary."""
    paths = RunPaths(settings.workdir, date, settings.storage)
    results: dict[str, dict[str, Any]] = {}
    roles = day_roles(date, settings.train_days)
    log.info("[%s] days: train %s, validation %s, scored %s", paths.day, *roles.values())
    with exclusive(paths.lock):
        for step in build_steps(settings, paths):
            if only is None or step.name == only:
                results[step.name] = run_step(step, paths, force=force, echo=echo)
    return results


def date_range(first: dt.date, last: dt.date) -> list[dt.date]:
    if last < first:
        raise ValueError(f"--to {last} is before --from {first}")
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
