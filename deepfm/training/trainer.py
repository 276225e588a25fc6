"""The training job: data-parallel training of one model over Petastorm (or pyarrow) shards.

One process per rank (started by a launcher of ``deepfm.training.launch``) or a single plain
process; every exchange between the ranks goes through ``Parts.comm`` (``Collectives``: Horovod's
or torch.distributed's).
Each epoch every rank reads its own shard of ``<data>/train`` (``deepfm.training.feed``), takes
the same number of steps as every other rank (the smallest shard's batch count: no rank waits at
an allreduce another rank never reaches), and the distributed optimizer averages the gradients.
Validation on ``<data>/validation`` merges per-rank statistics with one allreduce; early stopping
watches its AUC and the best validation's weights become the bundle, with a logit shift fitted
on that validation so its mean prediction is the observed CTR. The test split is never
opened: model selection does not see the test day. Rank 0 writes the run's
files (``deepfm.training.artifacts``).

Rerunning the same command resumes from the checkpoint: same step, optimizer state and data
order (the order is a function of seed, epoch and shard; dropout noise of seed, rank and
step), so a resumed run ends with the weights an uninterrupted one would have.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from deepfm.core import fs
from deepfm.core.features import FeatureSpec
from deepfm.core.metrics import BinaryMetrics, calibrating_shift
from deepfm.core.tracking import Tracker, TrackingSettings, store_uri
from deepfm.models import CTRModel, ModelConfig, ModelDefaults, Optimizers, build_model_for_spec, make_optimizers
from deepfm.models.bundle import load_bundle, state_digest
from deepfm.models.optim import clip_grad_norm
from deepfm.models.surgery import pretrain_init, warm_start
from deepfm.training.artifacts import BUNDLE, RunArtifacts, TrainState, run_identity
from deepfm.training.collectives import SINGLE_PROCESS, Collectives
from deepfm.training.early_stopping import EarlyStopping, PlateauDecay
from deepfm.training.evaluate import autocast, evaluate
from deepfm.training.feed import LOADERS, Batch, ShardLoader, make_loader, prefetch
from deepfm.training.throughput import Throughput

log = logging.getLogger(__name__)

NUMBER_TYPES: dict[str, Callable[[Any], float | int]] = {"float": float, "float | None": float, "int": int}
Init = Callable[[CTRModel], None]  # rank 0's initialisation of a fresh run (warm start, FNN)
LAUNCH_KEYS = ("launcher", "np", "hosts")  # train.yaml's settings of deepfm.training.launch.LaunchSettings


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run depends on; the command line fills it from ``deepfm/conf/train.yaml``."""

    data: str  # a URI (deepfm.core.fs): the ranks read their shards from wherever it is
    output: str  # a URI too: rank 0 writes the run's files there, a resumed run reads them back
    model: str
    model_config: ModelConfig
    epochs: int = 10
    batch_size: int = 2048
    learning_rate: float | None = None  # None: the model config's
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
    lr_decay_factor: float = 1.0  # step size x factor after a validation without gain; 1: constant
    lr_decay_floor: float = 0.0  # the decay never goes below this step size
    grad_clip_norm: float = 0.0  # global L2 norm the averaged gradients are clipped to; 0: off
    calibrate: bool = True  # bundles carry a logit shift fitted on their validation (calibrating_shift)
    log_every: int = 50
    fnn_pretrain_epochs: int = 1
    warm_start: str | None = None  # a bundle's URI
    fresh: bool = False  # start over even when a checkpoint of the same run is there
    tracking: TrackingSettings = field(default_factory=TrackingSettings)

    def __post_init__(self) -> None:
        if self.lr_scaling not in ("linear", "none"):
            raise ValueError(f"lr_scaling must be 'linear' or 'none', not {self.lr_scaling!r}")
        if self.loader not in LOADERS:
            raise ValueError(f"loader must be one of {LOADERS}, not {self.loader!r}")
        if self.grad_clip_norm < 0:
            raise ValueError(f"grad_clip_norm must be >= 0, not {self.grad_clip_norm}")
        PlateauDecay(self.lr_decay_factor, self.lr_decay_floor)  # validates the pair

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], model_defaults: ModelDefaults) -> TrainConfig:
        """From ``train.yaml``'s layout: ``model_config`` holds overrides of the model's defaults;
        the launch keys (who starts how many ranks: ``launch.LaunchSettings``) are not the run's."""
        values = {k: v for k, v in values.items() if k not in LAUNCH_KEYS}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training settings {unknown}; known: {sorted(known)}")
        # YAML reads 1e-5 (no dot) as a string: numbers are cast by their declared type.
        numbers = {
            f.name: NUMBER_TYPES[str(f.type)](values[f.name])
            for f in dataclasses.fields(cls)
            if str(f.type) in NUMBER_TYPES and values.get(f.name) is not None
        }
        return cls(
            **{
                **values,
                **numbers,
                "data": str(values["data"]),
                "output": str(values["output"]),
                "model_config": model_defaults.resolve(values["model"], values.get("model_config") or {}),
                "warm_start": str(values["warm_start"]) if values.get("warm_start") else None,
                "tracking": TrackingSettings.from_dict((values.get("tracking") or {}).get("mlflow") or {}),
            }
        )

    def to_dict(self) -> dict[str, Any]:
        """The values ``from_dict`` rebuilds this config from (paths as strings)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {
            **values,
            "model_config": self.model_config.to_dict(),
            "tracking": {"mlflow": self.tracking.to_dict()},
        }


@dataclass(frozen=True)
class Parts:
    """What the loop trains, built before it: the model on its device, its (distributed)
    optimizers at the scaled learning rate, and this rank's loaders of the two splits."""

    model: CTRModel
    optimizers: Optimizers
    train_loader: ShardLoader
    val_loader: ShardLoader
    device: torch.device
    lr: float
    comm: Collectives  # the ranks: every collective of the run goes through it


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: this rank's GPU (``cuda:<local rank>``) when CUDA is available, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda but CUDA is not available")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    if name != "cpu":
        raise ValueError(f"device must be auto, cpu or cuda, not {name!r}")
    return torch.device("cpu")


def cpu_threads(requested: int, local_size: int = 1) -> int:
    """Torch threads per rank: ``requested``, else ``$OMP_NUM_THREADS``, else this host's cores
    divided among its ranks (oversubscribed cores spin: 10x slower on a loaded 2-core host)."""
    if requested > 0:
        return requested
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return int(os.environ["OMP_NUM_THREADS"])
    return max(1, (os.cpu_count() or 1) // local_size)


def build_parts(
    cfg: TrainConfig, spec: FeatureSpec, model_config: ModelConfig, comm: Collectives = SINGLE_PROCESS
) -> Parts:
    """Model, optimizers and loaders of this rank of ``comm`` (the model seeded by ``cfg.seed``)."""
    device = resolve_device(cfg.device, comm.local_rank)
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads(cfg.cpu_threads, comm.local_size))
    torch.manual_seed(cfg.seed)
    model = build_model_for_spec(cfg.model, spec, model_config).to(device)
    base_lr = cfg.learning_rate if cfg.learning_rate is not None else model_config.learning_rate
    lr = base_lr * (comm.size if cfg.lr_scaling == "linear" else 1)
    optimizers = comm.distributed(
        make_optimizers(
            model, lr, row_decay=model_config.embedding_weight_decay, sparse_lr_scale=model_config.embedding_lr_scale
        ),
        cfg.sparse_as_dense,
    )
    rank, world = comm.rank, comm.size
    train_loader = make_loader(
        cfg.loader,
        fs.join(cfg.data, "train"),
        spec,
        cfg.batch_size,
        shard=rank,
        shard_count=world,
        shuffle_buffer=cfg.shuffle_buffer,
        seed=cfg.seed,
        pool_type=cfg.petastorm_pool,
        workers=cfg.petastorm_workers,
    )
    # Validation reads with pyarrow whatever --loader says: it is one unshuffled pass, and unlike
    # Petastorm it copes with a validation day of fewer row groups than ranks (some ranks get none).
    val_loader = make_loader(
        "arrow",
        fs.join(cfg.data, "validation"),
        spec,
        cfg.eval_batch_size,
        shard=rank,
        shard_count=world,
        shuffle=False,
    )
    return Parts(model, optimizers, train_loader, val_loader, device, lr, comm)


def step_seed(seed: int, rank: int, global_step: int) -> int:
    """The torch seed of one training step: dropout noise is reproducible on resume."""
    return int(np.random.SeedSequence([seed, rank, global_step]).generate_state(1)[0])


def train_step(
    model: nn.Module,
    optimizers: Optimizers,
    batch: Batch,
    amp: bool,
    clip_norm: float = 0.0,
    comm: Collectives = SINGLE_PROCESS,
) -> torch.Tensor:
    """One optimizer step on ``batch``, the gradients averaged over ``comm``'s ranks (``optimizers``
    come from its ``distributed``) and clipped to ``clip_norm`` (0: not); returns the mean loss
    (a detached 0-dim tensor)."""
    with autocast(batch.cat.device, amp):
        logits = model(batch.cat, batch.num)  # (B,)
    loss = F.binary_cross_entropy_with_logits(logits.float(), batch.label)
    optimizers.zero_grad()
    loss.backward()
    if clip_norm:
        with comm.synchronized(optimizers):  # clip what every rank will apply: the average
            clip_grad_norm(list(model.parameters()), clip_norm)
            optimizers.step()
    else:
        optimizers.step()  # a distributed optimizer waits for the averaged gradients first
    return loss.detach()


def train(cfg: TrainConfig, comm: Collectives = SINGLE_PROCESS) -> dict[str, Any]:
    """The whole training job on this rank of ``comm``: optional FNN pre-training or warm start,
    then ``fit``.

    Returns the summary (identical on every rank; rank 0 also writes it to ``summary.json``).
    """
    spec = FeatureSpec.load(cfg.data)
    model_config, init = cfg.model_config, None
    if cfg.warm_start:
        model_config, init = _warm_start_init(cfg, spec, comm)
    elif cfg.model == "fnn":
        init = _fnn_pretraining(cfg, spec, comm)
    return fit(cfg, spec, build_parts(cfg, spec, model_config, comm), init)


def fit(cfg: TrainConfig, spec: FeatureSpec, parts: Parts, init: Init | None = None) -> dict[str, Any]:
    """Train ``parts.model`` until ``cfg.epochs`` or early stopping; returns the summary.

    A checkpoint in ``cfg.output`` is resumed; otherwise rank 0 applies ``init`` (warm start,
    FNN pre-training) and every rank starts from its weights.
    """
    run = _Run(cfg, spec, parts, init)
    s, meter, comm = run.state, run.meter, parts.comm
    while s.epoch < cfg.epochs and not s.best.stopped:
        meter.begin_epoch()
        rows = 0
        for batch in run.batches():
            if meter.mark is None:  # the clock starts once the reader delivered
                meter.start(s.global_step)
            torch.manual_seed(step_seed(cfg.seed, comm.rank, s.global_step))
            loss = train_step(parts.model, parts.optimizers, batch, cfg.amp, cfg.grad_clip_norm, comm)
            run.loss.add(loss, len(batch))
            rows += len(batch)
            s.step_in_epoch += 1
            s.global_step += 1
            if cfg.log_every and s.global_step % cfg.log_every == 0:
                log.info(meter.line(s.epoch, cfg.epochs, s.step_in_epoch, run.steps, s.global_step, run.loss.mean))
            validate = cfg.validate_every and s.global_step % cfg.validate_every == 0 and s.step_in_epoch < run.steps
            checkpoint = cfg.checkpoint_every and s.global_step % cfg.checkpoint_every == 0
            if validate or checkpoint:  # not training time: excluded from samples/s
                paused = time.perf_counter()
                if validate:
                    run.validate()
                if checkpoint:
                    run.checkpoint()
                meter.add_pause(time.perf_counter() - paused)
                meter.start(s.global_step)
            if s.best.stopped:
                break
        run.end_epoch(rows)
    return run.finish()


class _LossMeter:
    """This rank's train loss since the last sync, summed on the device (no host sync per step)."""

    def __init__(self, device: torch.device) -> None:
        self.total = torch.zeros((), dtype=torch.float64, device=device)
        self.rows = 0

    def add(self, loss: torch.Tensor, rows: int) -> None:
        self.total += loss * rows
        self.rows += rows

    @property
    def mean(self) -> float:
        return (self.total / max(self.rows, 1)).item()

    def sync_into(self, state: TrainState, comm: Collectives) -> None:
        """Fold every rank's loss since the last sync into the (rank-identical) state."""
        local = torch.stack([self.total.cpu(), torch.tensor(float(self.rows), dtype=torch.float64)])
        total = comm.allreduce_sum(local, name="train_loss")
        state.loss_sum += float(total[0])
        state.loss_rows += int(total[1])
        self.total.zero_()
        self.rows = 0


class _Run:
    """The moving parts of one ``fit``: state (restored or fresh), early stopping, artifacts,
    tracking, throughput and loss accounting; the loop itself is ``fit``."""

    def __init__(self, cfg: TrainConfig, spec: FeatureSpec, parts: Parts, init: Init | None) -> None:
        self.cfg, self.spec, self.parts, self.comm = cfg, spec, parts, parts.comm
        comm = self.comm
        self.artifacts = RunArtifacts(cfg.output, comm.is_primary)
        self.identity = run_identity(parts.model, spec, cfg.data)
        self.state = self._restore_or_init(init)
        data_order = [comm.size, cfg.batch_size, cfg.shuffle_buffer, cfg.seed]
        if self.state.data_order != data_order and self.state.step_in_epoch:
            log.warning(
                "ranks, batch size, shuffle window or seed differ from the checkpoint's %s: "
                "epoch %d restarts from its first batch",
                self.state.data_order,
                self.state.epoch + 1,
            )
            self.state.step_in_epoch, self.state.loss_sum, self.state.loss_rows = 0, 0.0, 0
        self.state.data_order = data_order
        # Equal steps on every rank: the smallest shard sets them; larger shards drop their tail
        # (a different tail every epoch, as the row-group order is reshuffled).
        self.steps = comm.allreduce_min(parts.train_loader.num_batches, name="steps_per_epoch")
        if self.steps == 0:
            raise ValueError(
                f"a train shard is empty: {parts.train_loader.dataset_row_groups} row groups in "
                f"{fs.join(cfg.data, 'train')} for {comm.size} ranks"
            )
        log.info(
            "%s on %d rank(s), %s: shard of %d rows, %d steps of %d per epoch, lr %.3g, loader %s",
            cfg.model,
            comm.size,
            parts.device,
            parts.train_loader.expected_rows,
            self.steps,
            cfg.batch_size,
            parts.lr,
            cfg.loader,
        )
        self.early = EarlyStopping(cfg.early_stopping_patience, cfg.early_stopping_min_delta, self.state.best)
        self.decay = PlateauDecay(cfg.lr_decay_factor, cfg.lr_decay_floor)
        self.meter = Throughput(self.steps * cfg.epochs, cfg.batch_size)
        self.loss = _LossMeter(parts.device)
        self.tracker = Tracker(cfg.tracking, cfg.output, enabled=comm.is_primary)
        params = {**_flat_params(cfg), "world_size": comm.size, "lr_scaled": parts.lr}
        tags = {"model": cfg.model, "spec_version": spec.version, "data": str(cfg.data)}
        run_name = f"{fs.name(cfg.output)}-{cfg.model}"
        run_id = self.tracker.start(params, run_id=self.state.mlflow_run_id, run_name=run_name, tags=tags)
        self.state.mlflow_run_id = comm.broadcast_object(run_id, name="mlflow_run_id")
        self._clock = time.perf_counter()

    def _restore_or_init(self, init: Init | None) -> TrainState:
        model, optimizers, comm = self.parts.model, self.parts.optimizers, self.comm
        state = TrainState()
        checkpoint = self.artifacts.load_checkpoint(self.parts.device)
        if checkpoint is not None and (self.cfg.fresh or checkpoint.get("identity") != self.identity):
            why = "--fresh" if self.cfg.fresh else _differences(checkpoint.get("identity") or {}, self.identity)
            log.warning("training from scratch (%s): the earlier run moved to %s", why, self.artifacts.retire())
            checkpoint = None
        elif checkpoint is None and self.cfg.fresh:
            self.artifacts.retire()  # a bundle or metrics without a checkpoint
        if checkpoint is not None:
            model.load_state_dict(checkpoint["model"])
            optimizers.load_state_dict(checkpoint["optimizers"])
            state = TrainState.from_dict(checkpoint["state"])
            state.resumed_at_steps.append(state.global_step)
            log.info(
                "resuming from %s: epoch %d, step %d of the epoch, global step %d",
                self.artifacts.checkpoint,
                state.epoch + 1,
                state.step_in_epoch,
                state.global_step,
            )
        elif comm.is_primary and init is not None:
            init(model)
        state = comm.broadcast_object(state, name="train_state")
        comm.broadcast_parameters(model)
        for optimizer in optimizers:
            comm.broadcast_optimizer_state(optimizer, model=model)
        return state

    def batches(self) -> Iterator[Batch]:
        """This epoch's remaining batches on the device (pinned and read ahead when on a GPU)."""
        device = self.parts.device
        batches: Iterator[Batch] = self.parts.train_loader.epoch(
            self.state.epoch, steps=self.steps, skip=self.state.step_in_epoch
        )
        if device.type == "cuda":
            batches = (Batch(*(t.pin_memory() for t in b)) for b in batches)
        return (b.to(device, non_blocking=True) for b in prefetch(batches, self.cfg.prefetch))

    def validate(self) -> dict[str, Any]:
        """Every rank's shard of the validation split, merged; a new best becomes the bundle."""
        s, parts = self.state, self.parts
        self.comm.average_buffers(parts.model)
        merged = self._validation()
        metrics = merged.compute()
        lr = parts.optimizers.lr
        record = {"epoch": s.epoch + 1, "global_step": s.global_step, "lr": lr, **metrics}
        s.validations.append(record)
        improved = self.early.update(metrics["auc"], s.epoch + 1, s.global_step)
        next_lr = self.decay.next_lr(lr, improved)
        if not s.best.stopped and next_lr != lr:
            parts.optimizers.set_lr(next_lr)
            log.info("validation plateau: learning rate %.3g -> %.3g", lr, next_lr)
        if improved:
            record["logit_shift"] = shift = calibrating_shift(merged) if self.cfg.calibrate else 0.0
            extra = {
                "validation": record,
                "world_size": self.comm.size,
                "data": str(self.cfg.data),
                "warm_start": self.cfg.warm_start,
            }
            with _shifted(parts.model, shift):  # the bundle's model, and its validation, calibrated
                selected = self._validation() if shift else merged
                version = self.artifacts.save_bundle(parts.model, self.spec, selected, extra)
            if version:
                log.info(
                    "bundle %s saved (validation AUC %.4f; logit shift %+.4f: calibration %.3f -> %.3f)",
                    version,
                    metrics["auc"],
                    shift,
                    metrics["calibration"],
                    selected.compute()["calibration"],
                )
        log.info(
            "validation at step %d: AUC %.4f logloss %.4f calibration %.3f (best AUC %.4f at step %d)%s",
            s.global_step,
            metrics["auc"],
            metrics["logloss"],
            metrics["calibration"],
            s.best.auc,
            s.best.step,
            "; early stop" if s.best.stopped else "",
        )
        scalars = {f"val_{k}": float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        self.tracker.log_metrics(scalars, step=s.global_step)
        return record

    def _validation(self) -> BinaryMetrics:
        """The model's metrics on every rank's shard of the validation split, merged."""
        parts = self.parts
        local = evaluate(parts.model, parts.val_loader.epoch(0), parts.device, self.cfg.amp)
        return BinaryMetrics.from_tensor(self.comm.allreduce_sum(local.to_tensor(), name="validation_metrics"))

    def checkpoint(self) -> None:
        """All ranks fold their loss in; rank 0 writes the checkpoint and the metrics so far.

        Batch-norm statistics are averaged first: a run resumed from this checkpoint continues
        from the state every rank of the uninterrupted run has."""
        self.comm.average_buffers(self.parts.model)
        self.loss.sync_into(self.state, self.comm)
        self._tick()
        self.artifacts.save_checkpoint(self.parts.model, self.parts.optimizers, self.state, self.identity)
        self.artifacts.write_metrics(self._metrics())

    def end_epoch(self, rows: int) -> None:
        s, meter = self.state, self.meter
        self.loss.sync_into(s, self.comm)
        train_seconds = meter.train_seconds
        rates = self.comm.allgather_object(rows / train_seconds if train_seconds > 0 else 0.0)
        val = s.validations[-1] if s.best.stopped else self.validate()
        entry = {
            "epoch": s.epoch + 1,
            "steps": s.step_in_epoch,
            "global_step": s.global_step,
            "train_loss": s.loss_sum / max(s.loss_rows, 1),
            "lr": val.get("lr"),
            **{f"val_{k}": v for k, v in val.items() if k not in ("epoch", "global_step", "lr", "reliability")},
            "samples_per_s_per_rank": [round(r, 1) for r in rates],
            "samples_per_s": round(sum(rates), 1),
            "train_seconds": round(train_seconds, 2),
            "wall_s": round(meter.wall_seconds, 2),
        }
        s.history.append(entry)
        s.epoch += 1
        s.step_in_epoch, s.loss_sum, s.loss_rows = 0, 0.0, 0
        log.info(
            "epoch %d/%d: train loss %.4f, val AUC %.4f logloss %.4f, %s samples/s (%s per rank), %.1f s",
            entry["epoch"],
            self.cfg.epochs,
            entry["train_loss"],
            entry.get("val_auc", float("nan")),
            entry.get("val_logloss", float("nan")),
            f"{entry['samples_per_s']:,.0f}",
            ", ".join(f"{r:,.0f}" for r in rates),
            entry["wall_s"],
        )
        self.tracker.log_metrics(
            {"train_loss": entry["train_loss"], "samples_per_s": entry["samples_per_s"]}, step=s.global_step
        )
        self.checkpoint()

    def finish(self) -> dict[str, Any]:
        s, cfg = self.state, self.cfg
        self._tick()
        digests = self.comm.allgather_object(state_digest(self.parts.model.state_dict()))
        if len(set(digests)) != 1:
            log.error("ranks ended with different weights: %s", digests)
        best = next((v for v in s.validations if v["global_step"] == s.best.step), {})
        last = s.history[-1] if s.history else {}
        summary = {
            "model": cfg.model,
            "val_auc": best.get("auc"),
            "val_logloss": best.get("logloss"),
            "val_calibration": best.get("calibration"),  # before the bundle's logit shift
            "logit_shift": best.get("logit_shift"),
            "best_epoch": s.best.epoch,
            "epochs_run": len(s.history),
            "global_step": s.global_step,
            "stopped_early": s.best.stopped,
            "samples_per_s": last.get("samples_per_s"),
            "world_size": self.comm.size,
            "loader": cfg.loader,
            "bundle": self.artifacts.bundle,
            "metrics": self.artifacts.metrics,
            "output": cfg.output,
            "wall_time_s": round(s.wall_seconds, 1),
            "mlflow_run_id": s.mlflow_run_id,
            "tracking_uri": store_uri(cfg.tracking, cfg.output) if cfg.tracking.enabled else None,
        }
        self.artifacts.write_metrics(self._metrics(summary, digests))
        self.artifacts.write_summary(summary)
        for artifact in (self.artifacts.bundle, self.artifacts.metrics):
            self.tracker.log_artifact(artifact)
        self.tracker.finish()
        return summary

    def _tick(self) -> None:
        now = time.perf_counter()
        self.state.wall_seconds += now - self._clock
        self._clock = now

    def _metrics(self, summary: dict[str, Any] | None = None, digests: list[str] | None = None) -> dict[str, Any]:
        s, cfg = self.state, self.cfg
        return {
            "model": cfg.model,
            "loader": cfg.loader,
            "world_size": self.comm.size,
            "batch_size_per_rank": cfg.batch_size,
            "learning_rate": self.parts.lr,
            "steps_per_epoch": self.steps,
            "epochs": s.history,
            "validations": s.validations,
            "resumed_at_steps": s.resumed_at_steps,
            "wall_time_s": round(s.wall_seconds, 1),
            "weight_digests": digests,
            "summary": summary,
        }


@contextmanager
def _shifted(model: CTRModel, shift: float) -> Iterator[None]:
    """``model`` with ``shift`` added to its logits (``CTRModel.logit_shift``), put back after."""
    before = model.logit_shift.clone()
    model.logit_shift += shift
    try:
        yield
    finally:
        model.logit_shift.copy_(before)


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    """What makes a checkpoint another run's, in words."""
    changed = [key for key in new if old.get(key) != new[key]]
    return "checkpoint of another " + ", ".join(changed) if changed else "checkpoint of another run"


def _flat_params(cfg: TrainConfig) -> dict[str, Any]:
    return {k: v for k, v in cfg.to_dict().items() if k != "tracking"}


def _warm_start_init(cfg: TrainConfig, spec: FeatureSpec, comm: Collectives) -> tuple[ModelConfig, Init]:
    """The bundle's model config (read on rank 0, shared), and the rank-0 ``init`` copying its weights."""
    bundle = load_bundle(cfg.warm_start) if comm.is_primary and cfg.warm_start else None
    name, config = comm.broadcast_object((bundle.name, bundle.config) if bundle else None, name="warm_start")
    if name != cfg.model:
        raise ValueError(f"--warm-start {cfg.warm_start} holds a {name}, not a {cfg.model}")

    def init(model: CTRModel) -> None:
        assert bundle is not None  # init runs on rank 0, which loaded the bundle
        counts = warm_start(model, spec, bundle.model, bundle.spec)
        log.info(
            "warm start from %s (spec %s -> %s): %d embedding rows kept, %d new",
            cfg.warm_start,
            bundle.spec.version,
            spec.version,
            counts["kept_rows"],
            counts["new_rows"],
        )

    return config, init


def _fnn_pretraining(cfg: TrainConfig, spec: FeatureSpec, comm: Collectives) -> Init:
    """Stage one of FNN: train an FM (its own resumable run in ``<output>/fnn_pretrain_fm``)."""
    stage = dataclasses.replace(
        cfg, model="fm", epochs=cfg.fnn_pretrain_epochs, output=fs.join(cfg.output, "fnn_pretrain_fm")
    )
    log.info("FNN stage 1: training an FM for %d epoch(s) in %s", stage.epochs, stage.output)
    fit(stage, spec, build_parts(stage, spec, stage.model_config, comm))

    def init(model: CTRModel) -> None:
        bundle = fs.join(stage.output, BUNDLE)
        pretrain_init(model, load_bundle(bundle).model)
        log.info("FNN stage 2: embeddings initialised from %s", bundle)

    return init
