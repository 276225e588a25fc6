"""The one logging set-up of the command line."""

from __future__ import annotations

import logging
import time

from deepfm.core import fs

FORMAT = "%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s"


class UploadedLog(logging.Handler):
    """A log file on an object store, which cannot append: the lines already there (a resumed
    run's) and this process's, uploaded whole at most every ``interval`` seconds and on ``flush``."""

    def __init__(self, uri: str, interval: float = 60.0) -> None:
        super().__init__()
        self.uri, self.interval = uri, interval
        self.lines = [fs.read_text(uri)] if fs.exists(uri) else []
        self.uploaded, self.pending = time.monotonic(), False

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record) + "\n")
            self.pending = True
            if time.monotonic() - self.uploaded >= self.interval:
                self.flush()
        except Exception:  # logging's contract: a failing handler reports, the program goes on
            self.handleError(record)

    def flush(self) -> None:
        self.acquire()  # emit's thread and logging.shutdown's may flush at once
        try:
            if self.pending:
                fs.put_text(self.uri, "".join(self.lines))
                self.uploaded, self.pending = time.monotonic(), False
        finally:
            self.release()


def setup_logging(level: int = logging.INFO, prefix: str = "", file: str | None = None) -> None:
    """Lines to stderr (and to ``file``, any URI), each with time, ``prefix``, level and logger name.

    Py4J's per-call lines and Petastorm's per-reader notices are kept to warnings.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if file is not None and fs.is_local(file):
        path = fs.local_path(file)
        path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(path))
    elif file is not None:
        handlers.append(UploadedLog(file))
    logging.basicConfig(level=level, handlers=handlers, force=True, format=FORMAT.format(prefix=prefix))
    for noisy in ("py4j", "petastorm"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def flush_logs() -> None:
    """Write out what the handlers hold (an ``UploadedLog``'s lines), while the file systems they
    write to are still up (Arrow's S3 shuts down at exit before logging does)."""
    for handler in logging.getLogger().handlers:
        handler.flush()
