"""The one mechanism that writes files and folders so that readers never see them half-written.

A file is written to a hidden temporary sibling and renamed over its target (a rename within a
folder is atomic). A folder is built in a staging sibling and swapped in by two renames: the old
folder stays whole until the new one is in place, and is then removed. A reader sees the old
version or the new one; the target is absent only between the two renames of a replacement.

Files and folders get the permissions the process umask gives (``tempfile.mkstemp`` and
``mkdtemp`` would create them 0600 / 0700, hiding them from another account such as scoring's).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PathLike = str | os.PathLike[str]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()
FILE_MODE = 0o666 & ~UMASK
DIR_MODE = 0o777 & ~UMASK


def _sibling(path: Path, tag: str) -> Path:
    """A hidden, unique name next to ``path`` (readers such as Spark skip ``.``-prefixed names)."""
    return path.with_name(f".{path.name}.{tag}-{uuid.uuid4().hex[:12]}")


def write_atomic(path: PathLike, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` to a temporary sibling, then rename it over ``path``; return ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "tmp")
    try:
        write(tmp)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text(path: PathLike, text: str) -> Path:
    """Replace ``path``'s content with ``text`` atomically."""
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def write_json(path: PathLike, payload: Any, indent: int | None = 2) -> Path:
    """Replace ``path``'s content with ``payload`` as JSON atomically."""
    return write_text(path, json.dumps(payload, indent=indent))


def replace_dir(source: PathLike, target: PathLike) -> Path:
    """Move the complete folder ``source`` to ``target``, replacing any folder there whole."""
    source, target = Path(source), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        os.replace(source, target)
        return target
    retired = _sibling(target, "old")
    os.replace(target, retired)
    os.replace(source, target)
    shutil.rmtree(retired, ignore_errors=True)
    return target


@contextmanager
def staged_dir(target: PathLike) -> Iterator[Path]:
    """A new, empty staging folder next to ``target``: swapped in over ``target`` when the block
    succeeds (``replace_dir``), removed when it raises."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _sibling(target, "tmp")
    staging.mkdir(mode=DIR_MODE)
    try:
        yield staging
        replace_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
