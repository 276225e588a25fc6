"""``deepfm doctor``: report every component's version and whether it works.

Exits non-zero naming what is missing or mis-built, so a broken set-up is caught before a
job fails half-way through a run.
"""

from __future__ import annotations

import importlib
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from deepfm.ops.spark import cache_dir, cached_jars, delta_jars, delta_maven_coordinates, s3a_maven_coordinates

# The S3 server of the object-store test, built by scripts/setup_test.sh (which names the same version).
SEAWEEDFS_VERSION = "v0.0.0-20261109003541-7506e5f91cd6"


@dataclass
class Check:
    name: str
    detail: str
    ok: bool
    required: bool = True


def _package(name: str, dist: str | None = None) -> Check:
    try:
        importlib.import_module(name)
        return Check(dist or name, version(dist or name), True)
    except (ImportError, PackageNotFoundError) as exc:
        return Check(dist or name, f"not importable: {exc}", False)


def _java() -> Check:
    java = shutil.which("java")
    if java is None:
        return Check("java", "not found on PATH (Spark 4 needs Java 17+)", False)
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "(\d+)[^"]*"', out)
    major = int(match.group(1)) if match else 0
    return Check("java", out.splitlines()[0] if out else "?", major >= 17)


def _delta() -> Check:
    jars = delta_jars()
    ok = any("delta-spark" in j for j in jars)
    detail = f"{delta_maven_coordinates()} ({len(jars)} cached jars)" if ok else "jars not cached: run make setup"
    return Check("delta-jars", detail, ok)


def seaweedfs_binary() -> Path:
    """Where scripts/setup_test.sh builds SeaweedFS's ``weed``."""
    return cache_dir() / "seaweedfs" / SEAWEEDFS_VERSION / "weed"


def _test_components() -> list[Check]:
    """What only the test suite needs (``make setup-test``): not required to run the pipeline."""
    weed, jars = seaweedfs_binary(), cached_jars("s3a")
    s3a = any("hadoop-aws" in j for j in jars)
    return [
        Check("seaweedfs", str(weed) if weed.is_file() else "not built: run make setup-test", weed.is_file(), False),
        Check("s3a-jars", s3a_maven_coordinates() if s3a else "not cached: run make setup-test", s3a, False),
    ]


def _horovod() -> Check:
    try:
        import horovod
        import horovod.torch as hvd  # noqa: F401  (fails if the torch extension is mis-built)
        from horovod.common.util import gloo_built, nccl_built
    except ImportError as exc:
        return Check("horovod", f"not importable: {exc}", False)
    frameworks = "PyTorch"
    controllers = "Gloo" if gloo_built() else "no Gloo"
    nccl = "NCCL" if nccl_built() else "no NCCL (CPU build)"
    return Check("horovod", f"{horovod.__version__} [{frameworks}; {controllers}; {nccl}]", gloo_built())


def _cuda() -> Check:
    import torch

    if torch.cuda.is_available():
        detail = f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s), NCCL {torch.cuda.nccl.version()}"
    else:
        detail = f"not available (torch built for CUDA {torch.version.cuda}; training runs on CPU/Gloo)"
    return Check("cuda", detail, True, required=False)


def run_checks() -> list[Check]:
    checks = [Check("python", platform.python_version(), sys.version_info >= (3, 11)), _java()]
    for module, dist in [
        ("pyspark", None),
        ("delta", "delta-spark"),
        ("petastorm", None),
        ("torch", None),
        ("pyarrow", None),
        ("numpy", None),
        ("pandas", None),
        ("mlflow", None),
    ]:
        checks.append(_package(module, dist))
    checks += [_delta(), _horovod(), _cuda(), *_test_components()]
    return checks


def report(brief: bool = False) -> int:
    checks = run_checks()
    failed = [c for c in checks if c.required and not c.ok]
    if not brief:
        for c in checks:
            mark = "ok" if c.ok else ("MISSING" if c.required else "--")
            print(f"{c.name:12s} {mark:8s} {c.detail}")
    if failed:
        print(
            "doctor: broken: "
            + "; ".join(f"{c.name}: {c.detail}" for c in failed)
            + "\nRun `make setup` to (re)install.",
            file=sys.stderr,
        )
        return 1
    print(f"doctor: all {len(checks)} components ok")
    return 0
