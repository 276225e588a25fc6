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

from pyspark.sql import Column, DataFrame, SparkSession
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
    """Each field's values with count >= its ``min_count``, ranked by count (descending) and cut to
    its ``max_size`` most frequent (0: no cap), from ``value_counts`` rows (several per value when
    counted per day: they are summed, unless ``summed`` says there is one per value already, which
    saves a shuffle of every value). Values of equal count are ordered by a 64-bit hash of the
    value, then by the value: a deterministic order that does not depend on how Spark splits the
    data.

    Out: ``field``, ``value``, ``index`` (1-based rank). Each field's values go to a partition of
    their own (``_partition_keys``), are sorted there by one long key (``_rank_key``) and numbered
    in that order by ``monotonically_increasing_id``, whose low 33 bits count a partition's rows.
    A window per field would sort on the field first: all its values tie there, and the sort
    compared whole rows, 2-4x slower on millions of values per field (benchmarks/README.md).
    One task ranks a field: millions of values per field, never the driver's memory.
    """
    totals = counts if summed else counts.groupBy("field", "value").agg(F.sum("count").alias("count"))
    frequent = totals.where(F.col("count") >= of_field(min_count))
    names = list(min_count)
    partition = of_field(dict(zip(names, _partition_keys(len(names)))))
    value_hash = F.xxhash64("value")
    by_field = frequent.repartition(len(names), partition).sortWithinPartitions(
        _rank_key(F.col("count"), value_hash), F.col("count").desc(), value_hash, "value"
    )
    position = F.monotonically_increasing_id().bitwiseAND(2**33 - 1)
    ranked = by_field.select("field", "value", (position + 1).cast("int").alias("index"))
    cap = of_field(max_size)
    return ranked.where((cap == 0) | (F.col("index") <= cap))


def of_field(values: Mapping[str, int]) -> Column:
    """``values`` of each row's ``field`` (a field name), null for a field it lacks: one literal map."""
    return F.create_map(*(x for name, v in values.items() for x in (F.lit(name), F.lit(v))))[F.col("field")]


COUNT_BITS = 24  # counts below 2**24 order exactly by the rank key; larger ones tie at its front


def _rank_key(count: Column, value_hash: Column) -> Column:
    """A non-negative long whose order agrees with (count descending, ``value_hash``): the count
    below 2**COUNT_BITS, inverted, in the high bits and the hash's top bits below it, so that the
    sort's 8-byte prefix all but settles the order (the full keys after it break the rare ties).
    Counts from 2**COUNT_BITS on all get key 0: they sort first, among themselves by the full keys."""
    hash_bits = 63 - COUNT_BITS
    inverted = F.lit(2**COUNT_BITS - 1) - count
    key = F.shiftleft(inverted, hash_bits) + F.shiftrightunsigned(value_hash, 64 - hash_bits)
    return F.when(count < 2**COUNT_BITS, key).otherwise(F.lit(0))


def _partition_keys(n: int) -> list[int]:
    """``n`` ints that Spark's hash partitioning into ``n`` partitions (``repartition(n, key)``:
    ``pmod(murmur3(key), n)``) sends to partitions 0 .. n-1, one each: for each, the smallest."""
    keys: dict[int, int] = {}
    candidate = 0
    while len(keys) < n:
        keys.setdefault(murmur3_int(candidate) % n, candidate)
        candidate += 1
    return [keys[p] for p in range(n)]


def murmur3_int(value: int, seed: int = 42) -> int:
    """Spark's Murmur3 hash of one int column (``F.hash``, and hash partitioning's), a signed int:
    computed here, where a Spark job asking for it cost ~0.5 s of every fit."""

    def rotl(x: int, r: int) -> int:
        return ((x << r) | (x >> (32 - r))) & 0xFFFFFFFF

    k = rotl((value & 0xFFFFFFFF) * 0xCC9E2D51 & 0xFFFFFFFF, 15) * 0x1B873593 & 0xFFFFFFFF
    h = (rotl(seed ^ k, 13) * 5 + 0xE6546B64) & 0xFFFFFFFF
    h ^= 4  # the input's length in bytes
    h = (h ^ (h >> 16)) * 0x85EBCA6B & 0xFFFFFFFF
    h = (h ^ (h >> 13)) * 0xC2B2AE35 & 0xFFFFFFFF
    h ^= h >> 16
    return h - (1 << 32) if h & 0x80000000 else h


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
        F.max("index").alias("last"),
        F.bit_xor(F.xxhash64("value", "index")).alias("xor"),
        F.sum(F.xxhash64("index", "value").bitwiseAND(0xFFFFFFFF)).alias("sum"),
    )
    found = {row["field"]: row for row in stats.collect()}
    fitted = {}
    for name in fields:
        row = found.get(name)
        size, xor, total = (int(row["size"]), int(row["xor"]), int(row["sum"])) if row else (0, 0, 0)
        if row and row["last"] != size:  # indexes must be 1 .. size: a field shared its partition
            raise RuntimeError(f"vocabulary of {name}: {size} values numbered up to {row['last']}")
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
