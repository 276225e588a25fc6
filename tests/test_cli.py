"""The command line: one override syntax, settings resolved in one order, help on every job (fast)."""

from __future__ import annotations

import subprocess

import pytest
import yaml
from testkit import deepfm_command

from deepfm.cli import COMMANDS
from deepfm.cli import main as deepfm_main
from deepfm.cli.config import JobParser, apply_sets, load_defaults
from deepfm.cli.preprocess import options as preprocess_options
from deepfm.cli.preprocess import parser as preprocess_parser
from deepfm.cli.score import parser as score_parser


def test_settings_resolve_defaults_then_config_files_then_sets_then_flags(tmp_path):
    defaults = {"epochs": 10, "batch_size": 2048, "model_config": {"dropout": 0.5, "embedding_dim": 10}}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"epochs": 3, "batch_size": 512, "model_config": {"dropout": 0.1}}))
    p = JobParser("train", "", defaults)
    p.option("--epochs", key="epochs", type=int, help="maximum epochs")
    p.option("--dim", key="model_config.embedding_dim", type=int, help="embedding size")
    _, values = p.parse(["--config", str(config), "--set", "batch_size=64", "--set", "epochs=4", "--epochs", "5"])
    assert values == {"epochs": 5, "batch_size": 64, "model_config": {"dropout": 0.1, "embedding_dim": 10}}
    _, values = p.parse(["--dim", "16"])
    assert values["model_config"] == {"dropout": 0.5, "embedding_dim": 16} and values["epochs"] == 10
    assert "[default: 10]" in p.parser.format_help()


def test_sets_parse_yaml_values_and_refuse_what_is_not_key_value():
    assert apply_sets({}, ["a.b=[1, 2]", "c=true", "d=x"]) == {"a": {"b": [1, 2]}, "c": True, "d": "x"}
    with pytest.raises(ValueError, match="key=value"):
        apply_sets({}, ["epochs"])


def test_a_boolean_whose_default_is_on_can_be_switched_off(monkeypatch, tmp_path):
    score = load_defaults("score")
    (tmp_path / "score.yaml").write_text(yaml.safe_dump({**score, "allow_schema_evolution": True}))
    for name in ("preprocess", "spark"):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(load_defaults(name)))
    monkeypatch.setenv("DEEPFM_CONF_DIR", str(tmp_path))
    required = ["--date", "2026-11-20", "--model", "m", "--table", "t"]
    assert score_parser().parse(required)[1]["allow_schema_evolution"] is True
    assert score_parser().parse([*required, "--no-allow-schema-evolution"])[1]["allow_schema_evolution"] is False


def test_preprocess_flags_reach_the_feature_settings():
    args, values = preprocess_parser().parse(["--end-date", "2026-11-19", "--min-count", "7", "--hash-buckets", "99"])
    opts = preprocess_options(args.end_date, values)
    c1 = next(p for p in opts.features.plans if p.name == "C1")
    assert (c1.min_count, c1.hash_buckets) == (7, 99) and opts.output.endswith("2026-11-19")


def test_every_command_answers_help_and_unknown_commands_are_refused(capsys):
    assert deepfm_main([]) == 2 and deepfm_main(["nope"]) == 2
    usage = capsys.readouterr().out
    assert all(name in usage for name in COMMANDS)
    for name in COMMANDS:
        with pytest.raises(SystemExit) as done:
            deepfm_main([name, "--help"])
        assert done.value.code == 0 and f"deepfm {name}" in capsys.readouterr().out
    result = subprocess.run(deepfm_command("score", "--help"), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "--allow-schema-evolution" in result.stdout, result.stderr[-2000:]
