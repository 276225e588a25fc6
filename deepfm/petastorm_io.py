"""The one module that touches Petastorm (unmaintained: replacing it should touch only this file).

Petastorm 0.13.1 facts this module encodes:
  - its default ``reader_pool_type='thread'`` was seen to return zero rows with no error for
    some readers, so we never use it: ``process`` (parallel decode) or ``dummy`` (in-thread);
  - ``BatchedDataLoader`` fails on string columns, so only numeric ``columns`` are read
    (the ``day`` partition column is a string);
  - it wants URLs (``file:///...``), not paths.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from petastorm import make_batch_reader
from petastorm.pytorch import BatchedDataLoader

SAFE_POOL_TYPES = ("process", "dummy")


def dataset_url(path: str | Path) -> str:
    """``file://`` URL for a local path; URLs (hdfs://, s3://, file://) pass through."""
    text = str(path)
    return text if "://" in text else Path(text).resolve().as_uri()


def petastorm_batches(
    path: str | Path,
    columns: Sequence[str],
    batch_size: int,
    shard: int = 0,
    shard_count: int = 1,
    seed: int = 0,
    shuffle: bool = True,
    shuffle_buffer: int = 0,
    pool_type: str = "process",
    workers: int = 2,
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield one epoch of ``{column: Tensor[batch]}`` from shard ``shard`` of ``shard_count``.

    Row groups are assigned to shards by Petastorm (every row group to exactly one shard);
    ``shuffle`` permutes row-group order with ``seed``; ``shuffle_buffer`` > 0 adds an
    in-memory row shuffle of that many rows.
    """
    if pool_type not in SAFE_POOL_TYPES:
        raise ValueError(f"pool_type must be one of {SAFE_POOL_TYPES}: 'thread' silently drops rows")
    reader = make_batch_reader(
        dataset_url(path),
        schema_fields=list(columns),
        reader_pool_type=pool_type,
        workers_count=workers,
        cur_shard=shard if shard_count > 1 else None,
        shard_count=shard_count if shard_count > 1 else None,
        shuffle_row_groups=shuffle,
        seed=seed,
        num_epochs=1,
    )
    with reader:
        # BatchedDataLoader seeds its shuffling buffer from torch's global generator.
        torch.manual_seed(seed)
        loader = BatchedDataLoader(reader, batch_size=batch_size, shuffling_queue_capacity=shuffle_buffer)
        yield from loader
