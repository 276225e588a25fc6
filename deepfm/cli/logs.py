"""The one logging set-up of the command line."""

from __future__ import annotations

import logging
from pathlib import Path

FORMAT = "%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s"


def setup_logging(level: int = logging.INFO, prefix: str = "", file: Path | None = None) -> None:
    """Lines to stderr (and to ``file``), each with time, ``prefix``, level and logger name.

    Py4J's per-call lines and Petastorm's per-reader notices are kept to warnings.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(file))
    logging.basicConfig(level=level, handlers=handlers, force=True, format=FORMAT.format(prefix=prefix))
    for noisy in ("py4j", "petastorm"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
