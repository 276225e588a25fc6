"""Defaults from ``conf/*.yaml``: one file per area, overridable per run.

``load_conf("train")`` reads ``conf/train.yaml`` (or ``$DEEPFM_CONF_DIR/train.yaml``).
Command-line options of the jobs take their defaults from these files, so a value is
never written twice.
"""
from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent


def conf_dir() -> Path:
    return Path(os.environ.get("DEEPFM_CONF_DIR", REPO_ROOT / "conf"))


def load_conf(name: str) -> dict[str, Any]:
    """Return the parsed ``conf/<name>.yaml`` (a fresh copy: callers may mutate it)."""
    path = conf_dir() / f"{name}.yaml"
    if not path.exists():
        raise FileNotFoundError(f"config file {path} not found (DEEPFM_CONF_DIR={conf_dir()})")
    with path.open() as fh:
        return copy.deepcopy(yaml.safe_load(fh) or {})


def deep_update(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base``."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_update(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each option's default (the conf/ value), except where there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if action.default is None else super()._get_help_string(action)
