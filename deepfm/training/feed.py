"""The training feed: one rank's shard of an encoded Parquet split, as shuffled torch batches.

Two feeders sit behind one interface (``make_loader(kind, ...)``):
  - ``petastorm`` (default): Petastorm's ``make_batch_reader`` (see ``deepfm.training.petastorm_io``);
  - ``arrow``: the same row groups read with pyarrow directly, so the pipeline survives a
    Petastorm that breaks on a future pyarrow, and the two can be measured side by side.

Both shard by row group exactly as Petastorm does (row group ``i`` of the dataset, in sorted
file order, goes to shard ``i % shard_count``), read the shard's row groups in the same
seeded per-epoch order, then pass rows through a seeded in-memory shuffle window: the two
yield identical batches, and the order is a pure function of ``(seed, epoch, shard,
shard_count)``, which makes a resumed epoch exact.

Every epoch each loader counts the rows its reader delivered and compares them with the
shard's row count from the Parquet footers: a short read raises ``ShortReadError``.
"""

from __future__ import annotations

import contextlib
import queue
import random
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
import pyarrow.parquet as pq
import torch

from deepfm.core import fs
from deepfm.core.features import FeatureSpec

LOADERS = ("petastorm", "arrow")
T = TypeVar("T")


class ShortReadError(RuntimeError):
    """A reader delivered a different number of rows than the Parquet footers promise."""


class Batch(NamedTuple):
    """``cat`` LongTensor[B, S] (``FeatureSpec.categorical_columns``), ``num`` FloatTensor[B, n_num],
    ``label`` FloatTensor[B]."""

    cat: torch.Tensor
    num: torch.Tensor
    label: torch.Tensor

    def __len__(self) -> int:
        return self.label.shape[0]

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:
        return Batch(*(t.to(device, non_blocking=non_blocking) for t in self))


@dataclass(frozen=True)
class RowGroup:
    file: str
    index: int
    num_rows: int


@dataclass(frozen=True)
class Columns:
    """Which Parquet columns feed which model input, in ``FeatureSpec`` order: a multi-valued
    field's slot columns are plain int32 columns of ``cat`` (no list columns to decode)."""

    categorical: tuple[str, ...]
    numeric: tuple[str, ...]
    label: str

    @classmethod
    def from_spec(cls, spec: FeatureSpec) -> Columns:
        return cls(tuple(spec.categorical_columns), tuple(f.name for f in spec.numeric_fields), spec.label)

    @property
    def all(self) -> list[str]:
        return [self.label, *self.categorical, *self.numeric]


def parquet_files(path: str | Path) -> list[str]:
    """Data files (URIs, ``deepfm.core.fs``) of a (partitioned) Parquet dataset in sorted path
    order, as Petastorm lists them."""
    root = str(path).rstrip("/")
    if fs.exists(root) and not fs.is_dir(root):
        return [root]
    files = [f for f in fs.files_under(root) if not _hidden(f[len(root) + 1 :])]
    if not files:
        raise FileNotFoundError(f"no Parquet files under {root}")
    return files


def _hidden(relative: str) -> bool:
    return any(part.startswith(("_", ".")) for part in relative.split("/"))


def row_groups(path: str | Path) -> list[RowGroup]:
    """Every row group of the dataset with its row count, read from the footers only."""
    groups = []
    for file in parquet_files(path):
        meta = pq.ParquetFile(fs.open_input(file)).metadata
        groups += [RowGroup(str(file), i, meta.row_group(i).num_rows) for i in range(meta.num_row_groups)]
    return groups


def shard_row_groups(groups: Sequence[RowGroup], shard: int, shard_count: int) -> list[RowGroup]:
    """Petastorm's assignment: row group ``i`` belongs to shard ``i % shard_count`` (may be none)."""
    return list(groups[shard::shard_count])


def epoch_seed(seed: int, epoch: int) -> int:
    """A non-zero 31-bit seed per (seed, epoch) (Petastorm treats seed 0 as 'unseeded')."""
    return 1 + int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]) % (2**31 - 2)


class ShardLoader:
    """One rank's shard of a split; ``epoch(e)`` yields its batches for epoch ``e``.

    Subclasses provide ``_chunks``: the shard's rows as column arrays, a row group at a time,
    in the seeded row-group order of the epoch.
    """

    kind = ""

    def __init__(
        self,
        path: str | Path,
        columns: Columns,
        batch_size: int,
        shard: int = 0,
        shard_count: int = 1,
        shuffle: bool = True,
        shuffle_buffer: int = 0,
        seed: int = 1,
    ):
        self.path = str(path)
        self.columns = columns
        self.batch_size = batch_size
        self.shard, self.shard_count = shard, shard_count
        self.shuffle = shuffle
        self.shuffle_buffer = shuffle_buffer if shuffle else 0
        self.seed = seed
        every_group = row_groups(path)
        self.dataset_row_groups = len(every_group)
        self.row_groups = shard_row_groups(every_group, shard, shard_count)
        self.expected_rows = sum(g.num_rows for g in self.row_groups)

    @property
    def num_batches(self) -> int:
        """Batches per epoch of this shard (the last one may be short)."""
        return -(-self.expected_rows // self.batch_size)

    def _chunks(self, epoch: int) -> Iterator[Mapping[str, np.ndarray]]:
        raise NotImplementedError

    def epoch(self, epoch: int, steps: int | None = None, skip: int = 0) -> Iterator[Batch]:
        """Yield batches ``skip`` .. ``steps`` (default: all) of epoch ``epoch``.

        The reader is always drained to the end, so the row count is verified even when
        ``steps`` stops short of the shard (as equalised steps across ranks do).
        Raises ``ShortReadError`` after the last batch if the shard was not read in full.
        """
        counted = _Counter(self._chunks(epoch))
        fill = max(self.shuffle_buffer, self.batch_size)
        window = _Window(self.columns, fill + max((g.num_rows for g in self.row_groups), default=0))
        rng = np.random.default_rng([self.seed, epoch, self.shard]) if self.shuffle_buffer else None

        def batches() -> Iterator[tuple[np.ndarray, ...]]:
            for chunk in counted:
                window.add(chunk)
                if window.rows >= fill:
                    yield from window.cut(self.batch_size, rng, final=False)
            yield from window.cut(self.batch_size, rng, final=True)

        for i, (cat, num, label) in enumerate(batches()):
            if steps is not None and i >= steps:
                break
            if i >= skip:
                yield Batch(torch.from_numpy(cat.astype(np.int64)), torch.from_numpy(num), torch.from_numpy(label))
        counted.drain()
        if counted.rows != self.expected_rows:
            raise ShortReadError(
                f"{self.kind} loader read {counted.rows} rows of shard {self.shard}/{self.shard_count} "
                f"of {self.path} in epoch {epoch}; the Parquet footers hold {self.expected_rows}"
            )


class _Window:
    """The shuffle window: rows of a few row groups in reused arrays, permuted and cut into batches.

    ``cat`` int32[capacity, S] (as stored; widened to int64 per batch, which halves the
    window's memory traffic), ``num`` float32[capacity, n_num], ``label`` float32[capacity] are
    filled column by column straight from the reader's arrays (the one stacking pass); batches
    are gathered copies, so the arrays are refilled while batches are still in use.
    """

    def __init__(self, columns: Columns, capacity: int):
        self.columns = columns
        self.arrays = (
            np.empty((capacity, len(columns.categorical)), dtype=np.int32),
            np.empty((capacity, len(columns.numeric)), dtype=np.float32),
            np.empty(capacity, dtype=np.float32),
        )
        self.rows = 0

    def add(self, chunk: Mapping[str, np.ndarray]) -> None:
        lo, hi = self.rows, self.rows + len(chunk[self.columns.label])
        if hi > len(self.arrays[2]):  # a chunk larger than its footer said: grow rather than fail here
            cat, num, label = (
                np.concatenate([a[:lo], np.empty((hi - lo, *a.shape[1:]), a.dtype)]) for a in self.arrays
            )
            self.arrays = (cat, num, label)
        cat, num, label = self.arrays
        for j, name in enumerate(self.columns.categorical):
            cat[lo:hi, j] = chunk[name]
        for j, name in enumerate(self.columns.numeric):
            num[lo:hi, j] = chunk[name]
        label[lo:hi] = chunk[self.columns.label]
        self.rows = hi

    def cut(self, batch_size: int, rng: np.random.Generator | None, final: bool) -> Iterator[tuple[np.ndarray, ...]]:
        """Yield full batches (and, if ``final``, the short last one); keep the leftover rows."""
        n = self.rows
        order = rng.permutation(n) if rng is not None else None

        def rows(lo: int, hi: int) -> tuple[np.ndarray, ...]:
            if order is None:
                return tuple(a[lo:hi].copy() for a in self.arrays)
            return tuple(np.take(a, order[lo:hi], axis=0) for a in self.arrays)  # np.take: faster than a[idx]

        full = n if final else n - n % batch_size
        for start in range(0, full, batch_size):
            yield rows(start, min(start + batch_size, full))
        for array, rest in zip(self.arrays, rows(full, n)):
            array[: len(rest)] = rest
        self.rows = n - full


class _Counter:
    """Iterates chunks while counting their rows; ``drain`` reads (and counts) what is left."""

    def __init__(self, chunks: Iterator[Mapping[str, np.ndarray]]):
        self._chunks = chunks
        self.rows = 0

    def __iter__(self) -> Iterator[Mapping[str, np.ndarray]]:
        for chunk in self._chunks:
            self.rows += len(next(iter(chunk.values())))
            yield chunk

    def drain(self) -> None:
        for _ in self:
            pass


class ArrowLoader(ShardLoader):
    """Reads the shard's row groups with ``pyarrow.parquet.ParquetFile.read_row_group``.

    The row groups come in the order Petastorm would deliver them, so both feeders yield the
    same batches and a run can switch feeders, even mid-epoch on resume.
    """

    kind = "arrow"

    def _chunks(self, epoch: int) -> Iterator[Mapping[str, np.ndarray]]:
        files: dict[str, pq.ParquetFile] = {}
        for i in self._order(epoch_seed(self.seed, epoch)):
            group = self.row_groups[i]
            file = files.setdefault(group.file, pq.ParquetFile(fs.open_input(group.file)))
            table = file.read_row_group(group.index, columns=self.columns.all)
            yield {name: table.column(name).to_numpy() for name in self.columns.all}

    def _order(self, seed: int) -> list[int]:
        """Petastorm 0.13's order (``Reader._partition_row_groups`` then its ventilator):
        the dataset's row-group indexes shuffled by ``random.Random(seed)`` when sharding, the
        shard's ones kept, then permuted by ``np.random.default_rng(seed)`` when shuffling."""
        indexes = list(range(self.dataset_row_groups))
        if self.shard_count > 1:
            random.Random(seed).shuffle(indexes)
        local = [(i - self.shard) // self.shard_count for i in indexes if i % self.shard_count == self.shard]
        return list(np.random.default_rng(seed).permutation(local)) if self.shuffle else local


class PetastormLoader(ShardLoader):
    """Reads the shard with Petastorm's ``make_batch_reader`` (row-group order seeded by Petastorm)."""

    kind = "petastorm"

    def __init__(self, *args, pool_type: str = "dummy", workers: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        if self.dataset_row_groups < self.shard_count:  # Petastorm refuses to start then, on every shard
            raise ValueError(
                f"{self.dataset_row_groups} row groups in {self.path} cannot feed {self.shard_count} "
                "Petastorm shards: write the split with more row groups, or use --loader arrow"
            )
        self.pool_type, self.workers = pool_type, workers

    def _chunks(self, epoch: int) -> Iterator[Mapping[str, np.ndarray]]:
        from deepfm.training.petastorm_io import petastorm_row_groups  # Petastorm only when chosen

        yield from petastorm_row_groups(
            self.path,
            self.columns.all,
            shard=self.shard,
            shard_count=self.shard_count,
            seed=epoch_seed(self.seed, epoch),
            shuffle=self.shuffle,
            pool_type=self.pool_type,
            workers=self.workers,
        )


def make_loader(
    kind: str,
    path: str | Path,
    spec: FeatureSpec,
    batch_size: int,
    shard: int = 0,
    shard_count: int = 1,
    shuffle: bool = True,
    shuffle_buffer: int = 0,
    seed: int = 1,
    pool_type: str = "dummy",
    workers: int = 1,
) -> ShardLoader:
    """The loader ``kind`` (``petastorm`` or ``arrow``) over shard ``shard`` of the split at ``path``."""
    common: dict[str, Any] = dict(
        columns=Columns.from_spec(spec),
        batch_size=batch_size,
        shard=shard,
        shard_count=shard_count,
        shuffle=shuffle,
        shuffle_buffer=shuffle_buffer,
        seed=seed,
    )
    if kind == "arrow":
        return ArrowLoader(path, **common)
    if kind == "petastorm":
        return PetastormLoader(path, pool_type=pool_type, workers=workers, **common)
    raise ValueError(f"unknown loader {kind!r}; choose one of {LOADERS}")


def prefetch(items: Iterable[T], depth: int) -> Iterator[T]:
    """Produce ``items`` on a background thread, ``depth`` ahead (order kept; errors re-raised).

    Parquet decoding releases the GIL, so reading overlaps the training step. ``depth`` 0
    iterates inline.
    """
    if depth <= 0:
        yield from items
        return
    done = object()
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                slots.put(item)
            slots.put(done)
        except BaseException as exc:  # handed to the consumer, raised there
            slots.put(exc)

    thread = threading.Thread(target=produce, name="prefetch", daemon=True)
    thread.start()
    try:
        while (item := slots.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:  # consumer left early: unblock the producer so its thread ends
        stop.set()
        while thread.is_alive():
            with contextlib.suppress(queue.Empty):
                slots.get(timeout=0.1)
