"""The one mechanism that writes files and folders so that readers never see them half-written.

A file is written to a hidden temporary sibling and renamed over its target (a rename within a
folder is atomic). A folder is built in a staging sibling and swapped in by two renames: the old
folder stays whole until the new one is in place, and is then removed. A reader sees the old
version or the new one; the target is absent only between the two renames of a replacement.
``publish_dir`` is the first-writer-wins variant for content-addressed entries (the day cache):
two runs that computed the same entry keep one, and neither fails.

Temporary names carry this host and process id (``.<name>.tmp-<host>-<pid>-<id>``): what a killed
process left behind is removed by the next writer of the same target on the same host, and a
live process's temporaries are never touched.

Files and folders get the permissions the process umask gives (``tempfile.mkstemp`` and
``mkdtemp`` would create them 0600 / 0700, hiding them from another account such as scoring's).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
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
HOST = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:40]


def _sibling(path: Path, tag: str) -> Path:
    """A hidden name next to ``path`` owned by this process (readers such as Spark skip ``.`` names)."""
    return path.with_name(f".{path.name}.{tag}-{HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def sweep_orphans(target: PathLike) -> list[Path]:
    """Remove the temporaries of ``target`` that processes of this host no longer running left
    behind (a killed write); returns what was removed."""
    target = Path(target)
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(?:tmp|old)-{HOST}-(\d+)-[0-9a-f]{{8}}$")
    removed = []
    if target.parent.is_dir():
        for entry in target.parent.iterdir():
            match = pattern.match(entry.name)
            if match and not _alive(int(match.group(1))):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink(missing_ok=True)
                removed.append(entry)
    return removed


def write_atomic(path: PathLike, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` to a temporary sibling, then rename it over ``path``; return ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_orphans(path)
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


def publish_dir(source: PathLike, target: PathLike) -> bool:
    """Move the complete folder ``source`` to ``target`` unless a folder is there already (then
    ``source`` is removed): the first of concurrent writers of identical content wins. Returns
    whether ``source`` became ``target``."""
    source, target = Path(source), Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(source, target)  # fails on an existing non-empty folder, atomically
        return True
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not target.is_dir():
            raise
        shutil.rmtree(source, ignore_errors=True)
        return False


def scratch_dir(parent: PathLike) -> Path:
    """A new folder path under ``parent`` (hidden from readers, owned by this process) for a
    writer such as Spark to fill; orphans of killed processes there are removed first."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    sweep_orphans(parent / "scratch")
    return _sibling(parent / "scratch", "tmp")


@contextmanager
def staged_dir(target: PathLike, keep_existing: bool = False) -> Iterator[Path]:
    """A new, empty staging folder next to ``target``, put in place when the block succeeds and
    removed when it raises: swapped in over ``target`` (``replace_dir``), or with ``keep_existing``
    (a content-addressed entry) published only where no folder is yet (``publish_dir``)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_orphans(target)
    staging = _sibling(target, "tmp")
    staging.mkdir(mode=DIR_MODE)
    try:
        yield staging
        (publish_dir if keep_existing else replace_dir)(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
