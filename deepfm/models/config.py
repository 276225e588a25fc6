"""Typed model settings: what ``build_model`` needs besides the feature layout.

A ``ModelConfig`` is complete and self-describing: a bundle stores it whole, so a model is rebuilt
from the bundle alone, whatever the defaults say by then. ``ModelDefaults`` holds the defaults
table (``deepfm/conf/models.yaml``: a ``defaults`` section, then one section per model) that the
command line reads and resolves a model's config from; nothing below the command line opens it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from deepfm.models.layers import ACTIVATIONS, PRODUCT_KINDS

# Keys added after bundles were first written, with the value that reproduces a bundle written
# before: such a bundle was trained without the feature. ``to_dict`` leaves a key out while it
# holds this value, so an older bundle's content hash (its version) stays what it was.
ADDED_KEYS: dict[str, Any] = {"batch_norm": False, "embedding_weight_decay": 0.0, "embedding_lr_scale": 1.0}


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and optimizer settings of one model (every model reads the keys it needs).

    Args:
        embedding_dim: latent dimension ``k`` of every field's vector.
        hidden_units: widths of the deep part's hidden layers.
        dropout: drop rate after each hidden layer.
        activation: ``relu`` | ``tanh`` | ``sigmoid``.
        product: PNN product layer, ``inner`` | ``outer`` | ``both``.
        embedding_init_std: standard deviation of the normal initialisation of embeddings.
        optimizer: ``adam`` (SparseAdam on the tables, Adam elsewhere).
        learning_rate: base step size before any scaling by the number of ranks.
        batch_norm: batch normalisation before each hidden layer's activation.
        embedding_weight_decay: decoupled weight decay (AdamW's, Loshchilov & Hutter 2019) of the
            embedding-table rows a batch touched: ``row -= lr * decay * row`` after each step.
            An L2 term in the loss barely acts under Adam, whose step is normalised per element.
        embedding_lr_scale: the embedding tables' step size as a multiple of ``learning_rate``
            (their SparseAdam only; the MLP, numeric vectors and biases keep ``learning_rate``).
    """

    embedding_dim: int
    hidden_units: tuple[int, ...]
    dropout: float
    activation: str
    product: str
    embedding_init_std: float
    optimizer: str
    learning_rate: float
    batch_norm: bool = False
    embedding_weight_decay: float = 0.0
    embedding_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose from {sorted(ACTIVATIONS)}")
        if self.product not in PRODUCT_KINDS:
            raise ValueError(f"unknown product {self.product!r}; choose from {PRODUCT_KINDS}")
        if self.optimizer != "adam":
            raise ValueError(f"only the paper's Adam is implemented, config asks for {self.optimizer!r}")
        if self.embedding_weight_decay < 0:
            raise ValueError(f"embedding_weight_decay must be >= 0, not {self.embedding_weight_decay}")
        if self.embedding_lr_scale <= 0:
            raise ValueError(f"embedding_lr_scale must be > 0, not {self.embedding_lr_scale}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelConfig:
        """A config from a complete mapping (a bundle's, or resolved defaults); unknown or missing
        keys are refused, so a typo never falls back to a default."""
        known = [f.name for f in dataclasses.fields(cls)]
        values = {**ADDED_KEYS, **values}
        unknown, missing = sorted(set(values) - set(known)), sorted(set(known) - set(values))
        if unknown or missing:
            raise ValueError(f"model config: unknown keys {unknown}, missing keys {missing}; known: {known}")
        return cls(
            embedding_dim=int(values["embedding_dim"]),
            hidden_units=tuple(int(u) for u in values["hidden_units"]),
            dropout=float(values["dropout"]),
            activation=str(values["activation"]),
            product=str(values["product"]),
            embedding_init_std=float(values["embedding_init_std"]),
            optimizer=str(values["optimizer"]),
            learning_rate=float(values["learning_rate"]),
            batch_norm=bool(values["batch_norm"]),
            embedding_weight_decay=float(values["embedding_weight_decay"]),
            embedding_lr_scale=float(values["embedding_lr_scale"]),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (``hidden_units`` as a list); added keys at their legacy value are left out."""
        values = {**dataclasses.asdict(self), "hidden_units": list(self.hidden_units)}
        return {k: v for k, v in values.items() if k not in ADDED_KEYS or v != ADDED_KEYS[k]}

    def replace(self, **overrides: Any) -> ModelConfig:
        """A copy with ``overrides`` applied (validated like ``from_dict``)."""
        return ModelConfig.from_dict({**self.to_dict(), **overrides})


@dataclass(frozen=True)
class ModelDefaults:
    """The defaults table: ``defaults``, then the model's own section, then the caller's overrides."""

    table: Mapping[str, Any]

    def resolve(self, name: str, overrides: Mapping[str, Any] | None = None) -> ModelConfig:
        if name not in self.table or name == "defaults":
            models = sorted(k for k in self.table if k != "defaults")
            raise ValueError(f"no defaults for model {name!r}; the table has {models}")
        base = {**self.table["defaults"], **(self.table[name] or {})}
        unknown = sorted(set(overrides or {}) - set(base))
        if unknown:
            raise ValueError(f"unknown config keys for model {name!r}: {unknown}; known: {sorted(base)}")
        return ModelConfig.from_dict({**base, **(overrides or {})})
