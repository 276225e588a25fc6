"""The package installed from a wheel into a fresh virtualenv works outside the checkout: the
``deepfm`` command, its packaged defaults, and a training run."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from testkit import build_wheel
from tiny_ctr_data import write_dataset

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A new virtualenv holding the built wheel; the heavy dependencies (torch, pyarrow, ...) come
    from this virtualenv's site-packages as a plain path, so its editable install of the checkout
    (a ``.pth`` hook, never processed from there) stays out of sight."""
    root = tmp_path_factory.mktemp("install")
    wheel = build_wheel(root)
    pip = [sys.executable, "-m", "pip"]
    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    packages = env_dir / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    (packages / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    install = [*pip, "--python", str(env_dir / "bin" / "python"), "install", "-q", "--no-deps", str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=300)
    return env_dir


def run(env_dir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DEEPFM_CONF_DIR")}
    env["PATH"] = f"{env_dir / 'bin'}:{env['PATH']}"
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_the_installed_command_works_outside_the_checkout(installed, tmp_path):
    where = run(installed, tmp_path, str(installed / "bin" / "python"), "-c", "import deepfm; print(deepfm.__file__)")
    assert where.stdout.strip().startswith(str(installed)), "deepfm was imported from the checkout"
    usage = run(installed, tmp_path, "deepfm", "--help").stdout
    assert all(command in usage for command in ("preprocess", "train", "score", "report", "compare", "pipeline"))
    for command in ("preprocess", "train", "score", "report", "compare", "pipeline", "generate-logs"):
        assert "--set" in run(installed, tmp_path, "deepfm", command, "--help").stdout, command
    submit = run(installed, tmp_path, "deepfm", "submit-args").stdout.split()
    assert submit[-1] == str(next(installed.rglob("deepfm/__main__.py")))

    run(installed, tmp_path, "deepfm", "generate-logs", "--output", "raw", "--days", "2", "--rows-per-day", "200")
    assert sorted(p.name for p in (tmp_path / "raw").glob("date=*")) == ["date=2024-01-01", "date=2024-01-02"]

    write_dataset(tmp_path / "data", train_rows=1200, test_rows=400, row_group_rows=200)
    train = "--model fm --epochs 1 --loader arrow --set batch_size=256 --set tracking.mlflow.enabled=false".split()
    run(installed, tmp_path, "deepfm", "train", "--data", "data", "--output", "run", *train)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["model"] == "fm" and (tmp_path / "run" / "bundle" / "bundle.json").exists()
