"""Training throughput of the library's DeepFM against the CPU's limit and DeepCTR-Torch.

Criteo-shaped input: 26 categorical fields of 100,000 rows each, 13 numeric fields, batch 4096,
the paper's network (embedding 10, MLP 400-400-400, dropout 0.5). Three training steps on the
same tensors:

  library   build_model("deepfm") + make_optimizers (SparseAdam on the table, Adam on the rest)
  bare      the same network written inline as one fused step: one lookup into a table whose
            rows hold [w_i, v_i], the FM sum-square term, the MLP; same optimizers
  deepctr   DeepCTR-Torch's DeepFM with its own training step (loss, dense Adam over all
            parameters, as ``BaseModel.fit`` does); L2 terms off so the loss is the same

Run: ``.venv/bin/python benchmarks/bench_models.py``. DeepCTR-Torch is a benchmark-only extra
that is not installed in the project venv (it needs ``tqdm``/``requests``); to include it, make
a throw-away venv layered on the project's, so torch/numpy stay the pinned ones:

    python3.11 -m venv /tmp/deepctr-venv
    echo "import site; site.addsitedir('$PWD/.venv/lib/python3.11/site-packages')" \
        > /tmp/deepctr-venv/lib/python3.11/site-packages/main.pth
    /tmp/deepctr-venv/bin/pip install --no-deps deepctr-torch tqdm requests urllib3 idna charset-normalizer certifi
    /tmp/deepctr-venv/bin/python benchmarks/bench_models.py
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from deepfm.cli.config import load_defaults
from deepfm.models import ModelDefaults, build_model, make_optimizers

N_CATEGORICAL, ROWS_PER_FIELD, N_NUMERIC = 26, 100_000, 13
EMBEDDING_DIM, HIDDEN, DROPOUT, LR = 10, (400, 400, 400), 0.5, 1e-3

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]


def make_batches(batch_size: int, count: int, seed: int = 0) -> list[Batch]:
    """``count`` random (cat [B, 26] long, num [B, 13] float, label [B] float) batches."""
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randint(0, ROWS_PER_FIELD, (batch_size, N_CATEGORICAL), generator=g),
            torch.rand(batch_size, N_NUMERIC, generator=g).mul(5).log1p(),
            torch.randint(0, 2, (batch_size,), generator=g).float(),
        )
        for _ in range(count)
    ]


def library_step() -> Step:
    config = ModelDefaults(load_defaults("models")).resolve("deepfm")
    model = build_model("deepfm", [ROWS_PER_FIELD] * N_CATEGORICAL, N_NUMERIC, config)
    optimizers = make_optimizers(model, lr=LR)
    model.train()

    def step(cat: torch.Tensor, num: torch.Tensor, label: torch.Tensor) -> None:
        optimizers.zero_grad()
        F.binary_cross_entropy_with_logits(model(cat, num), label).backward()
        optimizers.step()

    return step


class BareDeepFM(nn.Module):
    """DeepFM as one fused block: a single lookup returns each field's [w_i, v_i] row."""

    def __init__(self) -> None:
        super().__init__()
        width = 1 + EMBEDDING_DIM
        self.table = nn.Embedding(N_CATEGORICAL * ROWS_PER_FIELD, width, sparse=True)
        self.numeric = nn.Parameter(torch.randn(N_NUMERIC, width) * 0.01)
        self.bias = nn.Parameter(torch.zeros(()))
        nn.init.normal_(self.table.weight, std=0.01)
        self.register_buffer("offsets", torch.arange(N_CATEGORICAL) * ROWS_PER_FIELD)
        layers: list[nn.Module] = []
        fan_in = (N_CATEGORICAL + N_NUMERIC) * EMBEDDING_DIM
        for width_out in HIDDEN:
            layers += [nn.Linear(fan_in, width_out), nn.ReLU(), nn.Dropout(DROPOUT)]
            fan_in = width_out
        self.mlp = nn.Sequential(*layers, nn.Linear(fan_in, 1))

    def forward(self, cat: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        rows = torch.cat((self.table(cat + self.offsets), num.unsqueeze(-1) * self.numeric), dim=1)
        first_order, vectors = rows[..., 0], rows[..., 1:]
        pairs = 0.5 * (vectors.sum(1).square() - vectors.square().sum(1)).sum(1)
        return self.bias + first_order.sum(1) + pairs + self.mlp(vectors.flatten(1)).squeeze(-1)


def bare_step() -> Step:
    model = BareDeepFM().train()
    sparse_adam = torch.optim.SparseAdam([model.table.weight], lr=LR)
    adam = torch.optim.Adam([p for n, p in model.named_parameters() if n != "table.weight"], lr=LR)

    def step(cat: torch.Tensor, num: torch.Tensor, label: torch.Tensor) -> None:
        sparse_adam.zero_grad()
        adam.zero_grad()
        F.binary_cross_entropy_with_logits(model(cat, num), label).backward()
        sparse_adam.step()
        adam.step()

    return step


def deepctr_step() -> Step:
    """DeepCTR-Torch's DeepFM; raises ImportError when the extra is not installed."""
    from deepctr_torch.inputs import DenseFeat, SparseFeat
    from deepctr_torch.models import DeepFM

    columns = [SparseFeat(f"C{i}", ROWS_PER_FIELD, embedding_dim=EMBEDDING_DIM) for i in range(N_CATEGORICAL)]
    columns += [DenseFeat(f"I{i}", 1) for i in range(N_NUMERIC)]
    model = DeepFM(
        columns,
        columns,
        dnn_hidden_units=HIDDEN,
        dnn_dropout=DROPOUT,
        l2_reg_linear=0.0,
        l2_reg_embedding=0.0,
        device="cpu",
    ).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)

    def step(cat: torch.Tensor, num: torch.Tensor, label: torch.Tensor) -> None:
        x = torch.cat((cat.float(), num), dim=1)  # DeepCTR's input: one float matrix, columns in feature order
        optimizer.zero_grad()
        loss = F.binary_cross_entropy(model(x).squeeze(-1), label) + model.get_regularization_loss()
        loss.backward()
        optimizer.step()

    return step


def time_interleaved(steps: dict[str, Step], batches: list[Batch], warmup: int) -> dict[str, list[float]]:
    """Seconds per step for each contender, taking turns on every batch.

    The machine is shared, so the contenders alternate step by step: a burst of foreign load
    slows all of them alike instead of one, and the median step time shrugs off the bursts.
    The order rotates every batch so that no contender always runs after the same one.
    """
    names = list(steps)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for index, batch in enumerate(batches):
        for name in names[index % len(names) :] + names[: index % len(names)]:
            start = time.perf_counter()
            steps[name](*batch)
            if index >= warmup:
                seconds[name].append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batches = make_batches(args.batch_size, args.warmup + args.steps)
    print(
        f"torch {torch.__version__}, {args.threads} threads, batch {args.batch_size}, "
        f"{args.steps} timed steps after {args.warmup} warm-up, contenders interleaved"
    )

    steps: dict[str, Step] = {}
    for name, builder in {"bare": bare_step, "library": library_step, "deepctr": deepctr_step}.items():
        try:
            steps[name] = builder()
        except ImportError as exc:
            print(f"{name:>8}: skipped ({exc.name or exc} not installed; see this file's docstring)")

    throughput: dict[str, float] = {}
    for name, seconds in time_interleaved(steps, batches, args.warmup).items():
        throughput[name] = args.batch_size / statistics.median(seconds)
        mean_rate = args.batch_size * len(seconds) / sum(seconds)
        print(f"{name:>8}: {throughput[name]:8,.0f} samples/s (median step), {mean_rate:8,.0f} (mean)")

    if "bare" in throughput and "library" in throughput:
        print(f"library / bare    = {throughput['library'] / throughput['bare']:.3f} (target >= 0.90)")
    if "deepctr" in throughput and "library" in throughput:
        print(f"library / deepctr = {throughput['library'] / throughput['deepctr']:.3f}")


if __name__ == "__main__":
    main()
