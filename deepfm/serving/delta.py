"""Delta Lake tables the jobs write: naming, schema checks, race-safe creation, atomic partition
replacement and blind appends. Every commit carries its run in ``userMetadata``, so
``DESCRIBE HISTORY`` shows every run and ``committed`` finds a run's own commit among others'.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from delta.tables import DeltaTable
from py4j.protocol import Py4JJavaError
from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, DataFrameWriter, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from deepfm.core import fs

log = logging.getLogger(__name__)

_CREATE_ATTEMPTS = 3


class TableError(ValueError):
    """A table the job cannot write as asked: refused before anything is written."""


@dataclass(frozen=True)
class TableRef:
    """A Delta table named by a path (contains ``/``; what the pipeline uses) or a metastore name."""

    location: str
    is_path: bool

    @classmethod
    def of(cls, arg: str) -> TableRef:
        if "://" in arg:
            return cls(arg.rstrip("/"), True)
        if "/" in arg:
            return cls(str(Path(arg).resolve()), True)
        return cls(arg, False)

    @property
    def ident(self) -> str:
        """The table in SQL and ``DeltaTable.forName``."""
        return f"delta.`{self.location}`" if self.is_path else self.location

    def sibling(self, suffix: str) -> TableRef:
        return TableRef(self.location + suffix, self.is_path)

    def exists(self, spark: SparkSession) -> bool:
        if self.is_path:
            return DeltaTable.isDeltaTable(spark, self.location)
        return spark.catalog.tableExists(self.location)

    def save(self, writer: DataFrameWriter) -> None:
        writer.save(self.location) if self.is_path else writer.saveAsTable(self.location)

    def __str__(self) -> str:
        return self.location


def _schema_problems(
    actual: T.StructType, partitions: list[str], expected: T.StructType, partition_by: list[str]
) -> tuple[list[str], list[str]]:
    """``(fatal, evolvable)`` differences of an existing table from what the job writes."""
    fatal, evolvable = [], []
    if partitions != partition_by:
        fatal.append(f"partitioned by {partitions}, expected {partition_by}")
    have = {f.name: f for f in actual.fields}
    for field in expected.fields:
        if field.name not in have:
            evolvable.append(f"lacks column {field.name} {field.dataType.simpleString()}")
        elif have[field.name].dataType != field.dataType:
            fatal.append(
                f"column {field.name} is {have[field.name].dataType.simpleString()}, "
                f"expected {field.dataType.simpleString()}"
            )
    written = set(expected.fieldNames())
    fatal += [
        f"has NOT NULL column {f.name} the job does not write"
        for f in actual.fields
        if f.name not in written and not f.nullable
    ]
    return fatal, evolvable


def check_table(
    spark: SparkSession, ref: TableRef, schema: T.StructType, partition_by: list[str], allow_evolution: bool
) -> None:
    """Refuse (``TableError``) a table the job cannot write as-is; a missing table is fine.

    ``allow_evolution`` accepts missing columns (the write adds them with ``mergeSchema``);
    type and partitioning conflicts are refused regardless.
    """
    if not ref.exists(spark):
        if ref.is_path and _interrupted_create(ref.location):
            log.warning("table %s: removing what a killed run left of its creation (no commit)", ref)
            fs.remove_tree(ref.location)
        elif ref.is_path and fs.files_under(ref.location):
            raise TableError(f"table {ref}: the path exists and is not a Delta table")
        return
    table = DeltaTable.forName(spark, ref.ident)
    detail = table.detail().first()
    partitions = detail["partitionColumns"] if detail is not None else []
    fatal, evolvable = _schema_problems(table.toDF().schema, list(partitions), schema, partition_by)
    if fatal or (evolvable and not allow_evolution):
        hint = "" if fatal else " (pass --allow-schema-evolution to add the missing columns)"
        raise TableError(f"table {ref} has an incompatible schema: {'; '.join(fatal + evolvable)}{hint}")
    if evolvable:
        log.warning("table %s will gain columns: %s", ref, "; ".join(evolvable))


def _interrupted_create(location: str) -> bool:
    """A folder (any URI) holding nothing but a ``_delta_log`` without a committed version: what a
    run killed while creating the table leaves (Delta writes the first commit to a temporary file,
    then renames it)."""
    delta_log = fs.join(location, "_delta_log")
    if not fs.is_dir(delta_log):
        return False
    files = fs.files_under(location)
    in_log = all(f.startswith(delta_log + "/") for f in files)
    return in_log and not any(_COMMIT.fullmatch(fs.name(f)) for f in files)


_COMMIT = re.compile(r"\d{20}\.(json|checkpoint\.parquet)")


def ensure_table(spark: SparkSession, ref: TableRef, schema: T.StructType, partition_by: list[str]) -> None:
    """Create the table unless it exists, safe against a concurrent run creating it too.

    The run that loses a creation race fails its CREATE (a Delta commit conflict, or "location
    not empty" while the winner is mid-commit), waits, and then finds the table. Existence is
    checked first because a CREATE of an existing path table must restate its exact schema.
    """
    for attempt in range(1, _CREATE_ATTEMPTS + 1):
        if ref.exists(spark):
            return
        builder = DeltaTable.createIfNotExists(spark).addColumns(schema).partitionedBy(*partition_by)
        builder = builder.location(ref.location) if ref.is_path else builder.tableName(ref.location)
        try:
            builder.execute()
            return
        except (Py4JJavaError, AnalysisException) as exc:
            if attempt == _CREATE_ATTEMPTS:
                raise
            log.info(
                "table %s: creation failed, maybe created concurrently by another run; checking again (%s)",
                ref,
                str(exc).splitlines()[0][:200],
            )
            time.sleep(attempt)


def committed(spark: SparkSession, ref: TableRef, run_id: str) -> tuple[int, int]:
    """The table version this run committed, found by its ``userMetadata`` in the history, and
    the rows that commit wrote (Delta's own ``numOutputRows`` operation metric).

    Other runs may have committed since, so the newest version is not necessarily ours.
    """
    history = DeltaTable.forName(spark, ref.ident).history(100)
    mine = (
        history.where(F.get_json_object("userMetadata", "$.run_id") == run_id)
        .select("version", F.col("operationMetrics")["numOutputRows"].alias("rows"))
        .first()
    )
    if mine is None:
        raise RuntimeError(f"table {ref}: commit of run {run_id} not found in the last 100 versions")
    return int(mine["version"]), int(mine["rows"] or 0)


def replace_partition(
    rows: DataFrame, ref: TableRef, where: str, user_metadata: Mapping[str, Any], merge_schema: bool
) -> None:
    """Atomically replace the rows matching ``where`` (a partition predicate) with ``rows``, in one
    commit stamped with ``user_metadata`` (which must hold the run's ``run_id``: see ``committed``)."""
    writer = (
        rows.write.format("delta")
        .mode("overwrite")
        .option("replaceWhere", where)
        .option("userMetadata", json.dumps(dict(user_metadata)))
        .option("mergeSchema", str(merge_schema).lower())
    )
    ref.save(writer)


def append_record(spark: SparkSession, ref: TableRef, schema: T.StructType, record: Mapping[str, Any]) -> None:
    """Append one row (``schema``'s fields from ``record``); blind appends never conflict with
    other runs' appends.

    The row is built from literals in the JVM (``createDataFrame`` of a Python list would start
    Python workers to deserialize it: seconds on a cold run, for one row).
    """
    row = spark.range(1).select(*(F.lit(record[f.name]).cast(f.dataType).alias(f.name) for f in schema.fields))
    ref.save(row.write.format("delta").mode("append"))
