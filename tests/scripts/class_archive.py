"""A class-data-sharing archive of a Spark driver running the project's jobs, for the tests' JVMs.

Much of a small Spark job's time is its JVM's start: a driver loads, parses and verifies ~24,000
classes of Spark, Delta and Hadoop, every driver anew. HotSpot's dynamic AppCDS archive (JDK 13+)
keeps them parsed and verified in a file the JVMs map (a session took 14,500 of its classes from
it): a session with its first jobs took 26 s instead of 35 s, a pipeline's score step 37 s
instead of 48 s (benchmarks/README.md).

The archive is made by one driver (``-XX:ArchiveClassesAtExit``) running preprocessing and
scoring into Delta on a few generated rows, and is named by a digest of the Java runtime
and of every jar on the drivers' paths, so a changed jar gives a new archive. A JVM whose class
path does not start like the drivers' (the launcher, the cluster's daemons and executors) ignores
it, silently: ``java_options`` moves the JVMs' warnings to stderr (spark-class reads its
launcher's stdout) and mutes the archive's own.

Usage: ``python tests/scripts/class_archive.py`` builds it unless present (``make setup-test``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyspark

from deepfm.cli.config import spark_conf
from deepfm.ops.spark import DRIVER_JAVA_OPTIONS, cache_dir, cached_jars, spark_submit_args

RUN_DATE = dt.date(2026, 1, 4)
STALE_DAYS = 14  # archives built longer ago are removed when one is built (another is a 1.5 min build)


def _java() -> Path:
    java_home = os.environ.get("JAVA_HOME")
    found = Path(java_home, "bin", "java") if java_home else shutil.which("java")
    if not found:
        raise RuntimeError("java not found (JAVA_HOME or PATH)")
    return Path(found).resolve()


def archive_path() -> Path:
    """Where the archive of this Java and these jars is (or would be)."""
    jars = [*sorted((Path(pyspark.__file__).parent / "jars").glob("*.jar")), *map(Path, cached_jars("delta")),
            *map(Path, cached_jars("s3a"))]  # fmt: skip
    files = [_java(), *jars]
    identity = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    digest = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]
    return cache_dir() / "class-archive" / f"spark-driver-{digest}.jsa"


def java_options() -> list[str]:
    """JVM options that use the archive when it exists (none otherwise)."""
    archive = archive_path()
    if not archive.exists():
        return []
    return [f"-XX:SharedArchiveFile={archive}", "-Xlog:disable", "-Xlog:all=warning:stderr", "-Xlog:cds*=off:stderr"]


def build(archive: Path) -> None:
    """Run the jobs in one spark-submit driver that dumps its classes into ``archive`` at exit."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    partial = archive.with_name(f".{archive.name}.{os.getpid()}")
    conf = spark_conf({})
    conf[DRIVER_JAVA_OPTIONS] = f"{conf.get(DRIVER_JAVA_OPTIONS, '')} -XX:ArchiveClassesAtExit={partial}".strip()
    venv_bin = Path(sys.executable).parent  # spark-submit finds Spark with the python3 on its PATH
    env = {**os.environ, "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}", "PYSPARK_PYTHON": sys.executable,
           "JAVA_TOOL_OPTIONS": "-XX:TieredStopAtLevel=1"}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="class-archive-") as work:
        command = [str(venv_bin / "spark-submit"), *spark_submit_args(conf), __file__, "jobs", work]
        result = subprocess.run(command, capture_output=True, text=True, cwd=work, env=env)
        if result.returncode != 0 or not partial.exists():
            partial.unlink(missing_ok=True)
            raise RuntimeError(f"the archive's driver failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    partial.replace(archive)  # whole or not at all
    for stale in archive.parent.glob("spark-driver-*.jsa"):  # other checkouts' or jars' (~190 MB each)
        if time.time() - stale.stat().st_mtime > STALE_DAYS * 86400:
            stale.unlink(missing_ok=True)


def jobs(work: Path) -> None:
    """The driver's work: the pipeline's Spark steps on two training days, a validation day and
    the scored day, of a few hundred rows each."""
    from testkit import model_for_spec

    from deepfm.cli import main
    from deepfm.core.features import FeatureSpec
    from deepfm.models.bundle import save_bundle

    def deepfm(command: str) -> None:  # the work folder's paths have no spaces
        if main(command.split()) != 0:
            raise SystemExit(f"deepfm {command} failed")

    raw, processed, delta = work / "raw", work / "processed", work / "delta"
    start, validation_day = RUN_DATE - dt.timedelta(days=3), RUN_DATE - dt.timedelta(days=1)
    deepfm(f"generate-logs --output {raw} --days 4 --rows-per-day 300 --start-date {start} --malformed-fraction 0.02")
    deepfm(f"preprocess --input {raw} --output {processed} --end-date {validation_day} --train-days 2 "
           f"--validation-days 1 --test-days 0 --day-cache {work / 'cache'}")  # fmt: skip
    bundle = work / "bundle"
    spec = FeatureSpec.load(str(processed))
    save_bundle(bundle, model_for_spec("deepfm", spec), spec)
    deepfm(f"score --date {RUN_DATE} --model {bundle} --input {raw} --table {delta / 'scores'} "
           f"--metrics-table {delta / 'metrics'} --rejects {work / 'rejects'} --summary {work}/score.json")  # fmt: skip


if __name__ == "__main__":
    if sys.argv[1:2] == ["jobs"]:
        jobs(Path(sys.argv[2]))
    else:
        target = archive_path()
        if not target.exists():
            print(f"building the Spark drivers' class archive {target} (~1.5 min, once)", file=sys.stderr, flush=True)
            build(target)
        print(target)
