"""Which command each launcher makes of a training, in the train job and in the pipeline (fast:
builds commands, runs nothing; tests/test_cluster_training.py runs them)."""

from __future__ import annotations

import datetime as dt

import pytest

from deepfm.cli.config import load_defaults
from deepfm.cli.pipeline import settings_from
from deepfm.ops.pipeline import RunPaths, build_steps
from deepfm.training.launch import LaunchSettings, horovodrun_command, train_command
from deepfm.training.trainer import LAUNCH_KEYS

ARGS = ["--data", "D", "--output", "R"]


def test_horovodrun_is_its_own_command_and_the_others_are_deepfm_train_with_the_launcher():
    assert train_command(LaunchSettings("horovodrun", 2, "h1:1,h2:1"), ARGS, "py") == horovodrun_command(
        2, "h1:1,h2:1", ARGS, "py"
    )
    submit = ["spark-submit", "--master", "spark://m:7077", "entry.py"]
    launched = ["train", "--launcher", "torch-distributor", "--np", "2", *ARGS]
    assert train_command(LaunchSettings("torch-distributor", 2), ARGS, "py", submit) == [*submit, *launched]
    assert train_command(LaunchSettings("torch-distributor", 2), ARGS, "py") == ["py", "-m", "deepfm", *launched]
    with pytest.raises(ValueError, match="launcher must be one of"):
        LaunchSettings("mpirun")


@pytest.mark.parametrize("launcher", ["horovodrun", "horovod-spark", "torch-distributor"])
def test_the_pipeline_trains_with_its_launcher(tmp_path, launcher):
    defaults = load_defaults("pipeline")
    settings = settings_from({**defaults, "workdir": str(tmp_path), "launcher": launcher})
    (train,) = (s for s in build_steps(settings, RunPaths(tmp_path, dt.date(2026, 11, 22))) if s.name == "train")
    if launcher == "horovodrun":
        assert train.command[0].endswith("horovodrun") and "--launcher" not in train.command
    else:  # spark-submitted: the driver of the Spark launcher
        assert train.command[0].endswith("spark-submit")
        assert train.command[train.command.index("--launcher") + 1] == launcher
    assert str(defaults["num_workers"]) in train.command


def test_the_train_settings_hold_the_launch_keys():
    assert set(LAUNCH_KEYS) <= set(load_defaults("train"))
