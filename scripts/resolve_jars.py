"""Resolve Delta Lake's jars from Maven Central once, into a cache Spark sessions reuse offline.

Run by scripts/setup.sh. Spark's own Ivy resolution (``spark.jars.packages``) fetches the jar
matching the installed delta-spark wheel; the resolved jars are then copied to
``$DEEPFM_CACHE/jars`` where :func:`deepfm.ops.spark.delta_jars` finds them.
"""

from __future__ import annotations

import shutil
import sys

from pyspark.sql import SparkSession

from deepfm.core import fs
from deepfm.ops.spark import cache_dir, delta_maven_coordinates


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
    with fs.staged_dir(target) as staging:
        for jar in jars:
            shutil.copy2(jar, staging / jar.name)
    print("\n".join(str(target / j.name) for j in jars))
    return 0


if __name__ == "__main__":
    sys.exit(main())
