"""The one Spark session factory every job and test uses, and what ``spark-submit`` needs.

Local master by default, Delta Lake's extensions and catalog configured, defaults given by the
caller (the command line reads ``deepfm/conf/spark.yaml`` and the job's own ``spark`` section).
A setting already present (``spark-submit --conf``, a cluster's ``spark-defaults.conf``) is never
overridden, so jobs run unchanged against a cluster.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from importlib.metadata import version
from pathlib import Path

from pyspark import SparkConf
from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

SCALA_BINARY_VERSION = "2.13"
DRIVER_JAVA_OPTIONS = "spark.driver.extraJavaOptions"


def cache_dir() -> Path:
    """Where set-up keeps artifacts that outlive the repo checkout (jars, built wheels)."""
    return Path(os.environ.get("DEEPFM_CACHE", Path.home() / ".cache" / "deepfm-ctr"))


def delta_maven_coordinates() -> str:
    """Maven coordinates of the Delta jar matching the installed ``delta-spark`` wheel."""
    return f"io.delta:delta-spark_{SCALA_BINARY_VERSION}:{version('delta-spark')}"


def delta_jars() -> list[str]:
    """Paths of the Delta jars resolved by the set-up (empty if set-up has not run)."""
    return sorted(str(p) for p in (cache_dir() / "jars").glob("*.jar"))


def spark_submit_args(conf: Mapping[str, str]) -> list[str]:
    """Arguments a ``spark-submit`` of the jobs needs: the driver JVM's options from ``conf``
    (spark-submit starts that JVM before the job's session could set them), and Delta (the cached
    jars, or Maven coordinates)."""
    java_options = ["--driver-java-options", str(conf[DRIVER_JAVA_OPTIONS])] if DRIVER_JAVA_OPTIONS in conf else []
    jars = delta_jars()
    return [*java_options, *(["--jars", ",".join(jars)] if jars else ["--packages", delta_maven_coordinates()])]


def _ensure_python_workers_use_this_interpreter() -> None:
    # Spark's Python workers run pandas UDFs / mapInArrow and need torch and pyarrow:
    # point them at this virtualenv unless the caller chose an interpreter.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


def _add_delta_jars(conf: SparkConf) -> None:
    """Put Delta on the classpath unless the launcher (spark-submit --jars/--packages) did."""
    if "delta" in (conf.get("spark.jars", "") or "") + (conf.get("spark.jars.packages", "") or ""):
        return
    jars = delta_jars()
    if jars:
        conf.set("spark.jars", ",".join(filter(None, [conf.get("spark.jars", ""), *jars])))
    else:
        conf.set("spark.jars.packages", delta_maven_coordinates())


def get_spark(app_name: str, defaults: Mapping[str, str]) -> SparkSession:
    """Return the active session or create one with ``defaults`` applied where nothing set them."""
    _ensure_python_workers_use_this_interpreter()
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    conf = SparkConf()  # under spark-submit this already holds --conf and spark-defaults.conf
    _add_delta_jars(conf)
    for key, value in defaults.items():
        conf.setIfMissing(str(key), str(value))
    conf.setIfMissing("spark.app.name", app_name)
    spark = SparkSession.builder.config(conf=conf).getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("DEEPFM_SPARK_LOG_LEVEL", "WARN"))
    log.info("spark session %s on %s (spark %s)", app_name, spark.sparkContext.master, spark.version)
    return spark
