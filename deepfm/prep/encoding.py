"""Fitting a :class:`~deepfm.core.features.FeatureSpec` on Spark DataFrames, and encoding with one.

This is the one encoding mechanism: preprocessing encodes the training and test days with it,
scoring encodes new raw rows with the spec saved in the model bundle. Both take parsed raw rows
(:meth:`deepfm.prep.rawlogs.LogFormat.parse_valid`) and built-in Spark expressions only (no Python UDF).

Transforms (chosen per field by a :class:`FeatureConfig`), index 0 always meaning missing / OOV:
  - ``vocab``: values seen at least ``min_count`` times on the training rows, ranked by
    (count desc, value asc); index = rank (1-based). Encoded by a join on the value's 64-bit hash,
    then a comparison of the values (exact): a broadcast join per small vocabulary, one shuffle
    join for all the large ones (``_look_up``).
  - ``hash``: ``1 + pmod(xxhash64(<hash_seed>, value), hash_buckets - 1)``,
    cardinality ``hash_buckets``.
  - ``bucketize``: quantile boundaries ``b`` fitted on training rows (``percentile_approx``,
    deduplicated); index ``1 + #{b_i <= x}``, cardinality ``len(b) + 2``.
  - ``log``: ``log1p(max(x, 0))`` as float32; ``raw``: ``x`` as float32; missing -> 0.
``vocab`` and ``hash`` key on the raw value as a string, so they also apply to integer fields.
A multi-valued field (an array of strings per row) encodes each item with its ``vocab`` or ``hash``
transform into its slot columns (see :mod:`deepfm.core.features`); its vocabulary counts items.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import partial, reduce
from operator import add
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from deepfm.core.features import PADDING, VOCABULARIES, FeatureSpec, FieldSpec
from deepfm.core.schema import LogSchema
from deepfm.prep import vocabulary

log = logging.getLogger(__name__)

KIND_TRANSFORMS = {
    "categorical": ("vocab", "hash"),
    "multi": ("vocab", "hash"),
    "integer": ("log", "raw", "bucketize", "vocab", "hash"),
    "float": ("log", "raw", "bucketize"),
}
# Vocabularies up to this many values are broadcast to every task (one hashed relation of some
# 10 MB each, built on the driver); larger ones are shuffle joins, so neither the driver's memory
# nor an executor's grows with the vocabularies.
BROADCAST_MAX_VOCABULARY = 250_000


@dataclass(frozen=True)
class FieldPlan:
    """How to fit one field: its raw kind, transform and the transform's fitting parameters."""

    name: str
    kind: str
    transform: str
    min_count: int = 1
    hash_buckets: int = 0
    buckets: int = 0  # quantile buckets (bucketize)
    max_items: int = 0  # multi: items kept per row (the log schema's)
    max_size: int = 0  # vocab: keep the most frequent values only (0: every value seen min_count times)
    oov_buckets: int = 0  # vocab: hash values out of the vocabulary into this many extra indexes (0: one index 0)

    def __post_init__(self) -> None:
        if self.transform not in KIND_TRANSFORMS[self.kind]:
            raise ValueError(
                f"field {self.name}: transform {self.transform!r} not allowed for {self.kind} fields "
                f"(choose one of {KIND_TRANSFORMS[self.kind]})"
            )
        if self.transform == "hash" and self.hash_buckets < 2:
            raise ValueError(f"field {self.name}: hash_buckets must be >= 2")
        if self.transform == "bucketize" and self.buckets < 2:
            raise ValueError(f"field {self.name}: buckets must be >= 2")
        if self.max_size < 0 or self.oov_buckets < 0:
            raise ValueError(f"field {self.name}: max_size and oov_buckets must be >= 0")


@dataclass(frozen=True)
class FeatureConfig:
    """How a log schema's feature fields become model inputs (``deepfm/conf/features.yaml``,
    typed): one plan per field, the hash seed and the relative error of fitted quantiles."""

    schema: LogSchema
    plans: tuple[FieldPlan, ...]
    hash_seed: int = 0
    relative_error: float = 0.001

    @classmethod
    def from_dict(cls, conf: Mapping[str, Any], schema: LogSchema) -> FeatureConfig:
        """From the YAML layout: a default transform per kind of field, then per-field overrides."""
        overrides = dict(conf.get("fields") or {})
        kinds = schema.feature_kinds
        unknown = overrides.keys() - kinds.keys()
        if unknown:
            raise ValueError(f"feature settings override fields {sorted(unknown)} not in log schema {schema.name}")
        plans = []
        for name, kind in kinds.items():
            settings = {**conf["defaults"][kind], **(overrides.get(name) or {})}
            if kind == "multi":
                settings["max_items"] = schema.column(name).max_items
            plans.append(FieldPlan(name=name, kind=kind, **settings))
        return cls(schema, tuple(plans), int(conf.get("hash_seed", 0)), float(conf.get("relative_error", 0.001)))

    def plan(self, name: str) -> FieldPlan:
        return next(p for p in self.plans if p.name == name)

    @property
    def vocabulary_fields(self) -> list[str]:
        """The fields encoded with a vocabulary, in field order."""
        return [p.name for p in self.plans if p.transform == "vocab"]


def _key(name: str) -> Column:
    """A field's raw value as the string that vocabularies and hashing key on."""
    return F.col(name).cast("string")


def _probe_key(field: Column, value: Column) -> Column:
    """The 64-bit key a vocabulary join matches on, of a value of the ``field``-th vocabulary field:
    the same for a row's value and a vocabulary's."""
    return F.xxhash64(field, value)


def _quantile_probabilities(buckets: int) -> list[float]:
    return [k / buckets for k in range(1, buckets)]


def value_counts(
    rows: DataFrame, fields: Sequence[str], by: Sequence[str] = (), multi: Sequence[str] = ()
) -> DataFrame:
    """How often each non-null value of each of ``fields`` occurs in ``rows`` (per ``by`` group);
    the fields in ``multi`` are arrays, whose every item counts.

    Out: ``*by``, ``field`` (name), ``value`` (the string vocabularies key on), ``count`` (long).
    One (field position, value) pair per field (item) and row, counted in one aggregation: an int
    field key aggregates faster than the field's name, which replaces it afterwards.
    """

    def pair(i: int, value: Column) -> Column:
        return F.struct(F.lit(i).alias("field"), value.alias("value"))

    single = F.array(*(pair(i, _key(n)) for i, n in enumerate(fields) if n not in multi))
    items = [F.transform(F.col(n), partial(pair, i)) for i, n in enumerate(fields) if n in multi]
    pairs = rows.select(*by, F.inline(F.concat(single, *items) if items else single))
    counted = pairs.where(F.col("value").isNotNull()).groupBy(*by, "field", "value").count()
    names = F.array(*(F.lit(n) for n in fields))
    return counted.select(*by, names[F.col("field")].alias("field"), "value", "count")


def _boundaries(train: DataFrame, plans: Sequence[FieldPlan], relative_error: float) -> dict[str, tuple[float, ...]]:
    """Quantile boundaries of the bucketized fields on the training rows (one aggregation, only
    when some field is bucketized)."""
    quantiles = [
        F.percentile_approx(
            F.col(p.name).cast("double"), _quantile_probabilities(p.buckets), int(1 / relative_error)
        ).alias(p.name)
        for p in plans
        if p.transform == "bucketize"
    ]
    row = train.agg(*quantiles).first() if quantiles else None
    found = row.asDict() if row is not None else {}
    return {name: tuple(sorted(set(values or ()))) for name, values in found.items()}


def _vocabularies(
    train: DataFrame, plans: Sequence[FieldPlan], counts: DataFrame | None, directory: str
) -> dict[str, vocabulary.Fitted]:
    """The vocabulary fields' vocabularies (from ``counts``, else one aggregation of ``train``),
    ranked and stored under ``<directory>/vocabularies`` by Spark."""
    vocab_plans = [p for p in plans if p.transform == "vocab"]
    if not vocab_plans:
        return {}
    names, multi = [p.name for p in vocab_plans], [p.name for p in vocab_plans if p.kind == "multi"]
    counted = value_counts(train, names, multi=multi) if counts is None else counts
    thresholds = {p.name: p.min_count for p in vocab_plans}
    ranked = vocabulary.rank(counted, thresholds, {p.name: p.max_size for p in vocab_plans}, summed=counts is None)
    return vocabulary.store(ranked, f"{directory}/{VOCABULARIES}", names)


def _field_spec(plan: FieldPlan, fitted: vocabulary.Fitted | None, boundaries: tuple[float, ...]) -> FieldSpec:
    if plan.transform == "vocab" and fitted is not None:
        # Index 0 is reserved; a field with no frequent value still gets a (never used) index 1.
        cardinality = max(2, 1 + fitted.size + plan.oov_buckets)
        return FieldSpec(plan.name, "vocab", cardinality, max_items=plan.max_items, vocabulary_size=fitted.size,
                         vocabulary_hash=fitted.digest, oov_buckets=plan.oov_buckets)  # fmt: skip
    if plan.transform == "hash":
        buckets = plan.hash_buckets
        return FieldSpec(plan.name, "hash", cardinality=buckets, hash_buckets=buckets, max_items=plan.max_items)
    if plan.transform == "bucketize":
        return FieldSpec(plan.name, "bucketize", cardinality=len(boundaries) + 2, boundaries=boundaries)
    return FieldSpec(plan.name, plan.transform)


def fit(
    train: DataFrame,
    config: FeatureConfig,
    directory: str,
    metadata: Mapping[str, Any] | None = None,
    counts: DataFrame | None = None,
) -> FeatureSpec:
    """Fit a spec on parsed training rows with the transforms of ``config``; its vocabularies are
    stored under ``directory`` (where the spec is to be saved), and the spec lives there.

    ``metadata`` (e.g. source days, row counts) is stored with the per-field fitting plans.
    ``counts``: the ``value_counts`` of ``train``'s vocabulary fields when already known (e.g.
    per day, kept from earlier runs); ``train`` is then read only for bucketized fields.
    """
    plans = config.plans
    fitted = _vocabularies(train, plans, counts, directory)
    boundaries = _boundaries(train, plans, config.relative_error)
    fields = tuple(_field_spec(p, fitted.get(p.name), boundaries.get(p.name, ())) for p in plans)
    spec = FeatureSpec(
        fields=fields,
        hash_seed=config.hash_seed,
        label=config.schema.label,
        metadata={**(metadata or {}), "field_plans": [asdict(p) for p in plans]},
        schema=config.schema,
        directory=directory,
    )
    log.info(
        "fitted feature spec %s: cardinalities %s",
        spec.version,
        {f.name: f.cardinality for f in spec.categorical_fields},
    )
    return spec


def _vocabulary_table(df: DataFrame, spec: FeatureSpec, fields: Sequence[FieldSpec]) -> DataFrame:
    """``fields``' vocabularies in one frame: ``field`` (the field's position in ``fields``), ``value``
    (string), ``index`` (int, 1-based) and ``key`` (the value hashed as the rows' probe key is)."""
    position = vocabulary.of_field({f.name: k for k, f in enumerate(fields)})
    table = vocabulary.tables(df.sparkSession, spec, fields).withColumn("field", position)
    return table.withColumn("key", _probe_key(F.col("field"), F.col("value")))


def _item(field: FieldSpec, slot: int) -> Column:
    """Item ``slot`` (0-based) of a multi-valued field's array, null past its end."""
    return F.try_element_at(F.col(field.name), F.lit(slot + 1))


def _lookups(fields: Sequence[FieldSpec]) -> list[tuple[str, Column, int]]:
    """(encoded column, the raw value it looks up, position of its field in ``fields``): one per
    single-valued field, one per slot of a multi-valued one."""
    lookups = []
    for k, f in enumerate(fields):
        if f.is_multi_valued:
            lookups += [(column, _item(f, i), k) for i, column in enumerate(f.columns)]
        else:
            lookups.append((f.name, _key(f.name), k))
    return lookups


def _look_up(df: DataFrame, spec: FeatureSpec, fields: Sequence[FieldSpec], broadcast_max: int) -> DataFrame:
    """``df`` plus ``_<column>_index`` per encoded column of ``fields`` (``spec``'s vocabulary
    fields): the value's index in its field's vocabulary, 0 when it is not in it, null when missing.

    Vocabularies up to ``broadcast_max`` values are broadcast (``_broadcast_lookups``); the larger
    ones are looked up together in one shuffle (``_shuffled_lookups``), so neither the driver's
    memory nor an executor's grows with them, and the rows are not shuffled once per field.
    """
    small = [f for f in fields if f.vocabulary_length <= broadcast_max]
    large = [f for f in fields if f.vocabulary_length > broadcast_max]
    return _shuffled_lookups(_broadcast_lookups(df, spec, small), spec, large)


def _broadcast_lookups(df: DataFrame, spec: FeatureSpec, fields: Sequence[FieldSpec]) -> DataFrame:
    """``_look_up`` by broadcast left joins on a 64-bit hash of (field, value): every lookup (a
    field, or a slot of a multi-valued one) joins the one table of all these vocabularies, read by
    one scan and broadcast once (Spark reuses the exchange). A scan and a broadcast per field cost
    a Spark job and a generated class each: about a second per run whatever its size.

    A join on one long key probes a long-keyed hash map, cheaper per row than a join on the string
    (figures: benchmarks/README.md); the strings are then compared, so the index stays exact.
    (Two vocabulary entries with the same 64-bit hash would duplicate rows, and the jobs' row
    reconciliation would fail loudly.) The joins are one SQL statement, analysed once:
    26 ``DataFrame.join`` calls re-analyse the growing plan each time, seconds of driver time
    whatever the rows.
    """
    if not fields:
        return df
    lookups = _lookups(fields)
    probes = [_probe_key(F.lit(k), value).alias(f"_{column}_probe") for column, value, k in lookups]
    values = [value.alias(f"_{column}_raw") for column, value, _ in lookups]
    joins, added = [], []
    for j, (column, _, _) in enumerate(lookups):
        table = f"vocabulary_{j}"
        joins.append(f"LEFT JOIN {{vocabularies}} AS {table} ON rows.`_{column}_probe` = {table}.key")
        value = f"rows.`_{column}_raw`"
        index = f"CASE WHEN {table}.value = {value} THEN {table}.index WHEN {value} IS NOT NULL THEN 0 END"
        added.append(f"{index} AS `_{column}_index`")
    tables = ", ".join(f"vocabulary_{j}" for j in range(len(lookups)))
    kept = [f"rows.`{c}`" for c in df.columns]
    query = f"SELECT /*+ BROADCAST({tables}) */ {', '.join(kept + added)} FROM {{rows}} AS rows {' '.join(joins)}"
    vocabularies = _vocabulary_table(df, spec, fields)
    return df.sparkSession.sql(query, None, rows=df.select("*", *probes, *values), vocabularies=vocabularies)


def _shuffled_lookups(df: DataFrame, spec: FeatureSpec, fields: Sequence[FieldSpec]) -> DataFrame:
    """``_look_up`` for vocabularies too large to broadcast, all in one shuffle join.

    Each row's present values of these fields become (slot, field, value) pairs keyed by the row's
    content (two 64-bit hashes: identical rows encode identically, so they may share a key); the
    pairs are joined with the union of the vocabularies on (field, value hash) -- one sort-merge
    join, whose partitions of hot values adaptive execution splits -- and the exact matches are
    gathered back into one row of indexes per row key, which is joined to the rows. The rows are
    shuffled once whatever the number of fields (a join per field shuffled them once per field:
    benchmarks/README.md); ``df`` is computed twice.
    """
    if not fields:
        return df
    lookups = _lookups(fields)
    content = [F.col(f"`{c}`") for c in df.columns]
    row_key = [F.xxhash64(F.lit(1), *content).alias("_row_a"), F.xxhash64(F.lit(2), *content).alias("_row_b")]
    keyed = df.select("*", *row_key)
    items = [
        F.struct(F.lit(j).alias("slot"), F.lit(k).alias("field"), value.alias("value"))
        for j, (_, value, k) in enumerate(lookups)
    ]
    pairs = keyed.select("_row_a", "_row_b", F.inline(F.array(*items))).where(F.col("value").isNotNull())
    pairs = pairs.withColumn("key", _probe_key(F.col("field"), F.col("value")))
    # Merge, not broadcast: these vocabularies are too large by definition, whatever their files' size.
    union = _vocabulary_table(df, spec, fields).withColumnRenamed("value", "known").hint("merge")
    matched = pairs.join(union, ["field", "key"]).where(F.col("value") == F.col("known"))
    slot = F.col("slot")
    # Shuffled by row before aggregating: a row's matches are spread over all partitions of the
    # join, so aggregating them there first would shuffle a row of every slot's index per match.
    by_row = matched.select("_row_a", "_row_b", "slot", "index").repartition("_row_a", "_row_b")
    found = by_row.groupBy("_row_a", "_row_b").agg(  # one aggregation (a pivot would shuffle twice)
        *(F.max(F.when(slot == j, F.col("index"))).alias(f"_{c}_index") for j, (c, _, _) in enumerate(lookups))
    )
    joined = keyed.join(found, ["_row_a", "_row_b"], "left")
    indexes = [F.when(v.isNotNull(), F.coalesce(f"_{c}_index", F.lit(0))).alias(f"_{c}_index") for c, v, _ in lookups]
    return joined.select(*content, *indexes)


def _index(field: FieldSpec, column: str, value: Column, hash_seed: int) -> Column:
    """The index of one raw value (a single field's, or one item) by ``field``'s transform; null
    when it is missing (``fill_missing`` makes that 0)."""
    hashed = F.xxhash64(F.lit(hash_seed), value)  # seed first: no per-row string built
    if field.transform == "vocab":
        # Null when missing already: a test of the raw value would keep that column in the rows
        # through every vocabulary join, beside its lookup's copy.
        found = F.col(f"_{column}_index")
        if not field.oov_buckets:
            return found
        return F.when(found == 0, F.pmod(hashed, F.lit(field.oov_buckets)) + (field.vocabulary_length + 1)).otherwise(
            found
        )
    if field.transform == "hash":
        index = F.pmod(hashed, F.lit(field.hash_buckets - 1)) + 1
    else:  # bucketize
        number = value.cast("double")
        index = reduce(add, ((number >= F.lit(b)).cast("int") for b in field.boundaries), F.lit(1))
    return F.when(value.isNotNull(), index)


def _encoded(field: FieldSpec, hash_seed: int) -> list[Column]:
    """``field``'s encoded columns (one, or a multi-valued field's slots), the first one null where
    the row lacks the field (``fill_missing`` gives it its encoded value, 0)."""
    x = F.col(field.name)
    if field.transform == "log":
        # greatest() skips nulls: a missing x would give log1p(0).
        return [F.when(x.isNotNull(), F.log1p(F.greatest(x, F.lit(0)))).cast("float").alias(field.name)]
    if field.transform == "raw":
        return [x.cast("float").alias(field.name)]
    if not field.is_multi_valued:
        value = x if field.transform == "bucketize" else _key(field.name)
        return [_index(field, field.name, value, hash_seed).cast("int").alias(field.name)]
    # Slot 0 of an empty list is item 0 (missing); later slots past the list's end are padding.
    items = F.size(x)
    slots = []
    for i, column in enumerate(field.columns):
        index = _index(field, column, _item(field, i), hash_seed)
        past_end = F.lit(None) if i == 0 else F.lit(PADDING)
        slots.append(F.when(items > i, index).otherwise(past_end).cast("int").alias(column))
    return slots


def fill_missing(df: DataFrame, spec: FeatureSpec) -> DataFrame:
    """``encode(..., fill=False)`` output with each missing value at its encoded value: index 0,
    or 0.0 for a ``log`` or ``raw`` field (every column of a field: none is then nullable)."""
    fills = {
        c: F.lit(0).cast("float" if f.transform in ("log", "raw") else "int") for f in spec.fields for c in f.columns
    }
    return df.select(*(F.coalesce(F.col(c), fills[c]).alias(c) if c in fills else F.col(c) for c in df.columns))


def present_counts(spec: FeatureSpec) -> list[Column]:
    """Aggregates ``present <field>`` over ``encode(..., fill=False)`` rows: the rows that have
    each field of ``spec`` (a multi-valued one: an item), a ``count`` of its encoded column, null
    exactly where the value is missing. The rows minus it are the missing values, counted without
    a per-row flag (the writer's pass of ``preprocess`` observes them; benchmarks/README.md has
    the costs)."""
    return [F.count(f.columns[0]).alias(f"present {f.name}") for f in spec.fields]


def encode(
    df: DataFrame, spec: FeatureSpec, broadcast_max: int = BROADCAST_MAX_VOCABULARY, fill: bool = True
) -> DataFrame:
    """Encode parsed rows with ``spec`` (vocabularies of up to ``broadcast_max`` values broadcast).

    Out: ``label`` (float32, when ``df`` has one), the spec's encoded columns in spec order (int32
    index or float32 value, see :mod:`deepfm.core.features`), then ``df``'s other columns unchanged
    (e.g. ``impression_id``, ``day``). With ``fill`` off, a field's (first) column is null where
    the row lacks the field, for ``present_counts``; ``fill_missing`` then completes the encoding.
    """
    missing = [f.name for f in spec.fields if f.name not in df.columns]
    if missing:
        raise ValueError(f"cannot encode: input lacks fields {missing} of feature spec {spec.version}")
    joined = _look_up(df, spec, [f for f in spec.fields if f.transform == "vocab"], broadcast_max)
    encoded_names = {spec.label, *(f.name for f in spec.fields)}
    label = [F.col(spec.label).cast("float").alias(spec.label)] if spec.label in df.columns else []
    encoded = joined.select(
        *label,
        *(c for f in spec.fields for c in _encoded(f, spec.hash_seed)),
        *(F.col(c) for c in df.columns if c not in encoded_names),
    )
    return fill_missing(encoded, spec) if fill else encoded
