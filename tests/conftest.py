"""Shared fixtures: one real local Spark session (with Delta) for the whole test run."""
from __future__ import annotations

import pytest

from deepfm.spark import get_spark


@pytest.fixture(scope="session")
def spark():
    session = get_spark("tests", {"spark.master": "local[2]", "spark.sql.shuffle.partitions": "2",
                                  "spark.default.parallelism": "2"})
    yield session
    session.stop()
