"""Throughput accounting of a training run: progress lines with samples/s and ETA, and the clock
of training time (reading + steps; validation and checkpoints excluded)."""

from __future__ import annotations

import math
import time


def hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Throughput:
    """Samples/s per rank over the last log interval, and the ETA of ``total_steps`` at that pace.

    ``start`` restarts the interval (at an epoch's first batch, after a pause); ``pause`` blocks
    (validation, checkpoint) are excluded from ``train_seconds`` of the epoch.
    """

    def __init__(self, total_steps: int, batch_size: int) -> None:
        self.total, self.batch_size = total_steps, batch_size
        self.mark: tuple[float, int] | None = None
        self.epoch_started = time.perf_counter()
        self.paused = 0.0

    def begin_epoch(self) -> None:
        self.epoch_started, self.paused, self.mark = time.perf_counter(), 0.0, None

    def start(self, global_step: int) -> None:
        self.mark = (time.perf_counter(), global_step)

    def add_pause(self, seconds: float) -> None:
        self.paused += seconds

    @property
    def train_seconds(self) -> float:
        """Seconds of this epoch so far, pauses excluded."""
        return time.perf_counter() - self.epoch_started - self.paused

    @property
    def wall_seconds(self) -> float:
        return time.perf_counter() - self.epoch_started

    def line(self, epoch: int, epochs: int, step_in_epoch: int, steps: int, global_step: int, loss: float) -> str:
        now = time.perf_counter()
        last_time, last_step = self.mark or (now, global_step)
        self.mark = (now, global_step)
        rate = (global_step - last_step) / (now - last_time) if now > last_time else float("nan")
        eta = (self.total - global_step) / rate if rate > 0 else float("nan")
        return (
            f"epoch {epoch + 1}/{epochs} step {step_in_epoch}/{steps} (global {global_step}/{self.total}) "
            f"loss {loss:.4f} {rate * self.batch_size:,.0f} samples/s/rank ETA {hms(eta)}"
        )
