"""Settings of the command line: the only code that opens the default settings files.

Each job has a tree of settings: its defaults (``deepfm/conf/<job>.yaml``, shipped inside the
package; ``$DEEPFM_CONF_DIR/<job>.yaml`` instead when that variable is set), then every
``--config FILE`` (a YAML of the same layout), then every ``--set key=value`` (dotted keys reach
nested values; the value is parsed as YAML), then the job's own flags. Library code receives the
result as typed settings objects.

    deepfm train --data D --output R --set model_config.hidden_units=[200,200] --set loader=arrow
"""

from __future__ import annotations

import argparse
import copy
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from deepfm.core.schema import LogSchema


def load_defaults(name: str) -> dict[str, Any]:
    """The default settings ``<name>.yaml`` (a fresh copy: callers may change it)."""
    conf_dir = os.environ.get("DEEPFM_CONF_DIR")
    if conf_dir:
        path = Path(conf_dir) / f"{name}.yaml"
        if not path.exists():
            raise FileNotFoundError(f"settings file {path} not found (DEEPFM_CONF_DIR={conf_dir})")
        text = path.read_text()
    else:
        text = resources.files("deepfm").joinpath("conf", f"{name}.yaml").read_text()
    return copy.deepcopy(yaml.safe_load(text) or {})


def load_schema(name_or_path: str) -> LogSchema:
    """A log schema: a preset's name (``deepfm/conf/schemas/<name>.yaml``, or under
    ``$DEEPFM_CONF_DIR/schemas/``) or the path of a schema file of the same layout."""
    if name_or_path.endswith((".yaml", ".yml")) or os.sep in name_or_path:
        text = Path(name_or_path).read_text()
    else:
        conf_dir = os.environ.get("DEEPFM_CONF_DIR")
        presets = Path(conf_dir) / "schemas" if conf_dir else resources.files("deepfm").joinpath("conf", "schemas")
        preset = presets / f"{name_or_path}.yaml"
        if not preset.is_file():
            names = sorted(p.name.removesuffix(".yaml") for p in presets.iterdir() if p.name.endswith(".yaml"))
            raise FileNotFoundError(f"no log schema {name_or_path!r}: give a schema file or a preset of {names}")
        text = preset.read_text()
    return LogSchema.from_dict(yaml.safe_load(text))


def deep_update(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base``."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_update(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def nested(key: str, value: Any) -> dict[str, Any]:
    """``{"a": {"b": value}}`` for the dotted key ``a.b``."""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def apply_sets(values: Mapping[str, Any], items: Sequence[str]) -> dict[str, Any]:
    """Apply ``key=value`` strings (dotted keys nest; values parse as YAML) to ``values``."""
    result = dict(values)
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set wants key=value, got {item!r}")
        result = deep_update(result, nested(key, yaml.safe_load(raw)))
    return result


def lookup(values: Mapping[str, Any], key: str) -> Any:
    """The value at dotted ``key`` (None where absent)."""
    value: Any = values
    for part in key.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


class JobParser:
    """An ``argparse`` parser whose options resolve into the job's settings tree.

    ``option(..., key=)`` declares a flag for one setting: its default stays None (so an absent
    flag leaves the tree alone) and its help shows the packaged default. ``parse`` returns the
    parsed arguments and the resolved tree: defaults < ``--config`` files < ``--set`` < flags.
    """

    def __init__(self, job: str, description: str, defaults: Mapping[str, Any], epilog: str | None = None) -> None:
        self.defaults = dict(defaults)
        self.parser = argparse.ArgumentParser(
            prog=f"deepfm {job}",
            description=description,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        self.keys: dict[str, str] = {}
        self.parser.add_argument(
            "--config",
            action="append",
            default=[],
            type=Path,
            metavar="FILE",
            help="a YAML file of settings in the layout of the defaults (deepfm/conf/); repeatable, later wins",
        )
        self.parser.add_argument(
            "--set",
            dest="sets",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="set any setting: dotted keys reach nested ones, the value is YAML "
            "(e.g. --set batch_size=4096); repeatable, applied after --config",
        )

    def option(self, *flags: str, key: str, help: str, **kwargs: Any) -> None:
        dest = key.replace(".", "__")
        default = lookup(self.defaults, key)
        shown = "" if default is None else f" [default: {default}]"
        self.parser.add_argument(*flags, dest=dest, default=None, help=help + shown, **kwargs)
        self.keys[dest] = key

    def add_argument(self, *args: Any, **kwargs: Any) -> None:
        """A plain argument that is not a setting of the tree (a required date, a path)."""
        self.parser.add_argument(*args, **kwargs)

    def parse(self, argv: Sequence[str] | None) -> tuple[argparse.Namespace, dict[str, Any]]:
        args = self.parser.parse_args(argv)
        values = dict(self.defaults)
        for path in args.config:
            values = deep_update(values, yaml.safe_load(path.read_text()) or {})
        try:
            values = apply_sets(values, args.sets)
        except ValueError as exc:
            self.parser.error(str(exc))
        for dest, key in self.keys.items():
            if getattr(args, dest) is not None:
                values = deep_update(values, nested(key, getattr(args, dest)))
        return args, values


def spark_conf(job_values: Mapping[str, Any]) -> dict[str, str]:
    """The Spark settings of a job: ``spark.yaml``, then the job's own ``spark`` section."""
    conf = {**load_defaults("spark"), **(job_values.get("spark") or {})}
    return {str(k): str(v) for k, v in conf.items()}
