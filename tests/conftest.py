"""Shared fixtures: one real local Spark session (with Delta) for the whole test run.

A test that uses it is marked ``slow`` here, so ``make test-fast`` (``-m "not slow"``) never
starts Spark; ``DEEPFM_FAST_TESTS=1`` (set by that target) turns a forgotten mark into a failure.
"""

from __future__ import annotations

import os
import tempfile

import pytest
from class_archive import java_options

from deepfm.cli.config import spark_conf
from deepfm.ops.spark import get_spark

# Every JVM the tests start (the Spark sessions, spark-submit's drivers, the standalone cluster's
# daemons and executors) inherits this: on small data a JVM's time goes to start-up and one-off
# plans, and HotSpot's optimizing compiler (C2) burns more CPU than it saves. C1 alone halved a
# small preprocessing run's wall time on 2 busy cores (90 s -> 46 s, 80 s -> 53 s). Tests only:
# the project's own sessions keep the default JIT. The drivers also map the classes they load
# from the archive ``make setup-test`` builds (``class_archive``): a session starts in 5 s, not 11.
os.environ.setdefault("JAVA_TOOL_OPTIONS", " ".join(["-XX:TieredStopAtLevel=1", *java_options()]))

# The longest modules first, in their measured order: ``make test`` runs files whole on two
# workers (pytest-xdist, ``--dist loadfile``), and a long file started last runs alone at the end.
# ``--no-loadscope-reorder`` keeps this order: xdist's own (by number of tests) started the
# pipeline test, few tests but minutes long, last, with the other worker idle for 3 minutes.
LONGEST_FIRST = (
    "test_cluster.py",
    "test_cluster_training.py",
    "test_pipeline.py",
    "test_preprocess.py",
    "test_scoring.py",
    "test_schemas.py",
    "test_train.py",
)


def pytest_configure(config: pytest.Config) -> None:
    """One MLflow store per test process for its trainings and scorings (subprocesses inherit
    it): a new SQLite store costs seconds of schema migrations, and SQLite takes one writer at a
    time, so each xdist worker gets its own. Tests of the default store unset it."""
    if os.environ.get("PYTEST_XDIST_WORKER") or "MLFLOW_TRACKING_URI" not in os.environ:
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tempfile.mkdtemp(prefix='deepfm-tests-')}/mlflow.db"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "spark" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)

    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within a module is kept


@pytest.fixture(scope="session")
def spark():
    if os.environ.get("DEEPFM_FAST_TESTS"):
        pytest.fail("a fast test started Spark: mark it slow")
    settings = {"spark.master": "local[2]", "spark.sql.shuffle.partitions": "2", "spark.default.parallelism": "2"}
    session = get_spark("tests", {**spark_conf({}), **settings})
    yield session
    session.stop()
