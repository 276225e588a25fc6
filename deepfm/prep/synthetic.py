"""Synthetic click logs in Criteo's raw layout, with a planted signal a model can learn.

Every line is ``label \\t I1..I13 \\t C1..C26``; any field may be empty. A fixed *world*
(category vocabularies, their frequencies and effects) is drawn from the seed, then each day
draws its impressions independently, so day ``k`` is the same whatever the number of days.

The click probability is ``sigmoid(intercept + order-1 + pairwise + higher-order + numeric)``:
  - order-1: a weight per category value,
  - pairwise: dot products of latent vectors of a few field pairs (what FM learns),
  - higher-order: a product of three fields' scalar latents (what the deep part can learn),
  - numeric: slopes on ``log1p`` of some counts, and a bump on a range of one (bucketize helps).
Category frequencies are Zipf-skewed, several fields have 10-30% missing values, large fields
draw some day-specific fresh values (out-of-vocabulary on later days), and a fraction of rows is
malformed, one defect per row (kinds in :data:`deepfm.prep.rawlogs.REASONS`).
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepfm.core.metrics import auc
from deepfm.prep.rawlogs import CATEGORICAL_FIELDS, INTEGER_FIELDS, REASONS

log = logging.getLogger(__name__)

MANIFEST = "generator.json"

CARDINALITIES = (4, 1000, 30, 8000, 60, 12, 200, 300, 50000, 500, 20000, 1500, 2000,
                 3, 5000, 100, 15000, 6, 800, 40, 30000, 150, 10000, 16, 3000, 8)  # fmt: skip
CATEGORICAL_MISSING = dict(C3=0.15, C12=0.3, C16=0.2, C19=0.25, C20=0.25, C22=0.3, C25=0.1, C26=0.2)
NUMERIC_MISSING = dict(I1=0.3, I3=0.15, I4=0.2, I6=0.2, I10=0.3, I12=0.3, I13=0.15)
PAIRS = ((0, 1), (2, 5), (3, 8), (6, 10), (4, 12), (13, 17))
TRIPLE, TRIPLE_EFFECT = (1, 3, 7), 0.5
NUMERIC_SLOPES = dict(I1=0.25, I3=-0.2, I5=0.15, I7=0.2, I11=-0.15)
BUMP_FIELD, BUMP_RANGE, BUMP_EFFECT = "I6", (3, 12), 0.8
FRESH_MIN_CARDINALITY, FRESH_RATE = 5000, 0.05
LATENT_DIM = 4
BASE_CTR = 0.25


@dataclass(frozen=True)
class World:
    """Everything fixed across days: vocabularies, frequencies, effects, intercept."""

    values: list[np.ndarray]  # per categorical field: distinct 8-hex strings, by popularity
    probs: list[np.ndarray]  # Zipf frequencies of ``values``
    order1: list[np.ndarray]  # per field and value
    latent: list[np.ndarray]  # [cardinality, LATENT_DIM] per field
    scalar: list[np.ndarray]  # per field and value, for the higher-order term
    numeric_loc: np.ndarray  # lognormal location / scale per integer field
    numeric_scale: np.ndarray
    intercept: float


@dataclass(frozen=True)
class DayLogs:
    lines: list[str]
    oracle_auc: float  # AUC of the true click probability on the day's valid rows
    ctr: float
    malformed: dict[str, int]  # rows per defect kind


def _hex_values(rng: np.random.Generator, n: int) -> np.ndarray:
    draws = rng.integers(0, 2**32, size=2 * n + 16, dtype=np.uint64)
    _, first = np.unique(draws, return_index=True)
    distinct = draws[np.sort(first)][:n]
    return np.array([f"{v:08x}" for v in distinct], dtype=object)


def _zipf(n: int, exponent: float) -> np.ndarray:
    p = 1.0 / np.arange(1, n + 1) ** exponent
    return p / p.sum()


def build_world(seed: int) -> World:
    rng = np.random.default_rng([seed, 0])
    values, probs, order1, latent, scalar = [], [], [], [], []
    for i, n in enumerate(CARDINALITIES):
        values.append(_hex_values(rng, n))
        probs.append(_zipf(n, rng.uniform(1.05, 1.4)))
        order1.append(rng.normal(0.0, (0.0, 0.15, 0.3)[i % 3], size=n))
        latent.append(rng.normal(0.0, 0.35, size=(n, LATENT_DIM)))
        scalar.append(rng.normal(0.0, 1.0, size=n))
    world = World(
        values,
        probs,
        order1,
        latent,
        scalar,
        numeric_loc=rng.uniform(0.0, 3.0, size=len(INTEGER_FIELDS)),
        numeric_scale=rng.uniform(0.5, 1.5, size=len(INTEGER_FIELDS)),
        intercept=0.0,
    )
    # Calibrate the intercept on a sample so the base CTR is BASE_CTR whatever the effects.
    logit = _logits(world, *_draw_features(world, np.random.default_rng([seed, 1]), 50_000)[:2])
    lo, hi = -10.0, 10.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _sigmoid(logit + mid).mean() < BASE_CTR else (lo, mid)
    return World(**{**world.__dict__, "intercept": (lo + hi) / 2})


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _draw_features(world: World, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Category ranks (-1 missing, -2 fresh), integer values (NaN missing), fresh hex values."""
    ranks = np.empty((n, len(CATEGORICAL_FIELDS)), dtype=np.int64)
    fresh = np.full((n, len(CATEGORICAL_FIELDS)), None, dtype=object)
    for i, name in enumerate(CATEGORICAL_FIELDS):
        ranks[:, i] = rng.choice(len(world.probs[i]), size=n, p=world.probs[i])
        if len(world.probs[i]) >= FRESH_MIN_CARDINALITY:
            is_fresh = rng.random(n) < FRESH_RATE
            ranks[is_fresh, i] = -2
            fresh[is_fresh, i] = _hex_values(rng, int(is_fresh.sum()))
        ranks[rng.random(n) < CATEGORICAL_MISSING.get(name, 0.0), i] = -1
    ints = np.floor(np.exp(rng.normal(world.numeric_loc, world.numeric_scale, size=(n, len(INTEGER_FIELDS)))))
    ints[:, 1] -= 2  # like Criteo's I2, some counts go negative
    for j, name in enumerate(INTEGER_FIELDS):
        ints[rng.random(n) < NUMERIC_MISSING.get(name, 0.0), j] = np.nan
    return ranks, ints, fresh


def _lookup(table: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """Per-row entries of ``table`` (zeros for missing or fresh values)."""
    known = ranks >= 0
    out = np.zeros((len(ranks), *table.shape[1:]))
    out[known] = table[ranks[known]]
    return out


def _logits(world: World, ranks: np.ndarray, ints: np.ndarray, orders: int = 3) -> np.ndarray:
    """The true logit: intercept, numeric effects, and the categorical effects up to ``orders``
    (1: per value, 2: and pairwise, 3: and the triple); a rank < 0 contributes nothing."""
    z = np.full(len(ranks), world.intercept)
    for i in range(len(CATEGORICAL_FIELDS)):
        z += _lookup(world.order1[i], ranks[:, i])
    if orders >= 2:
        for a, b in PAIRS:
            z += (_lookup(world.latent[a], ranks[:, a]) * _lookup(world.latent[b], ranks[:, b])).sum(axis=1)
    if orders >= 3:
        z += TRIPLE_EFFECT * np.prod([_lookup(world.scalar[i], ranks[:, i]) for i in TRIPLE], axis=0)
    logs = np.log1p(np.clip(np.nan_to_num(ints, nan=0.0), 0, None))
    for name, slope in NUMERIC_SLOPES.items():
        j = INTEGER_FIELDS.index(name)
        z += slope * (logs[:, j] - world.numeric_loc[j])
    bump = ints[:, INTEGER_FIELDS.index(BUMP_FIELD)]
    z += BUMP_EFFECT * ((bump >= BUMP_RANGE[0]) & (bump < BUMP_RANGE[1]))
    return z


def _malform(rng: np.random.Generator, cols: list[np.ndarray], rows: np.ndarray) -> np.ndarray:
    """Give each row in ``rows`` one defect; return the defect kind (index into REASONS)."""
    kinds = rng.integers(0, len(REASONS), size=len(rows))
    for row, kind in zip(rows, kinds):
        reason = REASONS[kind]
        if reason == "bad_label":
            cols[0][row] = rng.choice(["2", "x", "-1", "", "0.5"])
        elif reason == "bad_numeric":
            cols[1 + rng.integers(len(INTEGER_FIELDS))][row] = rng.choice(["1.5", "abc", "1e3", " 7", "-"])
        elif reason == "bad_categorical":
            col = 1 + len(INTEGER_FIELDS) + rng.integers(len(CATEGORICAL_FIELDS))
            cols[col][row] = rng.choice(["xyz12345", "0123456", "123456789", "ghijklmn", "68fd1e6"])
    return kinds


@dataclass(frozen=True)
class DayDraw:
    """One day as drawn: its lines and, per line, what produced them."""

    lines: list[str]
    ranks: np.ndarray  # [rows, fields] category ranks (-1 missing, -2 fresh)
    ints: np.ndarray  # [rows, integer fields], NaN missing
    p: np.ndarray  # the true click probability
    labels: np.ndarray
    valid: np.ndarray  # False for the lines given a defect
    kinds: np.ndarray  # the defect kind of each malformed line (index into REASONS)


def generate_day(world: World, seed: int, day_index: int, rows: int, malformed_fraction: float) -> DayLogs:
    """One day's raw lines, deterministic from ``(seed, day_index)``."""
    d = _draw_day(world, seed, day_index, rows, malformed_fraction)
    return DayLogs(
        lines=d.lines,
        oracle_auc=auc(d.p[d.valid], d.labels[d.valid]),
        ctr=float(d.labels[d.valid].mean()),
        malformed={r: int((d.kinds == k).sum()) for k, r in enumerate(REASONS)},
    )


def _draw_day(world: World, seed: int, day_index: int, rows: int, malformed_fraction: float) -> DayDraw:
    rng = np.random.default_rng([seed, 2, day_index])
    ranks, ints, fresh = _draw_features(world, rng, rows)
    p = _sigmoid(_logits(world, ranks, ints))
    labels = (rng.random(rows) < p).astype(np.int8)
    cols = [np.where(labels == 1, "1", "0").astype(object)]
    for j in range(len(INTEGER_FIELDS)):
        col = ints[:, j]
        cols.append(np.where(np.isnan(col), "", np.nan_to_num(col).astype(np.int64).astype(str)).astype(object))
    for i in range(len(CATEGORICAL_FIELDS)):
        col = np.where(ranks[:, i] >= 0, world.values[i][np.maximum(ranks[:, i], 0)], "").astype(object)
        is_fresh = ranks[:, i] == -2
        col[is_fresh] = fresh[is_fresh, i]
        cols.append(col)
    bad = np.flatnonzero(rng.random(rows) < malformed_fraction)
    kinds = _malform(rng, cols, bad)
    lines = ["\t".join(fields) for fields in zip(*cols)]
    for row in bad[kinds == REASONS.index("wrong_field_count")]:
        lines[row] = lines[row] + "\t" if rng.random() < 0.5 else lines[row].rsplit("\t", 1)[0]
    valid = np.ones(rows, dtype=bool)
    valid[bad] = False
    return DayDraw(lines, ranks, ints, p, labels, valid, kinds)


CEILINGS = ("true probability", "seen values, order 1", "seen values, orders 1-2", "seen values, all orders")


def reference_ceilings(
    manifest: dict[str, Any], train_days: list[str], test_day: str, min_count: int
) -> dict[str, dict[str, float]]:
    """AUC and logloss on ``test_day``'s valid rows of the true click probability, and of the true
    probability without the effects of category values seen fewer than ``min_count`` times on the
    training days (what no model trained on those days can know), keeping effects up to order 1,
    2, and all orders. Upper bounds: no model reaches them on small data."""
    world, seed = build_world(manifest["seed"]), manifest["seed"]
    start, rows, malformed = (
        dt.date.fromisoformat(manifest["start_date"]),
        manifest["rows_per_day"],
        manifest["malformed_fraction"],
    )

    def draw(day: str) -> DayDraw:
        return _draw_day(world, seed, (dt.date.fromisoformat(day) - start).days, rows, malformed)

    counts = [np.zeros(len(values), dtype=np.int64) for values in world.values]
    for day in train_days:
        d = draw(day)
        for i, field_counts in enumerate(counts):
            ranks = d.ranks[d.valid, i]
            np.add.at(field_counts, ranks[ranks >= 0], 1)
    test = draw(test_day)
    ranks, ints, labels = test.ranks[test.valid], test.ints[test.valid], test.labels[test.valid]
    seen = np.stack(
        [(ranks[:, i] >= 0) & (counts[i][np.maximum(ranks[:, i], 0)] >= min_count) for i in range(len(counts))], axis=1
    )
    known = np.where(seen, ranks, -1)
    scores = {
        CEILINGS[0]: test.p[test.valid],
        **{CEILINGS[k]: _sigmoid(_logits(world, known, ints, k)) for k in (1, 2, 3)},
    }
    return {name: {"auc": auc(p, labels), "logloss": _logloss(labels, p)} for name, p in scores.items()}


def _logloss(labels: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log1p(-p)))


def day_file(output: Path, day: dt.date, day_index: int, layout: str, gz: bool) -> Path:
    """Where a day's lines go: ``date=YYYY-MM-DD/part-00000.tsv`` or ``day_<index>``."""
    suffix = ".gz" if gz else ""
    if layout == "date":
        return output / f"date={day.isoformat()}" / f"part-00000.tsv{suffix}"
    return output / f"day_{day_index}{suffix}"


def _clear_day(output: Path, day: dt.date, day_index: int, layout: str) -> None:
    """Remove a day's previous files, plain and gzipped, so a rewrite replaces the day whole."""
    for gz in (False, True):
        path = day_file(output, day, day_index, layout, gz)
        if layout == "date":
            shutil.rmtree(path.parent, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _write_lines(path: Path, lines: list[str], gz: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")  # hidden: readers skip it
    data = ("\n".join(lines) + "\n").encode()
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
    seed: int = 0,
    layout: str = "date",
    gz: bool = False,
    malformed_fraction: float = 0.002,
) -> dict:
    """Write ``days`` days from ``start_date`` and a ``generator.json`` manifest; return it.

    In the ``criteo`` layout ``start_date`` is the date of ``day_0``.
    """
    if layout not in ("date", "criteo"):
        raise ValueError(f"unknown layout {layout!r}")
    output = Path(output)
    world = build_world(seed)
    manifest: dict[str, Any] = {
        "seed": seed,
        "layout": layout,
        "gzip": gz,
        "rows_per_day": rows_per_day,
        "start_date": start_date.isoformat(),
        "malformed_fraction": malformed_fraction,
        "days": {},
    }
    for k in range(days):
        day = start_date + dt.timedelta(days=k)
        logs = generate_day(world, seed, k, rows_per_day, malformed_fraction)
        path = day_file(output, day, k, layout, gz)
        _clear_day(output, day, k, layout)
        _write_lines(path, logs.lines, gz)
        manifest["days"][day.isoformat()] = {
            "file": str(path.relative_to(output)),
            "rows": len(logs.lines),
            "ctr": round(logs.ctr, 4),
            "oracle_auc": round(logs.oracle_auc, 4),
            "malformed": logs.malformed,
        }
        log.info("wrote %s: %d rows, ctr %.3f, oracle auc %.3f", path, len(logs.lines), logs.ctr, logs.oracle_auc)
    (output / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest
