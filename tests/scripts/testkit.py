"""What the tests share: models from the packaged defaults, paths and the environment of subprocesses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from deepfm.cli.config import load_defaults, load_schema
from deepfm.core.features import FeatureSpec
from deepfm.models import CTRModel, ModelConfig, ModelDefaults, build_model, build_model_for_spec

REPO = Path(__file__).resolve().parent.parent.parent
PYTHON = sys.executable
VENV_BIN = Path(PYTHON).parent
MODEL_DEFAULTS = ModelDefaults(load_defaults("models"))
# Criteo's log schema (the default) and its fields.
CRITEO = load_schema("criteo")
INTEGER_FIELDS = tuple(name for name, kind in CRITEO.feature_kinds.items() if kind == "integer")
CATEGORICAL_FIELDS = tuple(name for name, kind in CRITEO.feature_kinds.items() if kind == "categorical")
# Subprocesses (spark-submit, horovodrun, the CLI) use this virtualenv's tools and interpreter.
ENV = {
    **os.environ,
    "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
    "PYTHONUNBUFFERED": "1",
    "PYSPARK_PYTHON": PYTHON,
    "PYSPARK_DRIVER_PYTHON": PYTHON,
}


def model_config(name: str = "deepfm", overrides: Mapping[str, Any] | None = None) -> ModelConfig:
    """``name``'s packaged defaults with ``overrides``."""
    return MODEL_DEFAULTS.resolve(name, overrides)


def model(name: str, cardinalities: list[int], n_numeric: int, overrides: Mapping[str, Any] | None = None) -> CTRModel:
    return build_model(name, cardinalities, n_numeric, model_config(name, overrides))


def model_for_spec(name: str, spec: FeatureSpec, overrides: Mapping[str, Any] | None = None) -> CTRModel:
    return build_model_for_spec(name, spec, model_config(name, overrides))


def in_hash_order(spark: Any, values: list[str]) -> list[str]:
    """``values`` in the order a vocabulary gives values of equal count: their xxhash64, unsigned."""
    from pyspark.sql import functions as F

    hashed = spark.createDataFrame([(v,) for v in values], "v string").select("v", F.xxhash64("v").alias("h"))
    return [r["v"] for r in sorted(hashed.collect(), key=lambda r: r["h"] % 2**64)]


def build_wheel(root: Path) -> Path:
    """The project as a wheel under ``root``, built from a copy of the package (building in the
    checkout would leave build/ and an egg-info there, which pip then takes for an installed copy)."""
    source, wheels = root / "source", root / "wheels"
    shutil.copytree(REPO / "deepfm", source / "deepfm", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", source)
    pip = [PYTHON, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)]
    subprocess.run(pip, check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("deepfm_ctr-*.whl")
    return wheel


def deepfm_command(*args: str) -> list[str]:
    """``python -m deepfm ARGS`` with this interpreter."""
    return [PYTHON, "-m", "deepfm", *args]


@contextmanager
def daemon(
    command: list[str], log: Path, cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> Iterator[subprocess.Popen]:
    """``command`` running in the background (its own session, output to ``log``) for the block;
    terminated after it, killed if it has not stopped 10 s later."""
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                   start_new_session=True)  # fmt: skip
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
