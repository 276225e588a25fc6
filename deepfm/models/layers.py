"""Small typed building blocks every CTR model in the zoo is assembled from.

Notation (shapes in docstrings): ``B`` batch, ``C`` categorical fields, ``N`` numeric fields,
``m = C + N`` fields, ``k`` embedding dimension.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
PRODUCT_KINDS = ("inner", "outer", "both")


class FieldEmbedding(nn.Module):
    """Maps every field to a ``dim``-vector: one table lookup for all categorical fields.

    Categorical field ``i`` owns rows ``[offset_i, offset_i + cardinality_i)`` of one shared
    ``nn.Embedding(sparse=True)`` table, so a batch is a single gather with no Python loop over
    fields, and its gradient touches only the rows seen (see ``make_optimizers``). A numeric
    field's vector is its value times a learned per-field vector (the paper's "value itself"),
    held as a small dense ``[N, dim]`` parameter.
    """

    offsets: torch.Tensor  # [C] first row of each categorical field in the shared table

    def __init__(self, cardinalities: list[int], n_numeric: int, dim: int, init_std: float) -> None:
        super().__init__()
        if not cardinalities and n_numeric == 0:
            raise ValueError("a model needs at least one field")
        offsets = torch.tensor([0, *cardinalities[:-1]], dtype=torch.long).cumsum(0)
        self.register_buffer("offsets", offsets[: len(cardinalities)], persistent=False)
        # One spare row when there are no categorical fields: nn.Embedding needs at least one.
        self.categorical = nn.Embedding(max(sum(cardinalities), 1), dim, sparse=True)
        self.numeric = nn.Parameter(torch.empty(n_numeric, dim))
        nn.init.normal_(self.categorical.weight, std=init_std)
        nn.init.normal_(self.numeric, std=init_std)

    @property
    def num_fields(self) -> int:
        return self.offsets.numel() + self.numeric.shape[0]

    @property
    def dim(self) -> int:
        return self.numeric.shape[1]

    def forward(self, cat: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        """``cat [B, C]`` long, ``num [B, N]`` float -> ``[B, m, dim]`` (categorical fields first)."""
        categorical = self.categorical(cat + self.offsets)
        numeric = num.unsqueeze(-1) * self.numeric
        return torch.cat((categorical, numeric), dim=1)


class FirstOrderEmbedding(nn.Module):
    """Each feature's first-order weight ``w_i`` and latent vector ``v_i``, stored as one row ``[w_i, v_i]``.

    One lookup, one sparse gradient and one optimizer update serve both the linear term
    ``b + sum_i w_i x_i`` and the latent vectors. Storage is shared, parameters are not: each
    column is its own weight, and SparseAdam's per-element state updates a row's ``w`` and ``v``
    exactly when separate tables would (whenever the feature occurs). ``latent_dim=0`` is LR.
    """

    def __init__(self, cardinalities: list[int], n_numeric: int, latent_dim: int, init_std: float) -> None:
        super().__init__()
        self.rows = FieldEmbedding(cardinalities, n_numeric, 1 + latent_dim, init_std)
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, cat: torch.Tensor, num: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``cat [B, C]``, ``num [B, N]`` -> (first-order term ``[B]``, latent vectors ``[B, m, latent_dim]``)."""
        rows = self.rows(cat, num)
        return rows[..., 0].sum(dim=1) + self.bias, rows[..., 1:]


class FMInteraction(nn.Module):
    """FM second-order term ``sum_{i<j} <e_i, e_j>`` in O(m k) by the sum-square identity.

    ``sum_{i<j} <e_i, e_j> = 1/2 * sum_k [(sum_i e_ik)^2 - sum_i e_ik^2]`` (Rendle 2010, eq. 5).
    """

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``[B, m, k]`` -> ``[B]``."""
        square_of_sum = embeddings.sum(dim=1).square()
        sum_of_squares = embeddings.square().sum(dim=1)
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
