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
``pretrain_init(fnn, fm)`` copies its latent vectors into the FNN before the FNN is trained.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from deepfm.config import deep_update, load_conf
from deepfm.features import FeatureSpec
from deepfm.models.layers import DNN, FieldEmbedding, FirstOrderEmbedding, FMInteraction, ProductNetwork

CONF_NAME = "models"


class CTRModel(nn.Module):
    """``forward(cat [B, C] long, num [B, N] float) -> logits [B]`` (pre-sigmoid).

    Parts, each optional:
      ``wide``            rows ``[w_i, v_i]``: the first-order term and the latent vectors ``v``,
      ``fm``              the pairwise term over ``v``,
      ``deep``            an MLP/PNN over ``deep_embedding``'s vectors, or over ``v`` when
                          ``deep_embedding`` is None (the shared embedding of DeepFM).
    ``name`` and ``config`` (the fully resolved model config) are what ``build_model`` needs
    to rebuild the same architecture, e.g. from a bundle.
    """

    def __init__(
        self,
        name: str,
        config: dict[str, Any],
        cardinalities: list[int],
        n_numeric: int,
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
        self.wide = wide
        self.fm = fm
        self.deep = deep
        self.deep_embedding = deep_embedding

    def forward(self, cat: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        """``cat [B, C]``, ``num [B, N]`` -> ``[B]`` logits."""
        terms: list[torch.Tensor] = []
        latent = None
        if self.wide is not None:
            first_order, latent = self.wide(cat, num)
            terms.append(first_order)
        if self.fm is not None:
            terms.append(self.fm(latent))
        if self.deep is not None:
            deep_input = self.deep_embedding(cat, num) if self.deep_embedding is not None else latent
            terms.append(self.deep(deep_input))
        return sum(terms[1:], terms[0])


Builder = Callable[[str, dict[str, Any], list[int], int], CTRModel]
DeepFactory = Callable[[dict[str, Any], int], nn.Module]


def _wide(cfg: dict[str, Any], cardinalities: list[int], n_numeric: int, latent: bool) -> FirstOrderEmbedding:
    latent_dim = cfg["embedding_dim"] if latent else 0
    return FirstOrderEmbedding(cardinalities, n_numeric, latent_dim, cfg["embedding_init_std"])


def _embedding(cfg: dict[str, Any], cardinalities: list[int], n_numeric: int) -> FieldEmbedding:
    return FieldEmbedding(cardinalities, n_numeric, cfg["embedding_dim"], cfg["embedding_init_std"])


def _dnn(cfg: dict[str, Any], num_fields: int) -> DNN:
    return DNN(num_fields, cfg["embedding_dim"], cfg["hidden_units"], cfg["dropout"], cfg["activation"])


def _pnn(cfg: dict[str, Any], num_fields: int) -> ProductNetwork:
    return ProductNetwork(
        num_fields, cfg["embedding_dim"], cfg["product"], cfg["hidden_units"], cfg["dropout"], cfg["activation"]
    )


def _build_lr(name: str, cfg: dict[str, Any], cards: list[int], n_num: int) -> CTRModel:
    return CTRModel(name, cfg, cards, n_num, wide=_wide(cfg, cards, n_num, latent=False))


def _build_fm(name: str, cfg: dict[str, Any], cards: list[int], n_num: int) -> CTRModel:
    return CTRModel(name, cfg, cards, n_num, wide=_wide(cfg, cards, n_num, latent=True), fm=FMInteraction())


def _build_deep_only(deep: DeepFactory) -> Builder:
    """FNN and the PNNs: a deep part over their own embedding, nothing else."""

    def build(name: str, cfg: dict[str, Any], cards: list[int], n_num: int) -> CTRModel:
        embedding = _embedding(cfg, cards, n_num)
        return CTRModel(name, cfg, cards, n_num, deep=deep(cfg, embedding.num_fields), deep_embedding=embedding)

    return build


def _build_wide_deep(*, fm: bool, shared: bool, deep: DeepFactory) -> Builder:
    """LR&DNN, FM&DNN, DeepFM, DeepFM-P: a wide part (LR or FM) plus a deep part, summed.

    ``shared``: the deep part reads the wide part's latent vectors (DeepFM); otherwise it has its
    own embedding (FM&DNN). LR&DNN's LR has no latent vectors: its deep part reads the ``v``
    columns stored next to the LR weights, which are parameters of the deep part alone.
    """

    def build(name: str, cfg: dict[str, Any], cards: list[int], n_num: int) -> CTRModel:
        return CTRModel(
            name, cfg, cards, n_num,
            wide=_wide(cfg, cards, n_num, latent=True),
            fm=FMInteraction() if fm else None,
            deep=deep(cfg, len(cards) + n_num),
            deep_embedding=None if shared else _embedding(cfg, cards, n_num),
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


def resolve_model_config(name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """``conf/models.yaml`` ``defaults``, then its ``<name>`` section, then ``overrides``.

    Unknown keys in ``overrides`` are rejected so a typo cannot silently fall back to a default.
    """
    if name not in MODEL_BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose from {model_names()}")
    conf = load_conf(CONF_NAME)
    resolved = deep_update(conf["defaults"], conf.get(name) or {})
    unknown = sorted(set(overrides or {}) - set(resolved))
    if unknown:
        raise ValueError(f"unknown config keys for model {name!r}: {unknown}; known: {sorted(resolved)}")
    return deep_update(resolved, overrides or {})


def build_model(
    name: str, cardinalities: list[int], n_numeric: int, config: dict[str, Any] | None = None
) -> CTRModel:
    """Build registry model ``name`` for ``cardinalities`` (per categorical field) and ``n_numeric``.

    ``config`` overrides keys of the resolved ``conf/models.yaml`` config (e.g.
    ``{"embedding_dim": 16}``); ``model.config`` holds the full resolved result.
    """
    cfg = resolve_model_config(name, config)
    if any(c < 1 for c in cardinalities):
        raise ValueError(f"cardinalities must be >= 1, got {cardinalities}")
    return MODEL_BUILDERS[name](name, cfg, list(cardinalities), n_numeric)


def build_model_for_spec(name: str, spec: FeatureSpec, config: dict[str, Any] | None = None) -> CTRModel:
    """``build_model`` for the field layout of ``spec``."""
    return build_model(name, spec.cardinalities, len(spec.numeric_fields), config)


@torch.no_grad()
def pretrain_init(fnn: CTRModel, fm: CTRModel) -> CTRModel:
    """Stage two of FNN: copy a trained FM's latent vectors ``v_i`` into ``fnn``'s embedding.

    Usage: train ``build_model("fm", ...)``; build the ``fnn`` for the same spec and
    ``embedding_dim``; call ``pretrain_init(fnn, fm)``; then train the FNN end to end.
    Returns ``fnn``.
    """
    if fnn.name != "fnn" or fm.name != "fm":
        raise ValueError(f"pretrain_init needs an fnn and an fm, got {fnn.name!r} and {fm.name!r}")
    source, target = fm.wide.rows, fnn.deep_embedding
    pairs = [(source.categorical.weight, target.categorical.weight), (source.numeric, target.numeric)]
    for fm_rows, fnn_vectors in pairs:
        if fm_rows[:, 1:].shape != fnn_vectors.shape:
            raise ValueError(
                f"FM latent vectors {tuple(fm_rows[:, 1:].shape)} do not fit FNN embedding "
                f"{tuple(fnn_vectors.shape)}: build both for the same spec and embedding_dim"
            )
    for fm_rows, fnn_vectors in pairs:
        fnn_vectors.copy_(fm_rows[:, 1:])
    return fnn
