"""Resolve a set of jars from Maven Central once, into a cache Spark sessions reuse offline.

``resolve_jars.py [delta|s3a]``: ``delta`` (run by scripts/setup.sh) is Delta Lake's jar matching
the installed delta-spark wheel; ``s3a`` (run by scripts/setup_test.sh: only the object-store test
needs it) is hadoop-aws matching pyspark's Hadoop, with the AWS SDK bundle it depends on. Spark's
own Ivy resolution (``spark.jars.packages``) fetches them; the resolved jars are then copied to
the set's folder in ``$DEEPFM_CACHE`` where :func:`deepfm.ops.spark.cached_jars` finds them.
"""

from __future__ import annotations

import shutil
import sys

from pyspark.sql import SparkSession

from deepfm.core import fs
from deepfm.ops.spark import JAR_SETS, cache_dir, jar_dir


def main(jar_set: str = "delta") -> int:
    coordinates, marker = JAR_SETS[jar_set]
    # One Ivy folder per set (its jars/ is then exactly that set's); Delta's keeps its first name.
    ivy = cache_dir() / ("ivy" if jar_set == "delta" else f"ivy-{jar_set}")
    target = jar_dir(jar_set)
    wanted = [f"{group}_{artifact}-{version}.jar" for group, artifact, version in
              (c.split(":") for c in coordinates().split(","))]  # fmt: skip
    if all((target / name).exists() for name in wanted):  # resolved before: no Spark session (~15 s)
        print("\n".join(str(jar) for jar in sorted(target.glob("*.jar"))))
        return 0
    spark = (
        SparkSession.builder.master("local[1]")
        .appName(f"resolve-{jar_set}-jars")
        .config("spark.jars.packages", coordinates())
        .config("spark.jars.ivy", str(ivy))
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    spark.stop()
    jars = sorted((ivy / "jars").glob("*.jar"))
    if not any(marker in j.name for j in jars):
        print(f"no {marker} jar resolved under {ivy}", file=sys.stderr)
        return 1
    with fs.staged_dir(target) as staging:
        for jar in jars:
            shutil.copy2(jar, staging / jar.name)
    print("\n".join(str(target / j.name) for j in jars))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
