"""Synthetic click logs in any declared log schema's layout, with a planted signal a model can learn.

A fixed *world* (category vocabularies, their frequencies and effects) is drawn from the seed and
the schema, then each day draws its impressions independently, so day ``k`` is the same whatever
the number of days. The schema's feature columns take the roles of Criteo's fields: the i-th
categorical column plays ``C{i % 26 + 1}`` (its cardinality, as far as the column's values allow,
its missing share, effects and pairs), the j-th integer or float column ``I{j % 13 + 1}``; the
Criteo preset gets exactly Criteo's world, and the files the generator always wrote.

The click probability is ``sigmoid(intercept + order-1 + pairwise + higher-order + numeric + items + hour)``:
  - order-1: a weight per category value,
  - pairwise: dot products of latent vectors of a few column pairs (what FM learns),
  - higher-order: a product of three columns' scalar latents (what the deep part can learn),
  - numeric: slopes on ``log1p`` of some counts, and a bump on a range of one (bucketize helps),
  - items (``multi`` columns): the mean weight of a row's items, and the dot product of their mean
    latent vector with that of a related categorical column (installed apps x the app shown),
  - hour (schemas with a timestamp): a daily cycle over the hour of the event time.
Category frequencies are Zipf-skewed, several columns have 10-30% missing values, large columns
draw some day-specific fresh values (out-of-vocabulary on later days), and a fraction of rows is
malformed, one defect per row (the schema's reason codes, :attr:`LogFormat.reasons`). With an
event time, a share of each day's valid rows arrives late: written into the next day's file, their
timestamps in their own day.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from deepfm.core.metrics import auc
from deepfm.core.schema import Column, LogSchema
from deepfm.prep.rawlogs import FLOAT_VALUE, INTEGER_VALUE, LAYOUTS, RECORD_REASONS, LogFormat

log = logging.getLogger(__name__)

MANIFEST = "generator.json"

# The roles, Criteo's fields: per categorical role C1..C26, per numeric role I1..I13.
CARDINALITIES = (4, 1000, 30, 8000, 60, 12, 200, 300, 50000, 500, 20000, 1500, 2000,
                 3, 5000, 100, 15000, 6, 800, 40, 30000, 150, 10000, 16, 3000, 8)  # fmt: skip
NUMERIC_ROLES = 13
CATEGORICAL_MISSING = dict(C3=0.15, C12=0.3, C16=0.2, C19=0.25, C20=0.25, C22=0.3, C25=0.1, C26=0.2)
NUMERIC_MISSING = dict(I1=0.3, I3=0.15, I4=0.2, I6=0.2, I10=0.3, I12=0.3, I13=0.15)
NEGATIVE_ROLE = "I2"  # like Criteo's I2, these counts go negative
PAIRS = ((0, 1), (2, 5), (3, 8), (6, 10), (4, 12), (13, 17))
TRIPLE, TRIPLE_EFFECT = (1, 3, 7), 0.5
NUMERIC_SLOPES = dict(I1=0.25, I3=-0.2, I5=0.15, I7=0.2, I11=-0.15)
BUMP_FIELD, BUMP_RANGE, BUMP_EFFECT = "I6", (3, 12), 0.8
FRESH_MIN_CARDINALITY, FRESH_RATE = 5000, 0.05
LATENT_DIM = 4
BASE_CTR = 0.25
# Multi columns: a vocabulary of items, their weights and latent vectors (larger than a single
# value's: a row's mean over several items varies less).
ITEM_CARDINALITY, ITEM_WEIGHT_STD, ITEM_LATENT_STD = 3000, 1.0, 1.5
# Event times: traffic and clicks follow daily cycles, peaking at these hours.
TRAFFIC_PEAK_HOUR, CLICK_PEAK_HOUR, HOUR_EFFECT = 20, 21, 0.5
LATE_FRACTION = 0.01
# Values drawn for a categorical column without a pattern: its name and 8 hex digits.
HEX, VALUE_WIDTH = "0123456789abcdef", 8
# Bad values by reason code; each column keeps those its checks reject and its format can hold.
BAD_VALUES = {
    "bad_label": ("2", "x", "-1", "", "0.5"),
    "bad_numeric": ("1.5", "abc", "1e3", " 7", "-"),
    "bad_categorical": ("xyz12345", "0123456", "123456789", "ghijklmn", "68fd1e6"),
    "bad_timestamp": ("yesterday", "abc", "-", "25:61"),
}
# Spark datetime pattern letters the generator writes, as strftime directives.
STRFTIME = {"yyyy": "%Y", "yy": "%y", "MM": "%m", "dd": "%d", "HH": "%H", "mm": "%M", "ss": "%S"}
INTEGER_TEXT, FLOAT_TEXT = re.compile("-?[0-9]+"), re.compile(FLOAT_VALUE)  # what JSON and Parquet store as numbers
ARROW_TYPES = {"int": pa.int64(), "float": pa.float64(), "str": pa.string(), "list": pa.list_(pa.string())}


@dataclass(frozen=True)
class Items:
    """A multi column's item vocabulary and effects."""

    values: np.ndarray  # distinct item strings, by popularity
    probs: np.ndarray  # Zipf frequencies of ``values``
    weight: np.ndarray  # order-1 effect per item
    latent: np.ndarray  # [items, LATENT_DIM], against the related column's latent vectors
    related: int  # the categorical column the items interact with (-1: none)


@dataclass(frozen=True)
class World:
    """Everything fixed across days: the schema, vocabularies, frequencies, effects, intercept."""

    schema: LogSchema
    seed: int
    values: list[np.ndarray]  # per categorical column: distinct strings, by popularity
    probs: list[np.ndarray]  # Zipf frequencies of ``values``
    order1: list[np.ndarray]  # per column and value
    latent: list[np.ndarray]  # [cardinality, LATENT_DIM] per column
    scalar: list[np.ndarray]  # per column and value, for the higher-order term
    numeric_loc: np.ndarray  # lognormal location / scale per integer or float column
    numeric_scale: np.ndarray
    items: list[Items]  # per multi column
    intercept: float


@dataclass(frozen=True)
class Features:
    """Drawn rows before rendering."""

    ranks: np.ndarray  # [rows, categorical columns] value ranks (-1 missing, -2 fresh)
    fresh: np.ndarray  # the fresh values where ``ranks`` is -2
    nums: np.ndarray  # [rows, integer and float columns], NaN missing
    items: list[np.ndarray]  # per multi column: [rows, max_items] item ranks, -1 for none
    seconds: np.ndarray | None  # the event's second of its day; None without a timestamp column

    def take(self, rows: np.ndarray) -> Features:
        """Some of the rows (a mask or indices)."""
        seconds = None if self.seconds is None else self.seconds[rows]
        return Features(self.ranks[rows], self.fresh[rows], self.nums[rows], [i[rows] for i in self.items], seconds)


Rendered = dict[str, np.ndarray]  # per column, its rows' values as text (multi: lists of items)


@dataclass(frozen=True)
class DayLogs:
    records: list[Any]  # text or JSON lines, or Parquet rows (dicts), for the day's file
    late: list[Any]  # the day's records that arrive late, in the next day's file
    oracle_auc: float  # AUC of the true click probability on the day's valid rows
    oracle_auc_without: dict[str, float]  # ... without a multi column's items or the hour (``_ablations``)
    ctr: float
    malformed: dict[str, int]  # rows per reason code


@dataclass(frozen=True)
class DayDraw:
    """One day as drawn: its records and, per record, what produced it."""

    records: list[Any]
    features: Features
    p: np.ndarray  # the true click probability
    labels: np.ndarray
    valid: np.ndarray  # False for the records given a defect
    malformed: dict[str, int]  # rows per reason code of the schema
    late: np.ndarray  # True for the valid records that arrive late


def _columns(schema: LogSchema, *kinds: str) -> list[Column]:
    return [c for c in schema.columns if c.kind in kinds]


def _categorical_role(i: int) -> str:
    return f"C{i % len(CARDINALITIES) + 1}"


def _numeric_role(j: int) -> str:
    return f"I{j % NUMERIC_ROLES + 1}"


def _roles(indices: tuple[int, ...], n: int) -> tuple[int, ...] | None:
    """Role indices as indices of ``n`` columns (modulo ``n``); None if they fall on one column."""
    columns = tuple(i % n for i in indices)
    return columns if n and len(set(columns)) == len(columns) else None


def _pairs(n: int) -> list[tuple[int, ...]]:
    """The latent pairs among ``n`` categorical columns (Criteo's: ``PAIRS``)."""
    pairs = [p for p in (_roles(pair, n) for pair in PAIRS) if p]
    return [p for k, p in enumerate(pairs) if set(p) not in map(set, pairs[:k])]


@dataclass(frozen=True)
class ValueShape:
    """How a column's values are drawn: ``prefix`` then ``width`` characters of ``alphabet``."""

    prefix: str
    alphabet: str
    width: int

    @property
    def capacity(self) -> int:
        """The most distinct values drawn: a quarter of the space, so that draws rarely collide."""
        return max(1, len(self.alphabet) ** self.width // 4)


def _value_shape(schema: LogSchema, column: Column) -> ValueShape:
    """Values that a column's checks accept: its ``pattern`` (a character class with a count, as
    ``[0-9a-f]{8}``), else its name and hex digits within ``max_length``."""
    if column.pattern:
        match = re.fullmatch(r"\[([^\]^\\]+)\]\{(?:\d+,)?(\d+)\}", column.pattern)
        if not match:
            raise ValueError(f"column {column.name}: no values drawn for pattern {column.pattern!r}; use [chars]{{n}}")
        ranges = re.sub(r"(.)-(.)", lambda m: "".join(map(chr, range(ord(m[1]), ord(m[2]) + 1))), match[1])
        return ValueShape("", "".join(dict.fromkeys(ranges)), int(match[2]))
    width = min(VALUE_WIDTH, column.max_length or VALUE_WIDTH)
    prefix = f"{column.name}_"
    fits = not column.max_length or len(prefix) + width <= column.max_length
    clash = any(d and d in prefix for d in (schema.delimiter, column.item_delimiter))
    return ValueShape(prefix if fits and not clash else "", HEX, width)


def _draw_values(rng: np.random.Generator, shape: ValueShape, n: int) -> np.ndarray:
    """``n`` distinct values of ``shape``."""
    base = len(shape.alphabet)
    draws = rng.integers(0, min(base**shape.width, 2**64), size=2 * n + 16, dtype=np.uint64)
    _, first = np.unique(draws, return_index=True)
    rest = draws[np.sort(first)][:n]
    digits = []
    for _ in range(shape.width):
        digits.append(rest % np.uint64(base))
        rest = rest // np.uint64(base)
    chars = np.array(list(shape.alphabet))[np.stack(digits[::-1], axis=1).astype(np.intp)]
    values = np.ascontiguousarray(chars).view(f"<U{shape.width}").ravel()
    return np.array([shape.prefix + v for v in values.tolist()], dtype=object)


def _zipf(n: int, exponent: float) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1) ** exponent
    return p / p.sum()


def _related(column: Column, categorical: list[Column]) -> int:
    """The categorical column sharing a word with ``column``'s name (installed_apps: app_id), else the first."""
    words = {w.rstrip("s") for w in column.name.split("_")}
    shared = (i for i, c in enumerate(categorical) if words & {w.rstrip("s") for w in c.name.split("_")})
    return next(shared, 0 if categorical else -1)


def build_world(schema: LogSchema, seed: int) -> World:
    """The world of ``schema``'s logs, drawn from ``seed``."""
    rng = np.random.default_rng([seed, 0])
    categorical = _columns(schema, "categorical")
    values, probs, order1, latent, scalar = [], [], [], [], []
    for i, column in enumerate(categorical):
        shape = _value_shape(schema, column)
        n = min(CARDINALITIES[i % len(CARDINALITIES)], shape.capacity)
        values.append(_draw_values(rng, shape, n))
        probs.append(_zipf(n, rng.uniform(1.05, 1.4)))
        order1.append(rng.normal(0.0, (0.0, 0.15, 0.3)[i % len(CARDINALITIES) % 3], size=n))
        latent.append(rng.normal(0.0, 0.35, size=(n, LATENT_DIM)))
        scalar.append(rng.normal(0.0, 1.0, size=n))
    numeric = len(_columns(schema, "integer", "float"))
    numeric_loc, numeric_scale = rng.uniform(0.0, 3.0, size=numeric), rng.uniform(0.5, 1.5, size=numeric)
    items = []
    for column in _columns(schema, "multi"):
        shape = _value_shape(schema, column)
        n = min(ITEM_CARDINALITY, shape.capacity)
        item_values, exponent = _draw_values(rng, shape, n), rng.uniform(1.05, 1.4)
        weight = rng.normal(0.0, ITEM_WEIGHT_STD, size=n)
        item_latent = rng.normal(0.0, ITEM_LATENT_STD, size=(n, LATENT_DIM))
        items.append(Items(item_values, _zipf(n, exponent), weight, item_latent, _related(column, categorical)))
    world = World(schema, seed, values, probs, order1, latent, scalar, numeric_loc, numeric_scale, items, intercept=0.0)
    # Calibrate the intercept on a sample so the base CTR is BASE_CTR whatever the effects.
    logit = _logits(world, _draw_features(world, np.random.default_rng([seed, 1]), 50_000))
    lo, hi = -10.0, 10.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _sigmoid(logit + mid).mean() < BASE_CTR else (lo, mid)
    return dataclasses.replace(world, intercept=(lo + hi) / 2)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _draw_features(world: World, rng: np.random.Generator, n: int) -> Features:
    categorical = _columns(world.schema, "categorical")
    ranks = np.empty((n, len(categorical)), dtype=np.int64)
    fresh = np.full((n, len(categorical)), None, dtype=object)
    for i, column in enumerate(categorical):
        ranks[:, i] = rng.choice(len(world.probs[i]), size=n, p=world.probs[i])
        if len(world.probs[i]) >= FRESH_MIN_CARDINALITY:
            is_fresh = rng.random(n) < FRESH_RATE
            ranks[is_fresh, i] = -2
            fresh[is_fresh, i] = _draw_values(rng, _value_shape(world.schema, column), int(is_fresh.sum()))
        ranks[rng.random(n) < CATEGORICAL_MISSING.get(_categorical_role(i), 0.0), i] = -1
    numeric = _columns(world.schema, "integer", "float")
    draws = np.exp(rng.normal(world.numeric_loc, world.numeric_scale, size=(n, len(numeric))))
    integer = np.array([c.kind == "integer" for c in numeric], dtype=bool)
    nums = np.where(integer, np.floor(draws), np.round(draws, 2))
    nums[:, [j for j in np.flatnonzero(integer) if _numeric_role(j) == NEGATIVE_ROLE]] -= 2
    for j in range(len(numeric)):
        nums[rng.random(n) < NUMERIC_MISSING.get(_numeric_role(j), 0.0), j] = np.nan
    items = [_draw_items(rng, m, c.max_items, n) for m, c in zip(world.items, _columns(world.schema, "multi"))]
    seconds = _draw_seconds(rng, n) if _columns(world.schema, "timestamp") else None
    return Features(ranks, fresh, nums, items, seconds)


def _draw_items(rng: np.random.Generator, items: Items, max_items: int, n: int) -> np.ndarray:
    """Per row 0 to ``max_items`` distinct items (ranks; -1 pads)."""
    counts = rng.integers(0, max_items + 1, size=n)
    drawn = rng.choice(len(items.probs), size=(n, max_items), p=items.probs)
    drawn[np.arange(max_items) >= counts[:, None]] = -1
    for j in range(1, max_items):
        drawn[(drawn[:, :j] == drawn[:, j : j + 1]).any(axis=1), j] = -1
    return drawn


def _draw_seconds(rng: np.random.Generator, n: int) -> np.ndarray:
    """Seconds of the day, the traffic peaking at TRAFFIC_PEAK_HOUR."""
    traffic = 1.0 + 0.6 * np.cos(2 * np.pi * (np.arange(24) - TRAFFIC_PEAK_HOUR) / 24)
    return rng.choice(24, size=n, p=traffic / traffic.sum()) * 3600 + rng.integers(0, 3600, size=n)


def _lookup(table: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """Entries of ``table`` at ``ranks`` (zeros for missing or fresh values)."""
    known = ranks >= 0
    out = np.zeros((*ranks.shape, *table.shape[1:]))
    out[known] = table[ranks[known]]
    return out


def _logits(world: World, f: Features, orders: int = 3) -> np.ndarray:
    """The true logit: intercept, numeric and hour effects, and the categorical and item effects up
    to ``orders`` (1: per value, 2: and pairwise, 3: and the triple); a rank < 0 contributes nothing."""
    z = np.full(len(f.ranks), world.intercept)
    n = len(world.values)
    for i in range(n):
        z += _lookup(world.order1[i], f.ranks[:, i])
    if orders >= 2:
        for a, b in _pairs(n):
            z += (_lookup(world.latent[a], f.ranks[:, a]) * _lookup(world.latent[b], f.ranks[:, b])).sum(axis=1)
    if orders >= 3 and (triple := _roles(TRIPLE, n)):
        z += TRIPLE_EFFECT * np.prod([_lookup(world.scalar[i], f.ranks[:, i]) for i in triple], axis=0)
    logs = np.log1p(np.clip(np.nan_to_num(f.nums, nan=0.0), 0, None))
    for j in range(f.nums.shape[1]):
        if slope := NUMERIC_SLOPES.get(_numeric_role(j)):
            z += slope * (logs[:, j] - world.numeric_loc[j])
    for j in range(f.nums.shape[1]):
        if _numeric_role(j) == BUMP_FIELD:
            z += BUMP_EFFECT * ((f.nums[:, j] >= BUMP_RANGE[0]) & (f.nums[:, j] < BUMP_RANGE[1]))
    for items, ranks in zip(world.items, f.items):
        z += _items_effect(world, items, ranks, f.ranks, orders)
    if f.seconds is not None:
        z += HOUR_EFFECT * np.cos(2 * np.pi * (f.seconds // 3600 - CLICK_PEAK_HOUR) / 24)
    return z


def _items_effect(world: World, items: Items, ranks: np.ndarray, values: np.ndarray, orders: int) -> np.ndarray:
    """The mean weight of each row's items; from order 2 also the dot product of their mean latent
    vector with the related column's (``values``: the rows' category ranks)."""
    count = np.maximum((ranks >= 0).sum(axis=1), 1)
    z = _lookup(items.weight, ranks).sum(axis=1) / count
    if orders >= 2 and items.related >= 0:
        mean = _lookup(items.latent, ranks).sum(axis=1) / count[:, None]
        z += (mean * _lookup(world.latent[items.related], values[:, items.related])).sum(axis=1)
    return z


def _strftime(time_format: str) -> str:
    """A Spark datetime pattern (the letters of ``STRFTIME``, quoted text, other symbols) as strftime's."""
    out = []
    for m in re.finditer(r"'([^']*)'|([A-Za-z])\2*|.", time_format):
        if m[2] and m[0] not in STRFTIME:
            raise ValueError(f"cannot write times as {time_format!r}: use {sorted(STRFTIME)} or unix")
        out.append(STRFTIME[m[0]] if m[2] else (m[0] if m[1] is None else m[1]).replace("%", "%%"))
    return "".join(out)


def _timestamps(column: Column, time_zone: str, day: dt.date, seconds: np.ndarray) -> np.ndarray:
    """The rows' times on ``day`` (wall clock, or unix seconds of the wall clock in ``time_zone``)."""
    midnight = dt.datetime.combine(day, dt.time())
    moments = [midnight + dt.timedelta(seconds=int(s)) for s in seconds]
    if column.time_format == "unix":
        zone = ZoneInfo(time_zone)
        return np.array([str(int(m.replace(tzinfo=zone).timestamp())) for m in moments], dtype=object)
    fmt = _strftime(column.time_format)
    return np.array([m.strftime(fmt) for m in moments], dtype=object)


def _row_ids(day_index: int, n: int) -> np.ndarray:
    """Ids unique across days and rows: splitmix64's bijective mix of ``day_index * 2**32 + row + 1``."""
    x = (np.arange(n, dtype=np.uint64) + np.uint64((day_index << 32) + 1)) * np.uint64(0x9E3779B97F4A7C15)
    for shift, factor in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
        x = (x ^ (x >> np.uint64(shift))) * np.uint64(factor)
    return (x ^ (x >> np.uint64(31))).astype(str).astype(object)


def _render(world: World, f: Features, labels: np.ndarray, day: dt.date, day_index: int) -> Rendered:
    """Each column's values as text (a multi column's as lists of items), "" for missing."""
    schema, n = world.schema, len(labels)
    positions: dict[str, int] = {}  # a column's index among its kind's (integer and float: numeric)
    for kinds in (("categorical",), ("integer", "float"), ("multi",)):
        positions |= {c.name: k for k, c in enumerate(_columns(schema, *kinds))}
    rendered = {}
    for c in schema.columns:
        k = positions.get(c.name, -1)
        if c.kind == "label":
            rendered[c.name] = np.where(labels == 1, schema.positive[0], schema.negative[0]).astype(object)
        elif c.kind in ("integer", "float"):
            col = f.nums[:, k]
            text = np.nan_to_num(col).astype(np.int64 if c.kind == "integer" else np.float64).astype(str)
            rendered[c.name] = np.where(np.isnan(col), "", text).astype(object)
        elif c.kind == "categorical":
            col = np.where(f.ranks[:, k] >= 0, world.values[k][np.maximum(f.ranks[:, k], 0)], "").astype(object)
            is_fresh = f.ranks[:, k] == -2
            col[is_fresh] = f.fresh[is_fresh, k]
            rendered[c.name] = col
        elif c.kind == "multi":
            rendered[c.name] = np.empty(n, dtype=object)  # filled one by one: numpy would nest lists
            for row, ranks in enumerate(f.items[k]):
                rendered[c.name][row] = world.items[k].values[ranks[ranks >= 0]].tolist()
        elif c.kind == "timestamp":
            assert f.seconds is not None  # drawn for every schema with a timestamp column
            rendered[c.name] = _timestamps(c, schema.time_zone, day, f.seconds)
        else:  # ignore: the log's own row id
            rendered[c.name] = _row_ids(day_index, n)
    return rendered


def _value_type(schema: LogSchema, column: Column) -> str:
    """How a column is typed in JSON and Parquet records: int, float, str or list (``ARROW_TYPES``)."""
    numeric_label = all(INTEGER_TEXT.fullmatch(v) for v in (schema.positive[0], schema.negative[0]))
    if column.kind == "integer" or column.time_format == "unix" or (column.kind == "label" and numeric_label):
        return "int"
    return {"float": "float", "multi": "list"}.get(column.kind, "str")


def _typed(value_type: str, value: Any) -> Any:
    """A rendered value as a JSON or Parquet value: "" is null (a multi column's no items: an empty
    list), a number's text the number; text that is no number stays text (a JSON record carries a
    bad number as a string)."""
    if isinstance(value, list):
        return value
    if value == "":
        return None
    if value_type == "int" and INTEGER_TEXT.fullmatch(value):
        return int(value)
    if value_type == "float" and FLOAT_TEXT.fullmatch(value):
        return float(value)
    return value


def _holds(schema: LogSchema, column: Column, value: Any) -> bool:
    """Whether the schema's format can store ``value`` in ``column`` as the bad value it is: text
    without delimiters; Parquet only of the column's type."""
    if schema.format == "text":
        items = value if isinstance(value, list) else [value]
        return not any(d and d in v for v in items for d in (schema.delimiter, "\n", column.item_delimiter))
    value_type = _value_type(schema, column)
    return schema.format == "json" or value_type in ("str", "list") or not isinstance(_typed(value_type, value), str)


def _defects(schema: LogSchema, column: Column) -> dict[str, list[Any]]:
    """The bad values ``column`` can be given, by reason code: those its checks reject
    (:class:`LogFormat`'s, per kind) and the format can hold."""
    bad: dict[str, list[Any]]
    if column.kind == "label":
        bad = {"bad_label": [v for v in BAD_VALUES["bad_label"] if v not in (*schema.positive, *schema.negative)]}
    elif column.kind in ("integer", "float"):
        valid = INTEGER_VALUE if column.kind == "integer" else FLOAT_VALUE
        bad = {"bad_numeric": [v for v in BAD_VALUES["bad_numeric"] if not re.fullmatch(valid, v)]}
    elif column.kind == "timestamp":
        bad = {"bad_timestamp": list(BAD_VALUES["bad_timestamp"])}
    elif column.kind == "categorical" and column.pattern:
        bad = {"bad_categorical": [v for v in BAD_VALUES["bad_categorical"] if not re.fullmatch(column.pattern, v)]}
    elif column.kind in ("categorical", "multi") and column.max_length:
        long = "x" * (column.max_length + 1)
        bad = {"value_too_long": [[long] if column.kind == "multi" else long]}
    else:
        bad = {}
    kept = {reason: [v for v in values if _holds(schema, column, v)] for reason, values in bad.items()}
    return {reason: values for reason, values in kept.items() if values}


def _reasons(schema: LogSchema) -> list[str]:
    """The reason codes the generator gives this schema's records, in ``LogFormat.reasons``' order
    (Parquet rows are typed: no broken records, no value of another type)."""
    made = {reason for c in schema.columns for reason in _defects(schema, c)}
    if schema.format != "parquet":
        made.add(RECORD_REASONS[schema.format])
    return [reason for reason in LogFormat(schema).reasons if reason in made]


def _malform(rng: np.random.Generator, schema: LogSchema, rendered: Rendered, rows: np.ndarray) -> np.ndarray:
    """Give each row in ``rows`` one defect; return its reason (index into ``_reasons``). A
    record-level defect is made when the records are serialized."""
    reasons = _reasons(schema)
    defects = [(c.name, d) for c in schema.columns if (d := _defects(schema, c))]
    kinds = rng.integers(0, len(reasons), size=len(rows))
    for row, kind in zip(rows, kinds):
        reason = reasons[kind]
        carriers = [(name, d[reason]) for name, d in defects if reason in d]
        if not carriers:  # the record-level reason
            continue
        # The order of draws the Criteo logs have always had: a bad number's value before its column.
        early = rng.integers(max(len(bad) for _, bad in carriers)) if reason == "bad_numeric" else None
        name, bad = carriers[rng.integers(len(carriers))] if len(carriers) > 1 else carriers[0]
        rendered[name][row] = bad[rng.integers(len(bad)) if early is None else early % len(bad)]
    return kinds


def _serialize(rng: np.random.Generator, schema: LogSchema, rendered: Rendered, broken: np.ndarray) -> list[Any]:
    """The records: text lines, JSON lines or Parquet rows (dicts); those in ``broken`` get a
    record-level defect (a field more or less; JSON cut short)."""
    if schema.format == "text":
        fields = [
            [c.item_delimiter.join(v) for v in rendered[c.name]] if c.kind == "multi" else rendered[c.name]
            for c in schema.columns
        ]
        records = [schema.delimiter.join(values) for values in zip(*fields)]
        for row in broken:
            line = records[row]
            records[row] = line + schema.delimiter if rng.random() < 0.5 else line.rsplit(schema.delimiter, 1)[0]
        return records
    types = [_value_type(schema, c) for c in schema.columns]
    typed = [[_typed(t, v) for v in rendered[c.name]] for c, t in zip(schema.columns, types)]
    rows = [dict(zip((c.name for c in schema.columns), values)) for values in zip(*typed)]
    if schema.format == "parquet":
        return rows
    records = [json.dumps(row, separators=(",", ":")) for row in rows]
    for row in broken:
        line = records[row]
        records[row] = line[:-1] if rng.random() < 0.5 else line[: len(line) // 2]
    return records


def generate_day(world: World, day: dt.date, day_index: int, rows: int, malformed_fraction: float) -> DayLogs:
    """One day's records, deterministic from ``(seed, day_index)``; their times are on ``day``."""
    d = _draw_day(world, day, day_index, rows, malformed_fraction)
    labels = d.labels[d.valid]
    return DayLogs(
        records=[r for r, late in zip(d.records, d.late) if not late],
        late=[r for r, late in zip(d.records, d.late) if late],
        oracle_auc=auc(d.p[d.valid], labels),
        oracle_auc_without={
            name: auc(_logits(world, f), labels) for name, f in _ablations(world, d.features.take(d.valid)).items()
        },
        ctr=float(labels.mean()),
        malformed=d.malformed,
    )


def _ablations(world: World, f: Features) -> dict[str, Features]:
    """The rows without each signal Criteo's logs lack: a multi column's items (by its name), the
    hour of the event time (by the derived field's name, ``<timestamp>_hour``)."""
    ablated = {}
    for k, column in enumerate(_columns(world.schema, "multi")):
        items = [np.full_like(ranks, -1) if j == k else ranks for j, ranks in enumerate(f.items)]
        ablated[column.name] = dataclasses.replace(f, items=items)
    if f.seconds is not None:
        clock = world.schema.event_time or _columns(world.schema, "timestamp")[0].name
        ablated[f"{clock}_hour"] = dataclasses.replace(f, seconds=None)
    return ablated


def _draw_day(world: World, day: dt.date, day_index: int, rows: int, malformed_fraction: float) -> DayDraw:
    schema = world.schema
    rng = np.random.default_rng([world.seed, 2, day_index])
    features = _draw_features(world, rng, rows)
    p = _sigmoid(_logits(world, features))
    labels = (rng.random(rows) < p).astype(np.int8)
    rendered = _render(world, features, labels, day, day_index)
    bad = np.flatnonzero(rng.random(rows) < malformed_fraction)
    kinds, reasons = _malform(rng, schema, rendered, bad), _reasons(schema)
    record_level = RECORD_REASONS[schema.format]
    broken = bad[kinds == reasons.index(record_level)] if record_level in reasons else bad[:0]
    records = _serialize(rng, schema, rendered, broken)
    valid = np.ones(rows, dtype=bool)
    valid[bad] = False
    late = valid & (rng.random(rows) < LATE_FRACTION) if schema.event_time else np.zeros(rows, dtype=bool)
    malformed = {r: int((kinds == reasons.index(r)).sum()) if r in reasons else 0 for r in LogFormat(schema).reasons}
    return DayDraw(records, features, p, labels, valid, malformed, late)


CEILINGS = ("true probability", "seen values, order 1", "seen values, orders 1-2", "seen values, all orders")


def reference_ceilings(
    manifest: dict[str, Any], train_days: list[str], test_day: str, min_count: int
) -> dict[str, dict[str, float]]:
    """AUC and logloss on ``test_day``'s valid rows of the true click probability, and of the true
    probability without the effects of category values and items seen fewer than ``min_count``
    times on the training days (what no model trained on those days can know), keeping effects up
    to order 1, 2, and all orders. Upper bounds: no model reaches them on small data."""
    world = build_world(LogSchema.from_dict(manifest["schema"]), manifest["seed"])
    start, rows, malformed = (
        dt.date.fromisoformat(manifest["start_date"]),
        manifest["rows_per_day"],
        manifest["malformed_fraction"],
    )

    def valid_features(day: str) -> tuple[Features, DayDraw]:
        d = _draw_day(world, dt.date.fromisoformat(day), (dt.date.fromisoformat(day) - start).days, rows, malformed)
        return d.features.take(d.valid), d

    counts = [np.zeros(len(values), dtype=np.int64) for values in world.values]
    item_counts = [np.zeros(len(items.values), dtype=np.int64) for items in world.items]
    for day in train_days:
        f, _ = valid_features(day)
        for i, table in enumerate(counts):
            np.add.at(table, f.ranks[:, i][f.ranks[:, i] >= 0], 1)
        for ranks, table in zip(f.items, item_counts):
            np.add.at(table, ranks[ranks >= 0], 1)
    test, d = valid_features(test_day)

    def seen(ranks: np.ndarray, table: np.ndarray) -> np.ndarray:
        return np.where((ranks >= 0) & (table[np.maximum(ranks, 0)] >= min_count), ranks, -1)

    known_ranks = test.ranks.copy()
    for i, table in enumerate(counts):
        known_ranks[:, i] = seen(test.ranks[:, i], table)
    known_items = [seen(ranks, table) for ranks, table in zip(test.items, item_counts)]
    known = dataclasses.replace(test, ranks=known_ranks, items=known_items)
    labels = d.labels[d.valid]
    scores = {
        CEILINGS[0]: d.p[d.valid],
        **{CEILINGS[k]: _sigmoid(_logits(world, known, k)) for k in (1, 2, 3)},
    }
    return {name: {"auc": auc(p, labels), "logloss": _logloss(labels, p)} for name, p in scores.items()}


def _logloss(labels: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log1p(-p)))


def day_file(output: Path, schema: LogSchema, day: dt.date, day_index: int, layout: str, gz: bool) -> Path:
    """Where a day's records go: ``date=YYYY-MM-DD/part-00000.<tsv|csv|txt|json|parquet>[.gz]``
    (Parquet compresses inside: no suffix), or ``day_<index>[.gz]``."""
    suffix = ".gz" if gz and schema.format != "parquet" else ""
    if layout == "date":
        extension = {"\t": "tsv", ",": "csv"}.get(schema.delimiter, "txt") if schema.format == "text" else schema.format
        return output / f"date={day.isoformat()}" / f"part-00000.{extension}{suffix}"
    return output / f"day_{day_index}{suffix}"


def _clear_day(output: Path, schema: LogSchema, day: dt.date, day_index: int, layout: str) -> None:
    """Remove a day's previous files, plain and gzipped, so a rewrite replaces the day whole."""
    for gz in (False, True):
        path = day_file(output, schema, day, day_index, layout, gz)
        if layout == "date":
            shutil.rmtree(path.parent, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _write_records(path: Path, schema: LogSchema, records: list[Any], gz: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")  # hidden: readers skip it
    if schema.format == "parquet":
        arrow = pa.schema([(c.name, ARROW_TYPES[_value_type(schema, c)]) for c in schema.columns])
        pq.write_table(pa.Table.from_pylist(records, schema=arrow), tmp, compression="gzip" if gz else "snappy")
    else:
        header = [schema.delimiter.join(c.name for c in schema.columns)] if schema.header else []
        data = ("\n".join([*header, *records]) + "\n").encode()
        if gz:
            with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as fh:
                fh.write(data)
        else:
            tmp.write_bytes(data)
    tmp.replace(path)


def write_logs(
    output: str | Path,
    days: int,
    rows_per_day: int,
    start_date: dt.date,
    *,
    schema: LogSchema,
    seed: int = 0,
    layout: str = "date",
    gz: bool = False,
    malformed_fraction: float = 0.002,
) -> dict:
    """Write ``days`` days of ``schema``'s logs from ``start_date`` and a ``generator.json``
    manifest; return it.

    Per day (the folder's, which is also the event-time day of its own rows): ``file``, ``rows``
    (records in the file), ``ctr`` and ``oracle_auc`` (the true probability's AUC) of the day's
    valid rows, ``oracle_auc_without`` (that AUC without the items of a multi column or the hour
    of the event time, by name: what each is worth), ``malformed`` (records per reason code) and
    ``late_rows`` (the day's valid rows written into the next day's file; the last day's are not
    written, they would come with the next day). In the ``criteo`` layout (text schemas)
    ``start_date`` is the date of ``day_0``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}")
    if layout == "criteo" and schema.format != "text":
        raise ValueError(f"the criteo layout holds text logs; schema {schema.name} is {schema.format}")
    output = Path(output)
    world = build_world(schema, seed)
    manifest: dict[str, Any] = {
        "seed": seed,
        "schema": schema.to_dict(),
        "layout": layout,
        "gzip": gz,
        "rows_per_day": rows_per_day,
        "start_date": start_date.isoformat(),
        "malformed_fraction": malformed_fraction,
        "late_fraction": LATE_FRACTION if schema.event_time else 0.0,
        "days": {},
    }
    late: list[Any] = []
    for k in range(days):
        day = start_date + dt.timedelta(days=k)
        logs = generate_day(world, day, k, rows_per_day, malformed_fraction)
        records, late = logs.records + late, logs.late
        path = day_file(output, schema, day, k, layout, gz)
        _clear_day(output, schema, day, k, layout)
        _write_records(path, schema, records, gz)
        manifest["days"][day.isoformat()] = {
            "file": str(path.relative_to(output)),
            "rows": len(records),
            "ctr": round(logs.ctr, 4),
            "oracle_auc": round(logs.oracle_auc, 4),
            "oracle_auc_without": {name: round(value, 4) for name, value in logs.oracle_auc_without.items()},
            "malformed": logs.malformed,
            "late_rows": len(logs.late),
        }
        log.info("wrote %s: %d rows, ctr %.3f, oracle auc %.3f", path, len(records), logs.ctr, logs.oracle_auc)
    (output / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest
