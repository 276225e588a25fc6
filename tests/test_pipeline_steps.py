"""The pipeline's step mechanism: markers, fingerprints, failures, warm-start lookup (fast)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sys

import pytest

from deepfm.cli.config import load_defaults
from deepfm.cli.pipeline import settings_from
from deepfm.core import fs
from deepfm.ops.pipeline import (
    RunPaths,
    Step,
    StepFailed,
    build_steps,
    date_range,
    day_roles,
    previous_bundle,
    run_step,
)

DAY = dt.date(2026, 11, 20)


def counting_step(tmp_path, name="work", fail=False, input_dir=None):
    """A real subprocess that appends to a counter file, writes a JSON summary file, maybe fails."""
    counter, summary = tmp_path / f"{name}.count", tmp_path / f"{name}.json"
    code = (
        f"import json,sys; open({str(counter)!r},'a').write('x'); print('working...');"
        f"open({str(summary)!r},'w').write(json.dumps({{'rows': 3}})); sys.exit({1 if fail else 0})"
    )
    step = Step(name, [sys.executable, "-c", code], summary_file=summary, input_dirs=(input_dir,) if input_dir else ())
    return step, counter


def test_finished_step_is_skipped_until_inputs_change(tmp_path):
    inputs = tmp_path / "raw"
    inputs.mkdir()
    (inputs / "a.tsv").write_text("1\n")
    paths = RunPaths(tmp_path, DAY)
    step, counter = counting_step(tmp_path, input_dir=inputs)

    assert run_step(step, paths)["rows"] == 3
    assert run_step(step, paths)["skipped"] is True
    assert counter.read_text() == "x"

    (inputs / "b.tsv").write_text("2\n")  # a new input file changes the fingerprint
    assert "skipped" not in run_step(step, paths)
    assert run_step(step, paths, force=True)["rows"] == 3
    assert counter.read_text() == "xxx"
    assert (paths.logs / "work.log").read_text().startswith("$ ")


def test_a_forced_step_runs_with_its_force_arguments_which_are_no_part_of_its_fingerprint(tmp_path):
    """``--force`` trains from scratch (``deepfm train --fresh``); the next plain run still skips."""
    paths = RunPaths(tmp_path, DAY)
    step, _ = counting_step(tmp_path)
    step = dataclasses.replace(step, force_args=("--fresh",))
    run_step(step, paths, force=True)
    assert (paths.logs / "work.log").read_text().splitlines()[0].endswith(" --fresh")
    assert run_step(step, paths)["skipped"] is True
    settings = settings_from({**load_defaults("pipeline"), "workdir": str(tmp_path)})
    (train,) = (s for s in build_steps(settings, paths) if s.name == "train")
    assert train.force_args == ("--fresh",)


def test_failed_step_raises_with_log_tail_and_leaves_no_marker(tmp_path):
    paths = RunPaths(tmp_path, DAY)
    step, counter = counting_step(tmp_path, fail=True)
    with pytest.raises(StepFailed, match=r"(?s)step work failed \(exit 1\).*working\.\.\."):
        run_step(step, paths)
    assert not paths.marker("work").exists()
    with pytest.raises(StepFailed):  # the next run retries the failed step
        run_step(step, paths)
    assert counter.read_text() == "xx"


def test_downstream_reruns_when_upstream_reran(tmp_path):
    paths = RunPaths(tmp_path, DAY)
    up, _ = counting_step(tmp_path, "up")
    down, down_counter = counting_step(tmp_path, "down")
    down = Step(down.name, down.command, down.summary_file, upstream=("up",))
    run_step(up, paths)
    run_step(down, paths)
    run_step(up, paths, force=True)  # same fingerprint, so downstream stays done
    assert run_step(down, paths).get("skipped")
    marker = json.loads(paths.marker("up").read_text())
    marker["fingerprint"] = "changed"
    paths.marker("up").write_text(json.dumps(marker))
    assert "skipped" not in run_step(down, paths)
    assert down_counter.read_text() == "xx"


def test_previous_bundle_is_newest_earlier_trained_date(tmp_path):
    for day in ("2026-11-17", "2026-11-18", "2026-11-21"):
        (tmp_path / "models" / day / "bundle").mkdir(parents=True)
        (tmp_path / "markers" / day).mkdir(parents=True)
        (tmp_path / "markers" / day / "train.json").write_text("{}")
    (tmp_path / "models" / "2026-11-19" / "bundle").mkdir(parents=True)  # no marker: failed run
    assert previous_bundle(RunPaths(tmp_path, DAY)) == str(tmp_path / "models" / "2026-11-18" / "bundle")
    assert previous_bundle(RunPaths(tmp_path, dt.date(2026, 11, 17))) is None


def test_date_range():
    assert date_range(DAY, DAY + dt.timedelta(days=2))[-1] == dt.date(2026, 11, 22)
    with pytest.raises(ValueError):
        date_range(DAY, DAY - dt.timedelta(days=1))


def test_spark_steps_start_the_driver_jvm_with_the_java_options_of_conf(tmp_path):
    """spark-submit starts the driver JVM before the job's session could set its options: without
    the JIT flag the jobs' wide generated code runs interpreted (~2-3x slower)."""
    java_options = load_defaults("spark")["spark.driver.extraJavaOptions"]
    assert "-XX:-DontCompileHugeMethods" in java_options
    settings = settings_from({**load_defaults("pipeline"), "workdir": str(tmp_path)})
    steps = build_steps(settings, RunPaths(tmp_path, DAY))
    spark_steps = [s for s in steps if s.command[0].endswith("spark-submit")]
    assert [s.name for s in spark_steps] == ["preprocess", "score", "report"]
    for step in spark_steps:
        assert step.command[step.command.index("--driver-java-options") + 1] == java_options
    train = next(s for s in steps if s.name == "train")
    assert train.command[1:5] == ["-np", "2", "-H", "localhost:2"] and train.command[7:10] == ["-m", "deepfm", "train"]
    assert all(s.summary_file for s in steps)  # every step's result is read from a file it writes


def test_every_day_of_a_run_date_has_a_named_role_and_the_scored_day_is_held_out(tmp_path):
    settings = settings_from({**load_defaults("pipeline"), "workdir": str(tmp_path)})
    roles = day_roles(DAY, settings.train_days)
    assert roles == {"train": "2026-11-12..2026-11-18", "validation": "2026-11-19", "scored": "2026-11-20"}
    (preprocess,) = (s for s in build_steps(settings, RunPaths(tmp_path, DAY)) if s.name == "preprocess")

    def option(name: str) -> str:
        return preprocess.command[preprocess.command.index(name) + 1]

    assert (option("--end-date"), option("--validation-days"), option("--test-days")) == ("2026-11-19", "1", "0")
    assert option("--train-days") == str(settings.train_days) == "7"
    read = sorted(fs.name(d) for d in preprocess.input_dirs)
    assert read[0] == "date=2026-11-12" and read[-1] == "date=2026-11-19"  # never the scored day


def test_on_an_object_store_the_data_lives_there_and_the_run_state_stays_local(tmp_path):
    """``storage`` and ``raw_dir`` URIs: every step reads and writes the store (the day cache
    too), with the spark section's settings (master, S3A) on each; markers, locks and logs stay in
    the work directory."""
    spark = {"spark.master": "spark://m:7077", "spark.hadoop.fs.s3a.endpoint": "http://s3:8333"}
    values = {**load_defaults("pipeline"), "workdir": str(tmp_path), "storage": "s3a://ctr/daily",
              "raw_dir": "s3a://ctr/raw", "spark": spark}  # fmt: skip
    settings = settings_from(values)
    paths = RunPaths(settings.workdir, DAY, settings.storage)
    steps = {s.name: s for s in build_steps(settings, paths)}

    def option(step: str, name: str) -> str:
        command = steps[step].command
        return command[command.index(name) + 1]

    assert (option("preprocess", "--input"), option("preprocess", "--output")) == ("s3a://ctr/raw", paths.processed)
    assert paths.processed == "s3a://ctr/daily/processed/2026-11-20"
    assert option("preprocess", "--day-cache") == "s3a://ctr/daily/day_cache"
    assert option("train", "--output") == "s3a://ctr/daily/models/2026-11-20"
    assert option("score", "--table") == "s3a://ctr/daily/delta/ctr_scores"
    assert option("report", "--output") == "s3a://ctr/daily/reports/2026-11-20"
    assert steps["train"].summary_file == "s3a://ctr/daily/models/2026-11-20/summary.json"
    assert steps["preprocess"].input_dirs[0] == "s3a://ctr/raw/date=2026-11-19"
    assert paths.marker("train").parent.parent.parent == paths.lock.parent.parent == tmp_path
    for name in ("preprocess", "score", "report"):
        command = steps[name].command
        assert "--conf" in command and option(name, "--conf") == "spark.master=spark://m:7077"
    (storage,) = (a for a in steps["train"].command if a.startswith("spark="))
    assert json.loads(storage.removeprefix("spark=")) == spark  # how the ranks reach S3
    local = RunPaths(tmp_path, DAY, settings_from({**values, "storage": None}).storage)
    assert local.day_cache == str(tmp_path / "day_cache")
    assert local.bundle == str(tmp_path / "models" / DAY.isoformat() / "bundle")
