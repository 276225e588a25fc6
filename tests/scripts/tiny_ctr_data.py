"""A tiny encoded CTR dataset in the preprocessing output layout, for loader and trainer tests.

``<root>/train/day=.../part-*.parquet``, ``<root>/test/day=.../part-*.parquet`` and
``<root>/feature_spec.json``; several files per day and several row groups per file, so
shards get row groups from many files. Labels follow a planted logistic model (order-1 plus
one pairwise interaction) that a model can learn. Numeric field ``row_id`` holds a unique id
per row, scaled by ``ROW_ID_SCALE`` (a power of two: exact in float32, and small enough not to
swamp the model), so tests can check which rows a shard read.

Usage: ``python tests/scripts/tiny_ctr_data.py OUT [--rows N]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from deepfm.core.features import FeatureSpec, FieldSpec

CARDINALITIES = {"C1": 8, "C2": 50, "C3": 200, "C4": 20}
NUMERIC = ("row_id", "I1")
ROW_ID_SCALE = 2.0**-15


def spec() -> FeatureSpec:
    fields = [FieldSpec(name, "hash", cardinality=card, hash_buckets=card - 1) for name, card in CARDINALITIES.items()]
    fields += [FieldSpec(name, "raw") for name in NUMERIC]
    return FeatureSpec(tuple(fields))


def write_dataset(
    root: str | Path,
    train_rows: int = 6000,
    test_rows: int = 2000,
    files_per_day: int = 3,
    row_group_rows: int = 250,
    seed: int = 0,
    validation_rows: int | None = None,
) -> FeatureSpec:
    """Write two train days, a validation day (``validation_rows``, default ``test_rows``) and a
    test day under ``root``; return the spec (also saved there)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    weights = {name: rng.normal(0, 1.0, card) for name, card in CARDINALITIES.items()}
    pair = rng.normal(0, 1.0, (CARDINALITIES["C1"], CARDINALITIES["C4"]))
    next_id = 0
    for split, days, rows in (
        ("train", ("2024-01-01", "2024-01-02"), train_rows),
        ("validation", ("2024-01-03",), test_rows if validation_rows is None else validation_rows),
        ("test", ("2024-01-04",), test_rows),
    ):
        for day in days:
            for part in range(files_per_day):
                n = rows // (len(days) * files_per_day)
                cols = {name: rng.integers(0, card, n).astype(np.int32) for name, card in CARDINALITIES.items()}
                cols["I1"] = rng.exponential(1.0, n).astype(np.float32)
                cols["row_id"] = (np.arange(next_id, next_id + n) * ROW_ID_SCALE).astype(np.float32)
                next_id += n
                logit = sum(weights[name][cols[name]] for name in CARDINALITIES)
                logit = logit + pair[cols["C1"], cols["C4"]] + 0.5 * cols["I1"] - 1.0
                label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
                table = pa.table({"label": label, **cols})
                path = root / split / f"day={day}" / f"part-{part:05d}.parquet"
                path.parent.mkdir(parents=True, exist_ok=True)
                pq.write_table(table, path, row_group_size=row_group_rows)
    result = spec()
    result.save(root)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out")
    parser.add_argument("--rows", type=int, default=6000, help="train rows (test: a third)")
    args = parser.parse_args()
    write_dataset(args.out, train_rows=args.rows, test_rows=args.rows // 3)
