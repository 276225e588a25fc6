"""The model zoo of the DeepFM paper (Guo et al., IJCAI 2017), assembled from ``layers``.

Every model is one ``CTRModel``: a sum of optional terms over field embeddings,

    logit = first_order(x) + FM(v) + deep(e),

and the zoo differs only in which terms exist and whether the deep term reads the FM's
latent vectors (``e = v``, DeepFM) or its own embedding (FM&DNN, the paper's contrast).
First-order weights live in the same table rows as the latent vectors ``v`` (see
``FirstOrderEmbedding``): one lookup per batch serves both.

    name      first order  FM pairs  deep part          deep part's embedding
    lr        yes          -         -                  -
    fm        yes          yes       -                  -
    fnn       -            -         DNN                own, initialised from an FM
    ipnn      -            -         PNN inner          own
    opnn      -            -         PNN outer          own
    pnn       -            -         PNN inner+outer    own
    lr_dnn    yes          -         DNN                own (Wide&Deep with an LR wide part)
    fm_dnn    yes          yes       DNN                own, separate from the FM's
    deepfm    yes          yes       DNN                the FM's (shared)
    deepfm_p  yes          yes       PNN (``product``)  the FM's (shared)

FNN is trained in two stages: train an ``fm`` on the same spec, then
``deepfm.models.surgery.pretrain_init(fnn, fm)`` copies its latent vectors into the FNN before
the FNN is trained.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from deepfm.core.features import FeatureSpec
from deepfm.models.config import ModelConfig
from deepfm.models.layers import DNN, FieldEmbedding, FirstOrderEmbedding, FMInteraction, ProductNetwork


class CTRModel(nn.Module):
    """``forward(cat [B, S] long, num [B, N] float) -> logits [B]`` (pre-sigmoid).

    Parts, each optional:
      ``wide``            rows ``[w_i, v_i]``: the first-order term and the latent vectors ``v``,
      ``fm``              the pairwise term over ``v``,
      ``deep``            an MLP/PNN over ``deep_embedding``'s vectors, or over ``v`` when
                          ``deep_embedding`` is None (the shared embedding of DeepFM).
    ``name``, ``config`` and the layout (``cardinalities``, ``n_numeric``, ``items_per_field``)
    are what ``build_model`` needs to rebuild the same architecture, e.g. from a bundle.

    ``logit_shift [1]`` (a buffer) is added to every logit: 0 from ``build_model``; a bundle's
    holds the calibration fitted on the validation day that selected it
    (``deepfm.core.metrics.calibrating_shift``), so whatever scores the bundle is calibrated.
    """

    logit_shift: torch.Tensor

    def __init__(
        self,
        name: str,
        config: ModelConfig,
        cardinalities: list[int],
        n_numeric: int,
        items_per_field: list[int],
        *,
        wide: FirstOrderEmbedding | None = None,
        fm: FMInteraction | None = None,
        deep: nn.Module | None = None,
        deep_embedding: FieldEmbedding | None = None,
    ) -> None:
        super().__init__()
        if (fm is not None or (deep is not None and deep_embedding is None)) and wide is None:
            raise ValueError("the FM term and a shared deep part read the wide part's latent vectors")
        self.name = name
        self.config = config
        self.cardinalities = list(cardinalities)
        self.n_numeric = n_numeric
        self.items_per_field = list(items_per_field)
        self.wide = wide
        self.fm = fm
        self.deep = deep
        self.deep_embedding = deep_embedding
        self.register_buffer("logit_shift", torch.zeros(1))

    def forward(self, cat: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        """``cat [B, S]``, ``num [B, N]`` -> ``[B]`` logits."""
        terms: list[torch.Tensor] = []
        latent = squares = None
        if self.wide is not None:
            wide = self.wide(cat, num)
            terms.append(wide.term)
            latent, squares = wide.latent, wide.squares
        if self.fm is not None:
            terms.append(self.fm(latent, squares))
        if self.deep is not None:
            deep_input = self.deep_embedding(cat, num) if self.deep_embedding is not None else latent
            terms.append(self.deep(deep_input))
        return sum(terms[1:], terms[0]) + self.logit_shift


Builder = Callable[[str, ModelConfig, list[int], int, list[int]], CTRModel]
DeepFactory = Callable[[ModelConfig, int], nn.Module]


def _wide(cfg: ModelConfig, cards: list[int], n_num: int, items: list[int], latent: bool) -> FirstOrderEmbedding:
    latent_dim = cfg.embedding_dim if latent else 0
    return FirstOrderEmbedding(cards, n_num, latent_dim, cfg.embedding_init_std, items)


def _embedding(cfg: ModelConfig, cards: list[int], n_num: int, items: list[int]) -> FieldEmbedding:
    return FieldEmbedding(cards, n_num, cfg.embedding_dim, cfg.embedding_init_std, items)


def _dnn(cfg: ModelConfig, num_fields: int) -> DNN:
    return DNN(num_fields, cfg.embedding_dim, list(cfg.hidden_units), cfg.dropout, cfg.activation, cfg.batch_norm)


def _pnn(cfg: ModelConfig, num_fields: int) -> ProductNetwork:
    return ProductNetwork(
        num_fields,
        cfg.embedding_dim,
        cfg.product,
        list(cfg.hidden_units),
        cfg.dropout,
        cfg.activation,
        cfg.batch_norm,
    )


def _build_lr(name: str, cfg: ModelConfig, cards: list[int], n_num: int, items: list[int]) -> CTRModel:
    return CTRModel(name, cfg, cards, n_num, items, wide=_wide(cfg, cards, n_num, items, latent=False))


def _build_fm(name: str, cfg: ModelConfig, cards: list[int], n_num: int, items: list[int]) -> CTRModel:
    wide = _wide(cfg, cards, n_num, items, latent=True)
    return CTRModel(name, cfg, cards, n_num, items, wide=wide, fm=FMInteraction())


def _build_deep_only(deep: DeepFactory) -> Builder:
    """FNN and the PNNs: a deep part over their own embedding, nothing else."""

    def build(name: str, cfg: ModelConfig, cards: list[int], n_num: int, items: list[int]) -> CTRModel:
        embedding = _embedding(cfg, cards, n_num, items)
        return CTRModel(name, cfg, cards, n_num, items, deep=deep(cfg, embedding.num_fields), deep_embedding=embedding)

    return build


def _build_wide_deep(*, fm: bool, shared: bool, deep: DeepFactory) -> Builder:
    """LR&DNN, FM&DNN, DeepFM, DeepFM-P: a wide part (LR or FM) plus a deep part, summed.

    ``shared``: the deep part reads the wide part's latent vectors (DeepFM); otherwise it has its
    own embedding (FM&DNN). LR&DNN's LR has no latent vectors: its deep part reads the ``v``
    columns stored next to the LR weights, which are parameters of the deep part alone.
    """

    def build(name: str, cfg: ModelConfig, cards: list[int], n_num: int, items: list[int]) -> CTRModel:
        return CTRModel(
            name,
            cfg,
            cards,
            n_num,
            items,
            wide=_wide(cfg, cards, n_num, items, latent=True),
            fm=FMInteraction() if fm else None,
            deep=deep(cfg, len(cards) + n_num),
            deep_embedding=None if shared else _embedding(cfg, cards, n_num, items),
        )

    return build


MODEL_BUILDERS: dict[str, Builder] = {
    "lr": _build_lr,
    "fm": _build_fm,
    "fnn": _build_deep_only(_dnn),
    "ipnn": _build_deep_only(_pnn),
    "opnn": _build_deep_only(_pnn),
    "pnn": _build_deep_only(_pnn),
    "lr_dnn": _build_wide_deep(fm=False, shared=True, deep=_dnn),
    "fm_dnn": _build_wide_deep(fm=True, shared=False, deep=_dnn),
    "deepfm": _build_wide_deep(fm=True, shared=True, deep=_dnn),
    "deepfm_p": _build_wide_deep(fm=True, shared=True, deep=_pnn),
}


def model_names() -> list[str]:
    return list(MODEL_BUILDERS)


def build_model(
    name: str,
    cardinalities: list[int],
    n_numeric: int,
    config: ModelConfig,
    items_per_field: list[int] | None = None,
) -> CTRModel:
    """Build registry model ``name`` for ``cardinalities`` (rows per categorical field, index 0
    included), ``n_numeric`` numeric fields and ``items_per_field`` (``cat`` columns per
    categorical field, > 1 for a multi-valued one; default all 1); ``model.config`` is ``config``."""
    if name not in MODEL_BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose from {model_names()}")
    if any(c < 1 for c in cardinalities):
        raise ValueError(f"cardinalities must be >= 1, got {cardinalities}")
    items = list(items_per_field) if items_per_field is not None else [1] * len(cardinalities)
    return MODEL_BUILDERS[name](name, config, list(cardinalities), n_numeric, items)


def build_model_for_spec(name: str, spec: FeatureSpec, config: ModelConfig) -> CTRModel:
    """``build_model`` for the field layout of ``spec``."""
    return build_model(name, spec.cardinalities, len(spec.numeric_fields), config, spec.items_per_field)
