"""Resolve Delta Lake's jars from Maven Central once, into a cache Spark sessions reuse offline.

Run by scripts/setup.sh. Spark's own Ivy resolution (``spark.jars.packages``) fetches the jar
matching the installed delta-spark wheel; the resolved jars are then copied to
``$DEEPFM_CACHE/jars`` where :func:`deepfm.spark.delta_jars` finds them.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from pyspark.sql import SparkSession

from deepfm.spark import cache_dir, delta_maven_coordinates


def main() -> int:
    ivy = cache_dir() / "ivy"
    target = cache_dir() / "jars"
    spark = (
        SparkSession.builder.master("local[1]")
        .appName("resolve-delta-jars")
        .config("spark.jars.packages", delta_maven_coordinates())
        .config("spark.jars.ivy", str(ivy))
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    spark.stop()
    jars = sorted((ivy / "jars").glob("*.jar"))
    if not any("delta-spark" in j.name for j in jars):
        print(f"no delta-spark jar resolved under {ivy}", file=sys.stderr)
        return 1
    tmp = target.with_name("jars.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for jar in jars:
        shutil.copy2(jar, tmp / jar.name)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    print("\n".join(str(target / j.name) for j in jars))
    return 0


if __name__ == "__main__":
    sys.exit(main())
