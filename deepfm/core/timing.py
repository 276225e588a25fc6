"""The one stage timer of the jobs: each stage logged when it starts and ends, and its duration kept."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Stages:
    """Times named stages; ``seconds`` maps each finished stage to its duration.

    Example::

        stages = Stages(log)
        with stages("encode"):
            ...
        summary["stage_seconds"] = stages.seconds
    """

    def __init__(self, logger: logging.Logger) -> None:
        self.log = logger
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self.log.info("stage %s: started", name)
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 3)
        self.log.info("stage %s: done in %.1fs", name, self.seconds[name])
