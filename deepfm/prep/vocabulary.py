"""Vocabularies as distributed data: counted, thresholded, ranked and stored by Spark, never
collected to the driver.

A fitted spec's vocabularies are Parquet next to it (``<spec dir>/vocabularies/field=<name>/``,
rows ``value``, ``index``: see :data:`deepfm.core.features.VOCABULARIES`). The driver receives one
row per field (its size and content hash), so its memory does not grow with the vocabularies.
Encoding joins them (:mod:`deepfm.prep.encoding`); warm starts read them with pyarrow.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import reduce

from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from deepfm.core.features import FeatureSpec, FieldSpec

log = logging.getLogger(__name__)

TABLE_SCHEMA = "value STRING, index INT, field STRING"


@dataclass(frozen=True)
class Fitted:
    """One field's stored vocabulary: its number of values and content hash."""

    size: int
    digest: str


def rank(
    counts: DataFrame, min_count: Mapping[str, int], max_size: Mapping[str, int], summed: bool = False
) -> DataFrame:
    """Each field's values with count >= its ``min_count``, ranked by (count desc, value asc) and cut
    to its ``max_size`` most frequent (0: no cap), from ``value_counts`` rows (several per value
    when counted per day: they are summed, unless ``summed`` says there is one per value already,
    which saves a shuffle of every value).

    Out: ``field``, ``value``, ``index`` (1-based rank). A field's values are ranked by one task
    (a sort within the field's partition): millions of values per field, not the driver's memory.
    """
    thresholds = F.create_map(*(x for name, n in min_count.items() for x in (F.lit(name), F.lit(n))))
    caps = F.create_map(*(x for name, n in max_size.items() for x in (F.lit(name), F.lit(n))))
    totals = counts if summed else counts.groupBy("field", "value").agg(F.sum("count").alias("count"))
    frequent = totals.where(F.col("count") >= thresholds[F.col("field")])
    order = Window.partitionBy("field").orderBy(F.col("count").desc(), F.col("value").asc())
    ranked = frequent.select("field", "value", F.row_number().over(order).cast("int").alias("index"))
    cap = caps[F.col("field")]
    return ranked.where((cap == 0) | (F.col("index") <= cap))


def store(ranked: DataFrame, directory: str, fields: Sequence[str]) -> dict[str, Fitted]:
    """Write ``rank`` output to ``<directory>`` partitioned by field; return each of ``fields``'
    size and content hash, aggregated by Spark from the written files (one row per field).

    The hash covers every (value, index) pair: a vocabulary that differs in one value or one rank
    hashes differently, so the spec's version changes with it.
    """
    ranked.write.partitionBy("field").mode("overwrite").parquet(directory)
    written = ranked.sparkSession.read.schema(TABLE_SCHEMA).parquet(directory)
    stats = written.groupBy("field").agg(
        F.count(F.lit(1)).alias("size"),
        F.bit_xor(F.xxhash64("value", "index")).alias("xor"),
        F.sum(F.xxhash64("index", "value").bitwiseAND(0xFFFFFFFF)).alias("sum"),
    )
    found = {row["field"]: row for row in stats.collect()}
    fitted = {}
    for name in fields:
        row = found.get(name)
        size, xor, total = (int(row["size"]), int(row["xor"]), int(row["sum"])) if row else (0, 0, 0)
        digest = hashlib.sha256(f"{name}:{size}:{xor}:{total}".encode()).hexdigest()[:16]
        fitted[name] = Fitted(size, digest)
    log.info("stored vocabularies in %s: %s", directory, {name: f.size for name, f in fitted.items()})
    return fitted


def tables(spark: SparkSession, spec: FeatureSpec, fields: Sequence[FieldSpec]) -> DataFrame:
    """``fields``' vocabularies as rows ``field`` (name), ``value`` (string), ``index`` (int): the
    stored ones read by one scan (one generated class and one broadcast however many fields: a
    scan per field made Spark compile and run one of each per field), inline ones made from the
    spec."""
    stored = [f.name for f in fields if f.stored_vocabulary]
    inline = [(f.name, value, i) for f in fields if not f.stored_vocabulary for i, value in enumerate(f.vocabulary, 1)]
    frames = []
    if stored:
        read = spark.read.schema(TABLE_SCHEMA).parquet(spec.vocabularies)
        frames.append(read.where(F.col("field").isin(stored)).select("field", "value", "index"))
    if inline or not stored:
        frames.append(spark.createDataFrame(inline, schema="field string, value string, index int"))
    return reduce(DataFrame.unionByName, frames)
