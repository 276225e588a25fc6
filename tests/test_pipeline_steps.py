"""The pipeline's step mechanism: markers, fingerprints, failures, warm-start lookup (fast)."""
from __future__ import annotations

import datetime as dt
import json
import sys

import pytest

from deepfm.config import load_conf
from deepfm.pipeline import (
    PipelineSettings, RunPaths, Step, StepFailed, build_steps, date_range, last_json_line, previous_bundle, run_step,
)

DAY = dt.date(2026, 11, 20)


def counting_step(tmp_path, name="work", fail=False, input_dir=None):
    """A real subprocess that appends to a counter file, prints a JSON summary, maybe fails."""
    counter = tmp_path / f"{name}.count"
    code = (f"import json,sys; open({str(counter)!r},'a').write('x'); print('working...');"
            f"print(json.dumps({{'rows': 3}})); sys.exit({1 if fail else 0})")
    return Step(name, [sys.executable, "-c", code], input_dirs=(input_dir,) if input_dir else ()), counter


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
    down = Step(down.name, down.command, upstream=("up",))
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
    assert previous_bundle(RunPaths(tmp_path, DAY)) == tmp_path / "models" / "2026-11-18" / "bundle"
    assert previous_bundle(RunPaths(tmp_path, dt.date(2026, 11, 17))) is None


def test_summary_line_and_date_range():
    assert last_json_line(["{\"a\": 1}", "log line", "{\"b\": 2}", "done"]) == {"b": 2}
    assert last_json_line(["{not json}"]) == {}
    assert last_json_line(['[0]<stdout>:{"val_auc": 0.7}', "[1]<stderr>:done"]) == {"val_auc": 0.7}
    assert date_range(DAY, DAY + dt.timedelta(days=2))[-1] == dt.date(2026, 11, 22)
    with pytest.raises(ValueError):
        date_range(DAY, DAY - dt.timedelta(days=1))


def test_spark_steps_start_the_driver_jvm_with_the_java_options_of_conf(tmp_path):
    """spark-submit starts the driver JVM before the job's session could set its options: without
    the JIT flag the jobs' wide generated code runs interpreted (~2-3x slower)."""
    java_options = load_conf("spark")["spark.driver.extraJavaOptions"]
    assert "-XX:-DontCompileHugeMethods" in java_options
    steps = build_steps(PipelineSettings.from_conf(tmp_path), RunPaths(tmp_path, DAY))
    spark_steps = [s for s in steps if s.command[0].endswith("spark-submit")]
    assert [s.name for s in spark_steps] == ["preprocess", "score", "report"]
    for step in spark_steps:
        assert step.command[step.command.index("--driver-java-options") + 1] == java_options
