"""Small typed building blocks every CTR model in the zoo is assembled from.

Notation (shapes in docstrings): ``B`` batch, ``C`` categorical fields, ``N`` numeric fields,
``m = C + N`` fields, ``S`` categorical input columns (``C`` plus the extra slots of multi-valued
fields), ``k`` embedding dimension.

Features and fields (Rendle's FM over features with values ``x_i``): a single-valued categorical
field is one feature with ``x = 1``, a numeric field one feature with its value, and a
multi-valued field with ``n`` items in a row is ``n`` features with ``x_i = 1/n``. A field's vector
is ``e_f = sum_{i in f} x_i v_i`` (a multi-valued field's: the mean of its items' vectors).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
PRODUCT_KINDS = ("inner", "outer", "both")


class Pooled(NamedTuple):
    """Every field's vector and, for the FM, the sum of its features' squared terms."""

    vectors: torch.Tensor  # [B, m, dim] e_f = sum_{i in f} x_i v_i
    squares: torch.Tensor | None  # [B, m, dim] sum_{i in f} (x_i v_i)^2; None: one feature per field (= e_f^2)


class Run(NamedTuple):
    """Columns ``[start, stop)`` of ``cat``: single-valued fields' (one column each), or the slots
    of one multi-valued field (``pooled``)."""

    start: int
    stop: int
    pooled: bool

    def by_field(self, terms: torch.Tensor) -> torch.Tensor:
        """The run's ``[B, stop - start, dim]`` per column -> ``[B, its fields, dim]`` per field."""
        return terms.sum(dim=1, keepdim=True) if self.pooled else terms


def column_runs(items_per_field: list[int]) -> list[Run]:
    """The ``cat`` columns cut into runs of single-valued fields and multi-valued fields' slots;
    empty when every field is single-valued (nothing to pool)."""
    runs: list[Run] = []
    start = 0
    for n in items_per_field:
        if n == 1 and runs and not runs[-1].pooled:
            runs[-1] = Run(runs[-1].start, start + 1, False)
        else:
            runs.append(Run(start, start + n, n > 1))
        start += n
    return runs if any(run.pooled for run in runs) else []


class FieldEmbedding(nn.Module):
    """Maps every field to a ``dim``-vector: one table lookup for all categorical columns.

    Categorical field ``i`` owns rows ``[offset_i, offset_i + cardinality_i)`` of one shared
    ``nn.Embedding(sparse=True)`` table, so a batch is a single gather with no Python loop over
    fields, and its gradient touches only the rows seen (see ``make_optimizers``). A numeric
    field's vector is its value times a learned per-field vector (the paper's "value itself"),
    held as a small dense ``[N, dim]`` parameter.

    A multi-valued field (``items_per_field[i] = n > 1``) spans ``n`` columns of ``cat``: its items'
    indexes, then ``features.PADDING`` (-1) in the unused slots. All slots are looked up in the
    one gather; the field's vector is the sum of its items' rows with ``x_i = 1/(items in the row)``
    (their mean), a padding slot reading its field's row 0 with weight 0 (a zero gradient, which
    SparseAdam still counts as a touch of that row). A field's slots are summed in a fixed order
    (no atomic ``index_add``), so a GPU forward stays bit-reproducible.
    """

    offsets: torch.Tensor  # [S] first row, in the shared table, of each column's field

    def __init__(
        self,
        cardinalities: list[int],
        n_numeric: int,
        dim: int,
        init_std: float,
        items_per_field: list[int] | None = None,
    ) -> None:
        super().__init__()
        if not cardinalities and n_numeric == 0:
            raise ValueError("a model needs at least one field")
        items = list(items_per_field) if items_per_field is not None else [1] * len(cardinalities)
        if len(items) != len(cardinalities) or any(n < 1 for n in items):
            raise ValueError(f"items_per_field {items} does not fit {len(cardinalities)} categorical fields")
        offsets = torch.tensor([0, *cardinalities[:-1]], dtype=torch.long).cumsum(0)[: len(cardinalities)]
        columns = torch.tensor(items, dtype=torch.long)
        self.register_buffer("offsets", offsets.repeat_interleave(columns), persistent=False)
        self.items_per_field = items
        self.runs = column_runs(items)
        # One spare row when there are no categorical fields: nn.Embedding needs at least one.
        self.categorical = nn.Embedding(max(sum(cardinalities), 1), dim, sparse=True)
        self.numeric = nn.Parameter(torch.empty(n_numeric, dim))
        nn.init.normal_(self.categorical.weight, std=init_std)
        nn.init.normal_(self.numeric, std=init_std)

    @property
    def num_fields(self) -> int:
        return len(self.items_per_field) + self.numeric.shape[0]

    @property
    def dim(self) -> int:
        return self.numeric.shape[1]

    def forward(self, cat: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        """``cat [B, S]`` long, ``num [B, N]`` float -> ``[B, m, dim]`` field vectors (categorical first)."""
        return self.pool(cat, num, squares=False).vectors

    def pool(self, cat: torch.Tensor, num: torch.Tensor, squares: bool = True) -> Pooled:
        """``cat [B, S]`` long, ``num [B, N]`` float -> the fields' ``Pooled`` vectors (categorical
        first), with their squares when asked and some field is multi-valued."""
        numeric = num.unsqueeze(-1) * self.numeric  # [B, N, dim]
        if not self.runs:  # every field single-valued: one row each, nothing to pool
            return Pooled(torch.cat((self.categorical(cat + self.offsets), numeric), dim=1), None)
        rows = self.categorical(cat.clamp(min=0) + self.offsets)  # [B, S, dim]
        terms = [self._terms(cat, rows, run) for run in self.runs]
        vectors = torch.cat([run.by_field(t) for run, t in zip(self.runs, terms)] + [numeric], dim=1)
        if not squares:
            return Pooled(vectors, None)
        squared = [run.by_field(t.square()) for run, t in zip(self.runs, terms)]
        return Pooled(vectors, torch.cat([*squared, numeric.square()], dim=1))

    @staticmethod
    def _terms(cat: torch.Tensor, rows: torch.Tensor, run: Run) -> torch.Tensor:
        """Each column's ``x_i v_i`` in ``run``: ``[B, stop - start, dim]``."""
        block = rows[:, run.start : run.stop]
        if not run.pooled:
            return block
        present = (cat[:, run.start : run.stop] >= 0).to(rows.dtype)  # [B, n]
        # clamp: a row of padding only (never encoded) pools to zero rather than NaN
        x = present / present.sum(dim=1, keepdim=True).clamp(min=1)
        return block * x.unsqueeze(-1)


class FirstOrder(NamedTuple):
    """What ``CTRModel`` reads from the wide part."""

    term: torch.Tensor  # [B] b + sum_i w_i x_i
    latent: torch.Tensor  # [B, m, k] each field's sum_{i in f} x_i v_i
    squares: torch.Tensor | None  # [B, m, k] each field's sum_{i in f} (x_i v_i)^2; None: latent squared


class FirstOrderEmbedding(nn.Module):
    """Each feature's first-order weight ``w_i`` and latent vector ``v_i``, stored as one row ``[w_i, v_i]``.

    One lookup, one sparse gradient and one optimizer update serve both the linear term
    ``b + sum_i w_i x_i`` and the latent vectors. Storage is shared, parameters are not: each
    column is its own weight, and SparseAdam's per-element state updates a row's ``w`` and ``v``
    exactly when separate tables would (whenever the feature occurs). ``latent_dim=0`` is LR.
    A multi-valued field's first-order term is its pooled ``w`` column (``sum_i w_i / n``).
    """

    def __init__(
        self,
        cardinalities: list[int],
        n_numeric: int,
        latent_dim: int,
        init_std: float,
        items_per_field: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.rows = FieldEmbedding(cardinalities, n_numeric, 1 + latent_dim, init_std, items_per_field)
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, cat: torch.Tensor, num: torch.Tensor) -> FirstOrder:
        """``cat [B, S]``, ``num [B, N]`` -> (first-order term ``[B]``, latent vectors and their
        squares ``[B, m, latent_dim]``)."""
        rows = self.rows.pool(cat, num)
        squares = rows.squares[..., 1:] if rows.squares is not None else None
        return FirstOrder(rows.vectors[..., 0].sum(dim=1) + self.bias, rows.vectors[..., 1:], squares)


class FMInteraction(nn.Module):
    """FM second-order term ``sum_{i<j} x_i x_j <v_i, v_j>`` over features in O(m k), by the
    sum-square identity on the fields' vectors ``e_f = sum_{i in f} x_i v_i``:

        sum_{i<j} x_i x_j <v_i, v_j> = 1/2 * sum_k [(sum_f e_fk)^2 - sum_f sum_{i in f} (x_i v_ik)^2]

    (Rendle 2010, eq. 5), pairs of items inside a multi-valued field included. With one feature
    per field the squares are ``e_f^2``: ``sum_{i<j} <e_i, e_j>``.
    """

    def forward(self, embeddings: torch.Tensor, squares: torch.Tensor | None = None) -> torch.Tensor:
        """``embeddings [B, m, k]``, ``squares [B, m, k]`` (each field's ``sum (x_i v_i)^2``;
        default ``embeddings^2``) -> ``[B]``."""
        square_of_sum = embeddings.sum(dim=1).square()
        sum_of_squares = (embeddings.square() if squares is None else squares).sum(dim=1)
        return 0.5 * (square_of_sum - sum_of_squares).sum(dim=1)


class BatchNorm(nn.BatchNorm1d):
    """``BatchNorm1d`` that normalises a one-row training batch (a shard's last batch can be one
    row) with its running statistics, where ``BatchNorm1d`` raises."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, width]`` -> ``[B, width]``."""
        if self.training and features.shape[0] == 1:
            return F.batch_norm(
                features, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        return super().forward(features)


class MLP(nn.Module):
    """``Linear -> [BatchNorm] -> activation -> dropout`` per hidden layer, then a linear read-out
    to one logit. Batch normalisation (Ioffe & Szegedy 2015) sits before the activation, as in
    DeepCTR and FuxiCTR; its linear layer then needs no bias."""

    def __init__(
        self, in_features: int, hidden_units: list[int], dropout: float, activation: str, batch_norm: bool = False
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {sorted(ACTIVATIONS)}")
        layers: list[nn.Module] = []
        for width in hidden_units:
            layers.append(nn.Linear(in_features, width, bias=not batch_norm))
            if batch_norm:
                layers.append(BatchNorm(width))
            layers += [ACTIVATIONS[activation](), nn.Dropout(dropout)]
            in_features = width
        layers.append(nn.Linear(in_features, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[B, in_features]`` -> ``[B]``."""
        return self.layers(features).squeeze(-1)


class InnerProducts(nn.Module):
    """IPNN's product signals: ``<e_i, e_j>`` for every field pair ``i < j``."""

    pair_index: torch.Tensor  # [m(m-1)/2] flat positions of the pairs i < j in an m x m matrix

    def __init__(self, num_fields: int) -> None:
        super().__init__()
        rows, cols = torch.triu_indices(num_fields, num_fields, offset=1)
        self.register_buffer("pair_index", rows * num_fields + cols, persistent=False)

    def output_features(self, num_fields: int, dim: int) -> int:
        return self.pair_index.numel()

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``[B, m, k]`` -> ``[B, m(m-1)/2]`` (one batched matmul, then the upper triangle)."""
        gram = torch.bmm(embeddings, embeddings.transpose(1, 2))
        return gram.flatten(1).index_select(1, self.pair_index)


class OuterProducts(nn.Module):
    """OPNN's product signals with sum pooling: ``f f^T`` with ``f = sum_i e_i`` (PNN paper, eq. 14)."""

    def output_features(self, num_fields: int, dim: int) -> int:
        return dim * dim

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``[B, m, k]`` -> ``[B, k*k]``."""
        pooled = embeddings.sum(dim=1)
        return (pooled.unsqueeze(2) * pooled.unsqueeze(1)).flatten(1)


class DNN(nn.Module):
    """The deep component over concatenated field embeddings (FNN, Wide&Deep, DeepFM)."""

    def __init__(
        self,
        num_fields: int,
        dim: int,
        hidden_units: list[int],
        dropout: float,
        activation: str,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.mlp = MLP(num_fields * dim, hidden_units, dropout, activation, batch_norm)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``[B, m, k]`` -> ``[B]``."""
        return self.mlp(embeddings.flatten(1))


class ProductNetwork(nn.Module):
    """PNN (Qu et al. 2016): an MLP over ``[z, p]``, the embeddings and their products.

    The first hidden layer ``W_z z + W_p p + b`` of the paper is one ``Linear`` over the
    concatenation. ``product`` is ``inner`` (IPNN), ``outer`` (OPNN) or ``both`` (PNN*).
    """

    def __init__(
        self,
        num_fields: int,
        dim: int,
        product: str,
        hidden_units: list[int],
        dropout: float,
        activation: str,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if product not in PRODUCT_KINDS:
            raise ValueError(f"unknown product {product!r}; choose from {PRODUCT_KINDS}")
        products: list[InnerProducts | OuterProducts] = []
        if product in ("inner", "both"):
            products.append(InnerProducts(num_fields))
        if product in ("outer", "both"):
            products.append(OuterProducts())
        self.products = nn.ModuleList(products)
        in_features = num_fields * dim + sum(p.output_features(num_fields, dim) for p in products)
        self.mlp = MLP(in_features, hidden_units, dropout, activation, batch_norm)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``[B, m, k]`` -> ``[B]``."""
        signals = [embeddings.flatten(1)] + [product(embeddings) for product in self.products]
        return self.mlp(torch.cat(signals, dim=1))
