"""One run at a time: an exclusive lock on a file that says who holds it.

The lock is ``fcntl.flock`` on ``<path>``: the kernel releases it when its holder exits, however
it exits, so a lock whose holder is gone is free again (nothing to clean up by hand). While held,
the file names the holder (host, pid, start time, command), so a refused run can say who is in
the way. It guards a local work directory; on a shared network file system use the scheduler's
own concurrency limits instead.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class Locked(RuntimeError):
    """Another process holds the lock; the message names it."""

    def __init__(self, path: Path, holder: dict[str, Any]) -> None:
        who = ", ".join(f"{k} {holder[k]}" for k in ("host", "pid", "started", "command") if k in holder)
        super().__init__(f"{path} is held by another run ({who or 'holder unknown'})")
        self.holder = holder


@contextmanager
def exclusive(path: Path) -> Iterator[dict[str, Any]]:
    """Hold the lock at ``path`` for the block, or raise ``Locked`` at once when another process
    holds it. Yields the holder record written into the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Locked(path, _read_holder(fd)) from None
        holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        try:
            yield holder
        finally:
            os.ftruncate(fd, 0)  # released: the file no longer names a holder
    finally:
        os.close(fd)  # closing releases the lock


def _read_holder(fd: int) -> dict[str, Any]:
    """The holder's record; it writes it right after locking, so an empty file is read again."""
    for _ in range(20):
        try:
            holder = json.loads(os.pread(fd, 65536, 0) or b"{}")
        except ValueError:  # being written right now
            holder = {}
        if holder:
            return dict(holder)
        time.sleep(0.05)
    return {}
