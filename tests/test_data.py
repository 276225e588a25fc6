"""The training feed: sharding from footers, both feeders, seeded order, the short-read check."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tiny_ctr_data import ROW_ID_SCALE, write_dataset

import deepfm.training.petastorm_io
from deepfm.core.features import PADDING, FeatureSpec, FieldSpec
from deepfm.training.feed import ShortReadError, epoch_seed, make_loader, prefetch, row_groups, shard_row_groups

ROW_ID = 0  # ``row_id`` is the first numeric column of the tiny spec


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    spec = write_dataset(root, train_rows=3000, test_rows=600, row_group_rows=200)
    return root, spec


def _ids(batches) -> list[int]:
    return [round(i / ROW_ID_SCALE) for b in batches for i in b.num[:, ROW_ID].tolist()]


def test_footer_row_groups_cover_the_split(dataset):
    root, _ = dataset
    groups = row_groups(root / "train")
    assert len(groups) == 6 * 3  # 6 files of 500 rows in row groups of 200, 200, 100
    assert sum(g.num_rows for g in groups) == 3000
    shards = [shard_row_groups(groups, s, 4) for s in range(4)]
    assert sorted((g.file, g.index) for s in shards for g in s) == sorted((g.file, g.index) for g in groups)
    assert shard_row_groups(groups[:2], 2, 3) == []


def test_more_shards_than_row_groups(dataset):
    """Arrow gives the surplus shards nothing; Petastorm cannot start, so the loader says why."""
    root, spec = dataset
    groups = len(row_groups(root / "test"))
    spare = make_loader("arrow", root / "test", spec, 64, shard=groups, shard_count=groups + 1, shuffle=False)
    assert spare.expected_rows == 0 and list(spare.epoch(0)) == []
    with pytest.raises(ValueError, match=r"cannot feed .* Petastorm shards"):
        make_loader("petastorm", root / "test", spec, 64, shard=0, shard_count=groups + 1)


@pytest.mark.parametrize("kind", ["arrow", "petastorm"])
def test_shards_are_disjoint_and_complete(dataset, kind):
    root, spec = dataset
    per_shard = []
    for shard in range(2):
        loader = make_loader(
            kind, root / "train", spec, batch_size=128, shard=shard, shard_count=2, shuffle_buffer=500, seed=7
        )
        batches = list(loader.epoch(0))
        assert all(len(b) == 128 for b in batches[:-1])
        assert batches[0].cat.dtype == torch.int64 and batches[0].cat.shape[1] == len(spec.categorical_columns)
        assert batches[0].num.dtype == torch.float32 and batches[0].label.dtype == torch.float32
        assert len(batches) == loader.num_batches
        per_shard.append(_ids(batches))
        assert len(per_shard[-1]) == loader.expected_rows
    assert not set(per_shard[0]) & set(per_shard[1])
    assert sorted(per_shard[0] + per_shard[1]) == list(range(3000))


def test_both_feeders_yield_the_same_batches(dataset):
    """Same shard, same seeded row-group permutation, same shuffle window: identical batches."""
    root, spec = dataset
    ids = {
        kind: _ids(
            make_loader(kind, root / "train", spec, 256, shard=1, shard_count=3, shuffle_buffer=600, seed=5).epoch(2)
        )
        for kind in ("arrow", "petastorm")
    }
    assert ids["arrow"] == ids["petastorm"]


def write_multi_valued(root, rows: int = 1200, max_items: int = 4) -> tuple[FeatureSpec, np.ndarray]:
    """A split with a multi-valued field ``apps`` as its int32 slot columns (1..max_items items,
    then PADDING), written by pyarrow; returns the spec and every row's ``cat`` by row id."""
    spec = FeatureSpec(
        fields=(
            FieldSpec("C1", "hash", cardinality=8, hash_buckets=8),
            FieldSpec("apps", "hash", cardinality=30, hash_buckets=30, max_items=max_items),
            FieldSpec("row_id", "raw"),
        )
    )
    rng = np.random.default_rng(0)
    items = rng.integers(0, 30, (rows, max_items), dtype=np.int32)
    items[np.arange(max_items) >= rng.integers(1, max_items + 1, (rows, 1))] = PADDING
    cat = np.column_stack([rng.integers(0, 8, rows, dtype=np.int32), items])
    for part, ids in enumerate(np.array_split(np.arange(rows), 3)):
        columns = {name: cat[ids, j] for j, name in enumerate(spec.categorical_columns)}
        label = rng.integers(0, 2, len(ids)).astype(np.float32)
        table = pa.table({"label": label, **columns, "row_id": ids.astype(np.float32)})
        pq.write_table(table, root / f"part-{part}.parquet", row_group_size=100)
    return spec, cat


def test_both_feeders_read_a_multi_valued_fields_slot_columns_as_cat_columns(tmp_path):
    spec, cat = write_multi_valued(tmp_path)
    batches = {
        kind: list(make_loader(kind, tmp_path, spec, 128, shard=1, shard_count=2, shuffle_buffer=300, seed=3).epoch(1))
        for kind in ("arrow", "petastorm")
    }
    arrow, petastorm = batches["arrow"], batches["petastorm"]
    assert len(arrow) == len(petastorm) == 5
    assert all(torch.equal(a, p) for x, y in zip(arrow, petastorm) for a, p in zip(x, y))
    read = torch.cat([b.cat for b in arrow])
    assert read.dtype == torch.int64 and read.shape == (600, 1 + 4)
    ids = torch.cat([b.num[:, 0] for b in arrow]).long()
    assert torch.equal(read, torch.from_numpy(cat[ids.numpy()]).long())  # each row's items and padding, in slot order
    assert (read == PADDING).any()


@pytest.mark.parametrize("kind", ["arrow", "petastorm"])
def test_order_is_a_function_of_seed_and_epoch(dataset, kind):
    root, spec = dataset

    def order(seed: int, epoch: int) -> list[int]:
        return _ids(make_loader(kind, root / "train", spec, 100, shuffle_buffer=700, seed=seed).epoch(epoch))

    first = order(3, 0)
    assert first == order(3, 0)
    assert first != order(3, 1) and sorted(first) == sorted(order(3, 1))
    assert first != order(4, 0)
    assert first != sorted(first)  # rows are mixed across row groups


def test_skip_and_steps_cut_the_same_sequence(dataset):
    root, spec = dataset
    loader = make_loader("arrow", root / "train", spec, 100, shuffle_buffer=450, seed=1)
    full = _ids(loader.epoch(5))
    assert _ids(loader.epoch(5, skip=7)) == full[700:]
    assert _ids(loader.epoch(5, steps=4, skip=1)) == full[100:400]


@pytest.mark.parametrize("kind", ["arrow", "petastorm"])
def test_short_read_fails_loudly(dataset, kind, monkeypatch):
    """A reader that silently loses a row group (as Petastorm's thread pool did) is caught."""
    root, spec = dataset
    loader = make_loader(kind, root / "train", spec, 128, shard=0, shard_count=2)
    real_chunks = loader._chunks

    def lose_one_row_group(epoch):
        chunks = real_chunks(epoch)
        next(chunks)
        yield from chunks

    monkeypatch.setattr(loader, "_chunks", lose_one_row_group)
    with pytest.raises(ShortReadError, match=f"{kind} loader read 1300 rows .* footers hold 1500"):
        list(loader.epoch(0))


def test_short_read_is_checked_when_steps_stop_early(dataset, monkeypatch):
    root, spec = dataset
    loader = make_loader("petastorm", root / "train", spec, 100)
    real = deepfm.training.petastorm_io.petastorm_row_groups

    def empty_tail(*args, **kwargs):  # the last row group arrives with zero rows, and no error
        chunks = list(real(*args, **kwargs))
        yield from chunks[:-1]
        yield {name: values[:0] for name, values in chunks[-1].items()}

    monkeypatch.setattr(deepfm.training.petastorm_io, "petastorm_row_groups", empty_tail)
    batches = loader.epoch(0, steps=3)
    assert len([next(batches) for _ in range(3)]) == 3
    with pytest.raises(ShortReadError):
        next(batches)


def test_prefetch_keeps_order_and_raises_errors():
    assert list(prefetch(range(50), depth=3)) == list(range(50))

    def failing():
        yield 1
        raise ShortReadError("boom")

    items = prefetch(failing(), depth=2)
    assert next(items) == 1
    with pytest.raises(ShortReadError, match="boom"):
        next(items)


def test_epoch_seed_is_never_zero():
    seeds = {epoch_seed(s, e) for s in range(20) for e in range(20)}
    assert 0 not in seeds and len(seeds) == 400 and max(seeds) < 2**31
    assert np.int64(epoch_seed(0, 0)) > 0
