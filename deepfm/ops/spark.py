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
from collections.abc import Callable, Mapping
from importlib.metadata import version
from pathlib import Path

from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession

from deepfm.core import fs

log = logging.getLogger(__name__)

SCALA_BINARY_VERSION = "2.13"
DRIVER_JAVA_OPTIONS = "spark.driver.extraJavaOptions"


def cache_dir() -> Path:
    """Where set-up keeps artifacts that outlive the repo checkout (jars, built wheels)."""
    return Path(os.environ.get("DEEPFM_CACHE", Path.home() / ".cache" / "deepfm-ctr"))


def delta_maven_coordinates() -> str:
    """Maven coordinates of the Delta jar matching the installed ``delta-spark`` wheel."""
    return f"io.delta:delta-spark_{SCALA_BINARY_VERSION}:{version('delta-spark')}"


def hadoop_version() -> str:
    """The Hadoop version pyspark bundles (its hadoop-client-api jar's)."""
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    return next(jars.glob("hadoop-client-api-*.jar")).name.removeprefix("hadoop-client-api-").removesuffix(".jar")


def s3a_maven_coordinates() -> str:
    """Maven coordinates of hadoop-aws (S3A) matching pyspark's Hadoop: it must be the same version,
    and it brings the AWS SDK bundle it was built against."""
    return f"org.apache.hadoop:hadoop-aws:{hadoop_version()}"


# The jar sets scripts/resolve_jars.py caches: their coordinates, and a jar name that must be among them.
JAR_SETS: dict[str, tuple[Callable[[], str], str]] = {
    "delta": (delta_maven_coordinates, "delta-spark"),
    "s3a": (s3a_maven_coordinates, "hadoop-aws"),
}


def jar_dir(jar_set: str) -> Path:
    """Where the set-up keeps a jar set (Delta's folder keeps its first name, ``jars``)."""
    return cache_dir() / ("jars" if jar_set == "delta" else f"jars-{jar_set}")


def cached_jars(jar_set: str) -> list[str]:
    """Paths of a jar set resolved by the set-up (empty if it has not run)."""
    return sorted(str(p) for p in jar_dir(jar_set).glob("*.jar"))


def delta_jars() -> list[str]:
    """Paths of the Delta jars resolved by the set-up (empty if set-up has not run)."""
    return cached_jars("delta")


def spark_submit_args(conf: Mapping[str, str]) -> list[str]:
    """Arguments a ``spark-submit`` of the jobs needs: the driver JVM's options from ``conf``
    (spark-submit starts that JVM before the job's session could set them), Delta (the cached
    jars, or Maven coordinates), and S3A when cached (``--driver-class-path``: see ``_add_s3a_jars``)."""
    java_options = ["--driver-java-options", str(conf[DRIVER_JAVA_OPTIONS])] if DRIVER_JAVA_OPTIONS in conf else []
    jars, s3a = delta_jars(), cached_jars("s3a")
    delta = ["--jars", ",".join(jars)] if jars else ["--packages", delta_maven_coordinates()]
    return [*java_options, *delta, *(["--driver-class-path", os.pathsep.join(s3a)] if s3a else [])]


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


def _add_s3a_jars(conf: SparkConf) -> None:
    """Put the cached S3A jars (``make setup-test``) on the driver's and executors' class path.
    Class paths, not ``spark.jars``: Hadoop loads its file systems with the JVM's class loader, and
    with ``spark.jars`` alone local mode fails with ClassNotFoundException: S3AFileSystem. On a
    cluster the executors' path must hold them too (its image, or ``--packages`` of
    ``s3a_maven_coordinates()``)."""
    jars = os.pathsep.join(cached_jars("s3a"))
    for key in ("spark.driver.extraClassPath", "spark.executor.extraClassPath"):
        if jars and "hadoop-aws" not in (conf.get(key, "") or ""):
            conf.set(key, os.pathsep.join(filter(None, [conf.get(key, ""), jars])))


def _launcher_conf() -> SparkConf:
    """The settings the launcher gave: under spark-submit (its JVM already running) its --conf and
    spark-defaults.conf. A SparkConf made before PySpark connects to that JVM is empty, and the
    defaults set on it would then override them: connect first."""
    if "PYSPARK_GATEWAY_PORT" in os.environ:  # set by spark-submit for its Python driver
        SparkContext._ensure_initialized()
    return SparkConf()


def get_spark(app_name: str, defaults: Mapping[str, str]) -> SparkSession:
    """Return the active session or create one with ``defaults`` applied where nothing set them."""
    _ensure_python_workers_use_this_interpreter()
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    conf = _launcher_conf()
    _add_delta_jars(conf)
    _add_s3a_jars(conf)
    for key, value in defaults.items():
        conf.setIfMissing(str(key), str(value))
    conf.setIfMissing("spark.app.name", app_name)
    spark = SparkSession.builder.config(conf=conf).getOrCreate()
    fs.use_s3(fs.S3Settings.from_configuration(spark.sparkContext._jsc.hadoopConfiguration().get))  # as S3A does
    spark.sparkContext.setLogLevel(os.environ.get("DEEPFM_SPARK_LOG_LEVEL", "WARN"))
    log.info("spark session %s on %s (spark %s)", app_name, spark.sparkContext.master, spark.version)
    return spark
