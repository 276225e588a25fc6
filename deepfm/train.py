"""The distributed trainer: Horovod data parallelism over Petastorm (or pyarrow) shards.

One process per rank (``horovodrun -np N ... jobs/train.py``) or a single plain process.
Each epoch every rank reads its own shard of ``<data>/train`` (``deepfm.data``), takes the
same number of steps as every other rank (the smallest shard's batch count: no rank waits
at an allreduce another rank never reaches), and ``hvd.DistributedOptimizer`` averages the
gradients. Validation on ``<data>/test`` merges per-rank statistics with one allreduce;
early stopping watches its AUC. Rank 0 writes everything:

    <output>/checkpoints/latest.pt   model + optimizer state + position, replaced atomically
    <output>/bundle/                 the best model so far by validation AUC (deepfm.bundle)
    <output>/metrics.json            per-epoch history and the final summary
    <output>/train.log               the progress lines
    <output>/fnn_pretrain_fm/        --model fnn only: the FM run that initialises the FNN

Rerunning the same command resumes from ``latest.pt``: same step, optimizer state and data
order (the order is a function of seed, epoch and shard; dropout noise of seed, rank and
step), so a resumed run ends with the weights an uninterrupted one would have.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from deepfm import distributed as dist
from deepfm.bundle import load_bundle, save_bundle
from deepfm.config import deep_update
from deepfm.data import Batch, ShardLoader, make_loader, prefetch
from deepfm.features import FeatureSpec
from deepfm.metrics import BinaryMetrics
from deepfm.models import Optimizers, build_model_for_spec, make_optimizers, pretrain_init
from deepfm.models.layers import FieldEmbedding
from deepfm.tracking import Tracker

log = logging.getLogger("deepfm.train")

CHECKPOINT = "checkpoints/latest.pt"


@dataclass
class TrainConfig:
    """Everything a run depends on; defaults live in ``conf/train.yaml``."""

    data: Path
    output: Path
    model: str = "deepfm"
    model_config: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 2048
    learning_rate: float | None = None
    lr_scaling: str = "linear"
    seed: int = 42
    loader: str = "petastorm"
    shuffle_buffer: int = 100_000
    prefetch: int = 2
    petastorm_pool: str = "dummy"
    petastorm_workers: int = 1
    eval_batch_size: int = 16384
    device: str = "auto"
    cpu_threads: int = 0
    amp: bool = False
    sparse_as_dense: bool = False
    validate_every: int = 0
    checkpoint_every: int = 500
    early_stopping_patience: int = 2
    early_stopping_min_delta: float = 1e-4
    log_every: int = 50
    fnn_pretrain_epochs: int = 1
    warm_start: Path | None = None
    tracking: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training settings {unknown}; known: {sorted(known)}")
        cfg = cls(**values)
        cfg.data, cfg.output = Path(cfg.data), Path(cfg.output)
        cfg.warm_start = Path(cfg.warm_start) if cfg.warm_start else None
        if cfg.lr_scaling not in ("linear", "none"):
            raise ValueError(f"lr_scaling must be 'linear' or 'none', not {cfg.lr_scaling!r}")
        return cfg


def apply_overrides(conf: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` strings (dotted keys nest; values parse as YAML) to ``conf``."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--config-override wants key=value, got {item!r}")
        value: Any = yaml.safe_load(raw)
        for part in reversed(key.split(".")):
            value = {part: value}
        conf = deep_update(conf, value)
    return conf


@dataclass
class TrainState:
    """The position of a run: all a checkpoint needs besides model and optimizer state."""

    epoch: int = 0                  # current epoch (0-based); == epochs when done
    step_in_epoch: int = 0          # batches of ``epoch`` already trained
    global_step: int = 0
    loss_sum: float = 0.0           # train loss of ``epoch`` summed over the rows of all ranks,
    loss_rows: int = 0              # up to the last checkpoint (identical on every rank)
    best_auc: float = -1.0
    best_epoch: int = -1
    best_step: int = -1
    bad_rounds: int = 0
    stopped_early: bool = False
    data_order: list[int] = field(default_factory=list)  # ranks, batch size, shuffle window, seed
    history: list[dict[str, Any]] = field(default_factory=list)
    validations: list[dict[str, Any]] = field(default_factory=list)
    mlflow_run_id: str | None = None
    resumed_at_steps: list[int] = field(default_factory=list)
    wall_seconds: float = 0.0       # of all processes of the run, up to the last checkpoint


class _Progress:
    """Samples/s per rank over the last log interval, and the ETA at that pace."""

    def __init__(self, total_steps: int, batch_size: int):
        self.total, self.batch_size = total_steps, batch_size
        self.mark: tuple[float, int] | None = None

    def line(self, epoch: int, epochs: int, step_in_epoch: int, steps: int, global_step: int, loss: float) -> str:
        now = time.perf_counter()
        last_time, last_step = self.mark or (now, global_step)
        self.mark = (now, global_step)
        rate = (global_step - last_step) / (now - last_time) if now > last_time else float("nan")
        eta = (self.total - global_step) / rate if rate > 0 else float("nan")
        return (f"epoch {epoch + 1}/{epochs} step {step_in_epoch}/{steps} (global {global_step}/{self.total}) "
                f"loss {loss:.4f} {rate * self.batch_size:,.0f} samples/s/rank ETA {_hms(eta)}")

    def start(self, global_step: int) -> None:
        """Restart the interval (after a validation, or at an epoch's first step)."""
        self.mark = (time.perf_counter(), global_step)


def _hms(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def resolve_device(name: str) -> torch.device:
    """``auto``: this rank's GPU (``cuda:<local rank>``) when CUDA is available, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda but CUDA is not available")
        torch.cuda.set_device(dist.local_rank())
        return torch.device("cuda", dist.local_rank())
    if name != "cpu":
        raise ValueError(f"device must be auto, cpu or cuda, not {name!r}")
    return torch.device("cpu")


def cpu_threads(requested: int) -> int:
    """Torch threads per rank: ``requested``, else ``$OMP_NUM_THREADS``, else this host's cores
    divided among its ranks (oversubscribed cores spin: 10x slower on a loaded 2-core host)."""
    if requested > 0:
        return requested
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return int(os.environ["OMP_NUM_THREADS"])
    return max(1, (os.cpu_count() or 1) // dist.local_size())


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bfloat16 autocast: fp32's exponent range, so no loss scaling (and no GradScaler) is needed."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def step_seed(seed: int, rank: int, global_step: int) -> int:
    """The torch seed of one training step: dropout noise is reproducible on resume."""
    return int(np.random.SeedSequence([seed, rank, global_step]).generate_state(1)[0])


def train_step(model: nn.Module, optimizers: Optimizers, batch: Batch, amp: bool) -> torch.Tensor:
    """One optimizer step on ``batch``; returns the mean loss (a detached 0-dim tensor)."""
    with autocast(batch.cat.device, amp):
        logits = model(batch.cat, batch.num)
    loss = F.binary_cross_entropy_with_logits(logits.float(), batch.label)
    optimizers.zero_grad()
    loss.backward()
    optimizers.step()  # DistributedOptimizer: waits for the averaged gradients first
    return loss.detach()


@torch.no_grad()
def evaluate(model: nn.Module, loader: ShardLoader, device: torch.device, amp: bool) -> dict[str, float]:
    """Metrics of ``model`` over every rank's shard of the validation split (merged by allreduce)."""
    model.eval()
    metrics = BinaryMetrics()
    for batch in loader.epoch(0):
        batch = batch.to(device)
        with autocast(device, amp):
            logits = model(batch.cat, batch.num)
        metrics.update(torch.sigmoid(logits.float()).cpu(), batch.label.cpu())
    model.train()
    merged = BinaryMetrics.from_tensor(dist.allreduce_sum(metrics.to_tensor(), name="validation_metrics"))
    return merged.compute()


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of every parameter and buffer: equal digests mean bit-identical weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _atomic_write(path: Path, write) -> None:
    """``write(tmp_path)`` then rename over ``path``: readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the file from other users
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    _atomic_write(path, lambda tmp: tmp.write_text(json.dumps(payload, indent=2)))


def save_checkpoint(path: Path, model: nn.Module, optimizers: Optimizers, state: TrainState,
                    model_name: str, model_config: dict[str, Any]) -> None:
    payload = {"model": model.state_dict(), "optimizers": optimizers.state_dict(), "state": dataclasses.asdict(state),
               "model_name": model_name, "model_config": model_config}
    _atomic_write(path, lambda tmp: torch.save(payload, tmp))


def embedding_row_map(spec: FeatureSpec, old_spec: FeatureSpec) -> np.ndarray:
    """For every row of the new categorical table (fields concatenated), its old row or -1.

    A ``vocab`` value keeps its old row wherever its index moved; ``hash`` and ``bucketize``
    rows map one to one when buckets, boundaries and hash seed are unchanged; index 0
    (missing/OOV) always maps to the old index 0.
    """
    parts, old_offset = [], 0
    for new, old in zip(spec.categorical_fields, old_spec.categorical_fields):
        rows = np.full(new.cardinality, -1, dtype=np.int64)
        rows[0] = 0
        if new.transform == old.transform == "vocab":
            old_index = {value: i + 1 for i, value in enumerate(old.vocabulary)}
            rows[1:len(new.vocabulary) + 1] = [old_index.get(value, -1) for value in new.vocabulary]
        elif new == old and (new.transform != "hash" or spec.hash_seed == old_spec.hash_seed):
            rows[:] = np.arange(new.cardinality)
        parts.append(np.where(rows >= 0, rows + old_offset, -1))
        old_offset += old.cardinality
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


@torch.no_grad()
def warm_start(model: nn.Module, spec: FeatureSpec, old_model: nn.Module, old_spec: FeatureSpec) -> dict[str, int]:
    """Copy ``old_model``'s weights into ``model`` (same fields in the same order required).

    Categorical rows follow ``embedding_row_map``; rows without an old counterpart (new
    vocabulary) keep their fresh initialisation. Returns ``{"kept_rows", "new_rows"}`` per table.
    """
    names, old_names = [f.name for f in spec.fields], [f.name for f in old_spec.fields]
    if names != old_names:
        raise ValueError(f"warm start needs the same fields in the same order: {old_names} -> {names}")
    row_map = embedding_row_map(spec, old_spec)
    hit = torch.from_numpy(np.flatnonzero(row_map >= 0))
    source = torch.from_numpy(row_map[hit.numpy()])
    tables = {f"{name}.categorical.weight" for name, module in model.named_modules()
              if isinstance(module, FieldEmbedding)}
    old_state = old_model.state_dict()
    for name, tensor in model.state_dict().items():
        old = old_state[name]
        if old.shape[1:] != tensor.shape[1:] or (name not in tables and old.shape != tensor.shape):
            raise ValueError(f"warm start: {name} is {tuple(old.shape)} in the old model, "
                             f"{tuple(tensor.shape)} now (different model config?)")
        if name in tables:
            tensor[hit] = old[source].to(tensor.dtype)
        else:
            tensor.copy_(old)
    return {"kept_rows": len(hit), "new_rows": len(row_map) - len(hit)}


def setup_logging(output: Path) -> None:
    """Progress on rank 0 (stderr and ``<output>/train.log``); other ranks report warnings only.

    Petastorm's INFO lines (one per reader, i.e. per epoch and rank) are silenced.
    """
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if dist.is_primary():
        output.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(output / "train.log"))
    logging.basicConfig(level=logging.INFO if dist.is_primary() else logging.WARNING, handlers=handlers, force=True,
                        format=f"%(asctime)s rank{dist.rank()} %(levelname)s %(name)s: %(message)s")
    logging.getLogger("petastorm").setLevel(logging.WARNING)


class Trainer:
    """One training run of one model into ``cfg.output`` (resumed if a checkpoint is there).

    ``init(model)`` (warm start, FNN pre-training) runs on rank 0 for a fresh run only;
    ``broadcast_parameters`` hands its result to the other ranks.
    """

    def __init__(self, cfg: TrainConfig, spec: FeatureSpec, model_config: dict[str, Any],
                 init: Any = None):
        self.cfg, self.spec = cfg, spec
        self.primary, self.rank, world = dist.is_primary(), dist.rank(), dist.size()
        self.device = resolve_device(cfg.device)
        if self.device.type == "cpu":
            torch.set_num_threads(cpu_threads(cfg.cpu_threads))
        torch.manual_seed(cfg.seed)
        self.model = build_model_for_spec(cfg.model, spec, model_config).to(self.device)
        base_lr = cfg.learning_rate if cfg.learning_rate is not None else self.model.config["learning_rate"]
        self.lr = base_lr * (world if cfg.lr_scaling == "linear" else 1)
        self.optimizers = make_optimizers(self.model, self.lr).wrap(
            lambda opt, named: dist.distributed_optimizer(opt, named, cfg.sparse_as_dense))
        self.state = self._restore_or_init(init)
        data_order = [world, cfg.batch_size, cfg.shuffle_buffer, cfg.seed]
        if self.state.data_order != data_order and self.state.step_in_epoch:
            log.warning("ranks, batch size, shuffle window or seed differ from the checkpoint's %s: "
                        "epoch %d restarts from its first batch", self.state.data_order, self.state.epoch + 1)
            self.state.step_in_epoch, self.state.loss_sum, self.state.loss_rows = 0, 0.0, 0
        self.state.data_order = data_order

        self.train_loader = make_loader(cfg.loader, cfg.data / "train", spec, cfg.batch_size, shard=self.rank,
                                        shard_count=world, shuffle_buffer=cfg.shuffle_buffer, seed=cfg.seed,
                                        pool_type=cfg.petastorm_pool, workers=cfg.petastorm_workers)
        # Validation reads with pyarrow whatever --loader says: it is one unshuffled pass, and unlike
        # Petastorm it copes with a test day of fewer row groups than ranks (some ranks get none).
        self.val_loader = make_loader("arrow", cfg.data / "test", spec, cfg.eval_batch_size, shard=self.rank,
                                      shard_count=world, shuffle=False)
        # Equal steps on every rank: the smallest shard sets them; larger shards drop their tail
        # (a different tail every epoch, as the row-group order is reshuffled).
        self.steps = dist.allreduce_min(self.train_loader.num_batches, name="steps_per_epoch")
        if self.steps == 0:
            raise ValueError(f"a train shard is empty: {self.train_loader.dataset_row_groups} row groups in "
                             f"{cfg.data / 'train'} for {world} ranks")
        log.info("%s on %d rank(s), %s: shard of %d rows, %d steps of %d per epoch, lr %.3g, loader %s",
                 cfg.model, world, self.device, self.train_loader.expected_rows, self.steps, cfg.batch_size,
                 self.lr, cfg.loader)

        self.tracker = Tracker(cfg.tracking.get("mlflow", {}), cfg.output, enabled=self.primary)
        self.tracker.start({**_flat_params(cfg), "world_size": world, "lr_scaled": self.lr},
                           run_id=self.state.mlflow_run_id, run_name=f"{cfg.output.name}-{cfg.model}")
        self.state.mlflow_run_id = self.tracker.run_id
        self._local_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        self._local_rows = 0
        self._progress = _Progress(self.steps * cfg.epochs, cfg.batch_size)
        self._clock = time.perf_counter()

    def _restore_or_init(self, init: Any) -> TrainState:
        path = self.cfg.output / CHECKPOINT
        state = TrainState()
        if self.primary and path.exists():
            checkpoint = torch.load(path, map_location=self.device, weights_only=True)
            if checkpoint["model_name"] != self.cfg.model or checkpoint["model_config"] != self.model.config:
                raise ValueError(f"{path} holds a {checkpoint['model_name']} with another config: "
                                 "use a new --output to train a different model")
            self.model.load_state_dict(checkpoint["model"])
            self.optimizers.load_state_dict(checkpoint["optimizers"])
            state = TrainState(**checkpoint["state"])
            state.resumed_at_steps.append(state.global_step)
            log.info("resuming from %s: epoch %d, step %d of the epoch, global step %d",
                     path, state.epoch + 1, state.step_in_epoch, state.global_step)
        elif self.primary and init is not None:
            init(self.model)
        state = dist.broadcast_object(state)
        dist.broadcast_parameters(self.model)
        for optimizer in self.optimizers:
            dist.broadcast_optimizer_state(optimizer, model=self.model)
        return state

    def fit(self) -> dict[str, Any]:
        """Train until ``epochs`` or early stopping; returns the summary (on every rank)."""
        while self.state.epoch < self.cfg.epochs and not self.state.stopped_early:
            self._epoch()
        return self._finish()

    def _batches(self) -> Any:
        """This epoch's remaining batches on the device (pinned and read ahead when on a GPU)."""
        batches = self.train_loader.epoch(self.state.epoch, steps=self.steps, skip=self.state.step_in_epoch)
        if self.device.type == "cuda":
            batches = (Batch(*(t.pin_memory() for t in b)) for b in batches)
        return (b.to(self.device, non_blocking=True) for b in prefetch(batches, self.cfg.prefetch))

    def _epoch(self) -> None:
        cfg, s, progress = self.cfg, self.state, self._progress
        started, paused, rows = time.perf_counter(), 0.0, 0
        for batch in self._batches():
            if progress.mark is None:  # the clock starts once the reader delivered
                progress.start(s.global_step)
            torch.manual_seed(step_seed(cfg.seed, self.rank, s.global_step))
            loss = train_step(self.model, self.optimizers, batch, cfg.amp)
            self._local_loss += loss * len(batch)
            self._local_rows += len(batch)
            rows += len(batch)
            s.step_in_epoch += 1
            s.global_step += 1
            if cfg.log_every and s.global_step % cfg.log_every == 0:
                log.info(progress.line(s.epoch, cfg.epochs, s.step_in_epoch, self.steps, s.global_step,
                                       (self._local_loss / max(self._local_rows, 1)).item()))
            validate = cfg.validate_every and s.global_step % cfg.validate_every == 0 and s.step_in_epoch < self.steps
            checkpoint = cfg.checkpoint_every and s.global_step % cfg.checkpoint_every == 0
            if validate or checkpoint:  # not training time: excluded from samples/s
                pause = time.perf_counter()
                if validate:
                    self._validate()
                if checkpoint:
                    self._checkpoint()
                paused += time.perf_counter() - pause
                progress.start(s.global_step)
            if s.stopped_early:
                break
        progress.mark = None
        self._end_epoch(rows, time.perf_counter() - started - paused, started)

    def _sync_loss(self) -> None:
        """Fold every rank's loss since the last sync into the (rank-identical) state."""
        local = torch.stack([self._local_loss.cpu(), torch.tensor(float(self._local_rows), dtype=torch.float64)])
        total = dist.allreduce_sum(local, name="train_loss")
        self.state.loss_sum += float(total[0])
        self.state.loss_rows += int(total[1])
        self._local_loss.zero_()
        self._local_rows = 0

    def _end_epoch(self, rows: int, train_seconds: float, started: float) -> None:
        s = self.state
        self._sync_loss()
        rates = dist.allgather_object(rows / train_seconds if train_seconds > 0 else 0.0)
        val = s.validations[-1] if s.stopped_early else self._validate()
        entry = {"epoch": s.epoch + 1, "steps": s.step_in_epoch, "global_step": s.global_step,
                 "train_loss": s.loss_sum / max(s.loss_rows, 1),
                 **{f"val_{k}": v for k, v in val.items() if k not in ("epoch", "global_step", "reliability")},
                 "samples_per_s_per_rank": [round(r, 1) for r in rates], "samples_per_s": round(sum(rates), 1),
                 "train_seconds": round(train_seconds, 2), "wall_s": round(time.perf_counter() - started, 2)}
        s.history.append(entry)
        s.epoch += 1
        s.step_in_epoch, s.loss_sum, s.loss_rows = 0, 0.0, 0
        log.info("epoch %d/%d: train loss %.4f, val AUC %.4f logloss %.4f, %s samples/s (%s per rank), %.1f s",
                 entry["epoch"], self.cfg.epochs, entry["train_loss"], entry.get("val_auc", float("nan")),
                 entry.get("val_logloss", float("nan")), f"{entry['samples_per_s']:,.0f}",
                 ", ".join(f"{r:,.0f}" for r in rates), entry["wall_s"])
        self.tracker.log_metrics({"train_loss": entry["train_loss"], "samples_per_s": entry["samples_per_s"]},
                                 step=s.global_step)
        self._checkpoint()

    def _validate(self) -> dict[str, Any]:
        cfg, s = self.cfg, self.state
        metrics = evaluate(self.model, self.val_loader, self.device, cfg.amp)
        scalars = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        record = {"epoch": s.epoch + 1, "global_step": s.global_step, **metrics}
        s.validations.append(record)
        if scalars["auc"] > s.best_auc + cfg.early_stopping_min_delta:
            s.best_auc, s.best_epoch, s.best_step, s.bad_rounds = scalars["auc"], s.epoch + 1, s.global_step, 0
            if self.primary:
                self._save_bundle(record)
        else:
            s.bad_rounds += 1
            s.stopped_early = bool(cfg.early_stopping_patience) and s.bad_rounds >= cfg.early_stopping_patience
        log.info("validation at step %d: AUC %.4f logloss %.4f calibration %.3f (best AUC %.4f at step %d)%s",
                 s.global_step, scalars["auc"], scalars["logloss"], scalars["calibration"],
                 s.best_auc, s.best_step, "; early stop" if s.stopped_early else "")
        self.tracker.log_metrics({f"val_{k}": v for k, v in scalars.items()}, step=s.global_step)
        return record

    def _save_bundle(self, validation: dict[str, Any]) -> None:
        extra = {"validation": validation, "world_size": dist.size(), "data": str(self.cfg.data),
                 "warm_start": str(self.cfg.warm_start) if self.cfg.warm_start else None}
        version = save_bundle(self.cfg.output / "bundle", self.model, self.cfg.model, self.model.config,
                              self.spec, extra=extra)
        log.info("bundle %s saved (validation AUC %.4f)", version, validation["auc"])

    def _tick(self) -> None:
        now = time.perf_counter()
        self.state.wall_seconds += now - self._clock
        self._clock = now

    def _checkpoint(self) -> None:
        """All ranks fold their loss in; rank 0 writes the checkpoint and the metrics so far."""
        self._sync_loss()
        self._tick()
        if self.primary:
            save_checkpoint(self.cfg.output / CHECKPOINT, self.model, self.optimizers, self.state,
                            self.cfg.model, self.model.config)
            self._write_metrics()

    def _write_metrics(self, summary: dict[str, Any] | None = None, digests: list[str] | None = None) -> None:
        s = self.state
        payload = {"model": self.cfg.model, "loader": self.cfg.loader, "world_size": dist.size(),
                   "batch_size_per_rank": self.cfg.batch_size, "learning_rate": self.lr,
                   "steps_per_epoch": self.steps, "epochs": s.history, "validations": s.validations,
                   "resumed_at_steps": s.resumed_at_steps, "wall_time_s": round(s.wall_seconds, 1),
                   "weight_digests": digests, "summary": summary}
        _write_json(self.cfg.output / "metrics.json", payload)

    def _finish(self) -> dict[str, Any]:
        s = self.state
        self._tick()
        digests = dist.allgather_object(weights_digest(self.model))
        if len(set(digests)) != 1:
            log.error("ranks ended with different weights: %s", digests)
        best = next((v for v in s.validations if v["global_step"] == s.best_step), {})
        last = s.history[-1] if s.history else {}
        summary = {"model": self.cfg.model, "val_auc": best.get("auc"), "val_logloss": best.get("logloss"),
                   "val_calibration": best.get("calibration"), "best_epoch": s.best_epoch,
                   "epochs_run": len(s.history), "global_step": s.global_step, "stopped_early": s.stopped_early,
                   "samples_per_s": last.get("samples_per_s"), "world_size": dist.size(),
                   "loader": self.cfg.loader, "bundle": str(self.cfg.output / "bundle"),
                   "metrics": str(self.cfg.output / "metrics.json"), "output": str(self.cfg.output),
                   "wall_time_s": round(s.wall_seconds, 1)}
        if self.primary:
            self._write_metrics(summary, digests)
            for artifact in (self.cfg.output / "bundle", self.cfg.output / "metrics.json"):
                self.tracker.log_artifact(artifact)
        self.tracker.finish()
        return summary


def _flat_params(cfg: TrainConfig) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k != "tracking"}


def train(cfg: TrainConfig) -> dict[str, Any]:
    """The whole training job on this rank: optional FNN pre-training, warm start, fit.

    Returns the summary (identical on every rank).
    """
    dist.init()
    spec = FeatureSpec.load(cfg.data)
    model_config, init = dict(cfg.model_config), None
    if cfg.warm_start:
        model_config, init = _warm_start_init(cfg, spec)
    elif cfg.model == "fnn":
        init = _fnn_pretraining(cfg, spec)
    return Trainer(cfg, spec, model_config, init).fit()


def _warm_start_init(cfg: TrainConfig, spec: FeatureSpec) -> tuple[dict[str, Any], Any]:
    """The bundle's model config (read on rank 0, shared), and the rank-0 ``init`` copying its weights."""
    bundle = load_bundle(cfg.warm_start) if dist.is_primary() else None
    name, config = dist.broadcast_object((bundle.name, bundle.config) if bundle else None)
    if name != cfg.model:
        raise ValueError(f"--warm-start {cfg.warm_start} holds a {name}, not a {cfg.model}")

    def init(model: nn.Module) -> None:
        counts = warm_start(model, spec, bundle.model, bundle.spec)
        log.info("warm start from %s (spec %s -> %s): %d embedding rows kept, %d new", cfg.warm_start,
                 bundle.spec.version, spec.version, counts["kept_rows"], counts["new_rows"])

    return config, init


def _fnn_pretraining(cfg: TrainConfig, spec: FeatureSpec) -> Any:
    """Stage one of FNN: train an FM (its own resumable run in ``<output>/fnn_pretrain_fm``)."""
    stage = dataclasses.replace(cfg, model="fm", epochs=cfg.fnn_pretrain_epochs,
                                output=cfg.output / "fnn_pretrain_fm")
    log.info("FNN stage 1: training an FM for %d epoch(s) in %s", stage.epochs, stage.output)
    Trainer(stage, spec, dict(cfg.model_config)).fit()

    def init(model: nn.Module) -> None:
        pretrain_init(model, load_bundle(stage.output / "bundle").model)
        log.info("FNN stage 2: embeddings initialised from %s", stage.output / "bundle")

    return init
