"""The one module that touches Petastorm (unmaintained: replacing it should touch only this file).

Petastorm 0.13.1 facts this module encodes:
  - its default ``reader_pool_type='thread'`` was seen to return zero rows with no error for
    some readers, so we never use it: ``process`` (parallel decode) or ``dummy`` (in-thread);
  - ``dummy`` is also the only pool whose output order is fixed by the seed (the others
    return row groups in completion order), and on a 2-core machine the fastest: ``process``
    serialises every row group between processes;
  - ``BatchedDataLoader`` fails on string columns (the ``day`` partition column is one) and its
    shuffling queue re-permutes the whole queue per row group (far slower than a bare pyarrow
    loop: benchmarks/README.md), so the trainer iterates the reader's columnar row groups
    (``petastorm_row_groups``) and shuffles them in ``deepfm.training.feed``;
  - ``seed=0`` means *unseeded* (random row-group order); ``schema_fields`` are regexes;
  - it wants URLs (``file:///...``), not paths;
  - its ``filesystem`` argument must be one of pyarrow's legacy file systems (any other makes
    pyarrow pick its new dataset API, which refuses Petastorm's legacy keywords): an object
    store's URI is read with ``deepfm.core.fs``'s Arrow file system (its S3 settings), seen through
    fsspec's ``ArrowFSWrapper`` and pyarrow's legacy ``DaskFileSystem``. Petastorm still strips the
    URL's scheme with fsspec's own implementation for it (s3fs for ``s3a://``, not installed), so
    the wrapper is registered for a scheme whose implementation cannot be imported.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit

import fsspec
import numpy as np
from fsspec.implementations.arrow import ArrowFSWrapper
from petastorm import make_batch_reader
from pyarrow.filesystem import DaskFileSystem

from deepfm.core import fs

SAFE_POOL_TYPES = ("process", "dummy")
# Petastorm 0.13 drives pyarrow's legacy ParquetDataset: one FutureWarning per row group read.
warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm\.")


def dataset_url(path: str | Path) -> str:
    """``file://`` URL for a local path; URLs (hdfs://, s3://, file://) pass through."""
    text = str(path)
    return text if "://" in text else Path(text).resolve().as_uri()


class _LegacyFileSystem(DaskFileSystem):
    """pyarrow's legacy file-system interface over an fsspec one (``DaskFileSystem`` leaves out
    the two calls the legacy dataset makes first)."""

    def isdir(self, path: str) -> bool:
        return bool(self.fs.isdir(path))

    def isfile(self, path: str) -> bool:
        return bool(self.fs.isfile(path))


def _filesystem(url: str) -> _LegacyFileSystem | None:
    """The file system Petastorm reads ``url`` with: its own for a local one, else ``fs.arrow``'s."""
    if fs.is_local(url):
        return None
    scheme = urlsplit(url).scheme
    try:
        fsspec.get_filesystem_class(scheme)
    except (ImportError, ValueError):  # only to strip the scheme from URLs (see the module's docstring)
        fsspec.register_implementation(scheme, ArrowFSWrapper, clobber=True)
    return _LegacyFileSystem(ArrowFSWrapper(fs.arrow(url)[0]))


def _open_reader(
    path: str | Path,
    columns: Sequence[str],
    shard: int,
    shard_count: int,
    seed: int,
    shuffle: bool,
    pool_type: str,
    workers: int,
):
    if pool_type not in SAFE_POOL_TYPES:
        raise ValueError(f"pool_type must be one of {SAFE_POOL_TYPES}: 'thread' silently drops rows")
    with warnings.catch_warnings():  # legacy-pyarrow and regex-behaviour notices, once per reader
        warnings.simplefilter("ignore")
        url = dataset_url(path)
        return make_batch_reader(
            url,
            filesystem=_filesystem(url),
            schema_fields=[re.escape(c) for c in columns],
            reader_pool_type=pool_type,
            workers_count=workers,
            cur_shard=shard if shard_count > 1 else None,
            shard_count=shard_count if shard_count > 1 else None,
            shuffle_row_groups=shuffle,
            seed=seed,
            num_epochs=1,
        )


def petastorm_row_groups(
    path: str | Path,
    columns: Sequence[str],
    shard: int = 0,
    shard_count: int = 1,
    seed: int = 1,
    shuffle: bool = True,
    pool_type: str = "dummy",
    workers: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """Yield one epoch of shard ``shard`` as ``{column: ndarray[rows]}``, one row group at a time.

    The row-group order is permuted with ``seed`` (non-zero) when ``shuffle``; with the
    ``dummy`` pool it is the same on every run.
    """
    reader = _open_reader(path, columns, shard, shard_count, seed, shuffle, pool_type, workers)
    try:
        for group in reader:
            yield {name: getattr(group, name) for name in columns}
    finally:
        _close(reader)


def _close(reader) -> None:
    # Not ``with reader``: its __exit__ prints "Cache cleanup complete." to stdout, every epoch.
    reader.stop()
    reader.join()
