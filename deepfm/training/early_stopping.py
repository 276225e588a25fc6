"""What validation decides: early stopping on validation AUC, with the best validation remembered
(it picks the bundle), and learning-rate decay on a validation plateau."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Best:
    """The best validation so far and the stopping state: part of every checkpoint."""

    auc: float = -1.0
    epoch: int = -1
    step: int = -1
    bad_rounds: int = 0  # validations since the last gain
    stopped: bool = False


class EarlyStopping:
    """``update`` after each validation: True when it is a new best (by more than ``min_delta``);
    after ``patience`` validations without one, ``best.stopped`` is set (``patience`` 0: never)."""

    def __init__(self, patience: int, min_delta: float, best: Best) -> None:
        self.patience, self.min_delta, self.best = patience, min_delta, best

    def update(self, auc: float, epoch: int, step: int) -> bool:
        best = self.best
        if auc > best.auc + self.min_delta:
            best.auc, best.epoch, best.step, best.bad_rounds = auc, epoch, step, 0
            return True
        best.bad_rounds += 1
        best.stopped = bool(self.patience) and best.bad_rounds >= self.patience
        return False


@dataclass(frozen=True)
class PlateauDecay:
    """After a validation without a gain the step size is multiplied by ``factor``, never below
    ``floor`` (``factor`` 1: constant). With early stopping's patience above 1 the model gets
    at least one round at the lower rate before training stops."""

    factor: float = 1.0
    floor: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.factor <= 1:
            raise ValueError(f"lr_decay_factor must be in (0, 1], not {self.factor}")

    def next_lr(self, lr: float, improved: bool) -> float:
        return lr if improved else max(lr * self.factor, min(self.floor, lr))
