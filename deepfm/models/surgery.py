"""Copying trained weights into another model: FNN from its pre-trained FM, and warm starts
across feature specs (yesterday's model into today's, whose vocabularies moved)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from deepfm.core.features import FeatureSpec
from deepfm.models.layers import FieldEmbedding
from deepfm.models.zoo import CTRModel


@torch.no_grad()
def pretrain_init(fnn: CTRModel, fm: CTRModel) -> CTRModel:
    """Stage two of FNN: copy a trained FM's latent vectors ``v_i`` into ``fnn``'s embedding.

    Usage: train ``build_model("fm", ...)``; build the ``fnn`` for the same spec and
    ``embedding_dim``; call ``pretrain_init(fnn, fm)``; then train the FNN end to end.
    Returns ``fnn``.
    """
    if fnn.name != "fnn" or fm.name != "fm" or fm.wide is None or fnn.deep_embedding is None:
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


def embedding_row_map(spec: FeatureSpec, old_spec: FeatureSpec) -> np.ndarray:
    """For every row of the new categorical table (fields concatenated), its old row or -1.

    A ``vocab`` value keeps its old row wherever its index moved (the two vocabularies joined on
    their values: Arrow tables, no Python object per value), and so do the hashed
    out-of-vocabulary rows of unchanged ``oov_buckets`` and hash seed; ``hash`` and ``bucketize``
    rows map one to one when buckets, boundaries and hash seed are unchanged; index 0
    (missing/OOV) always maps to the old index 0. A multi-valued field's rows are its items',
    indexed as a single field's values, so they map alike whatever its ``max_items`` (which only
    bounds the items a row keeps). A field that became multi-valued, or stopped being, is
    refused: its old rows are features of another kind (one value, ``x = 1``, against one item of
    a set, ``x = 1/n``).
    """
    parts, old_offset = [], 0
    for new, old in zip(spec.categorical_fields, old_spec.categorical_fields, strict=True):
        if new.is_multi_valued != old.is_multi_valued:
            kinds = ["multi-valued" if f.is_multi_valued else "single-valued" for f in (old, new)]
            raise ValueError(f"warm start: field {new.name} was {kinds[0]}, is {kinds[1]} now")
        rows = np.full(new.cardinality, -1, dtype=np.int64)
        rows[0] = 0
        if new.transform == old.transform == "vocab":
            kept = spec.vocabulary_table(new).join(
                old_spec.vocabulary_table(old), "value", join_type="inner", right_suffix="_old"
            )
            rows[kept["index"].to_numpy()] = kept["index_old"].to_numpy()
            if new.oov_buckets and new.oov_buckets == old.oov_buckets and spec.hash_seed == old_spec.hash_seed:
                oov = np.arange(new.oov_buckets)  # the hashed out-of-vocabulary rows, one to one
                rows[new.vocabulary_length + 1 + oov] = old.vocabulary_length + 1 + oov
        elif dataclasses.replace(new, max_items=old.max_items) == old and (
            new.transform != "hash" or spec.hash_seed == old_spec.hash_seed
        ):
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
    tables = {
        f"{name}.categorical.weight" for name, module in model.named_modules() if isinstance(module, FieldEmbedding)
    }
    old_state = old_model.state_dict()
    for name, tensor in model.state_dict().items():
        old = old_state[name]
        if old.shape[1:] != tensor.shape[1:] or (name not in tables and old.shape != tensor.shape):
            raise ValueError(
                f"warm start: {name} is {tuple(old.shape)} in the old model, "
                f"{tuple(tensor.shape)} now (different model config?)"
            )
        if name in tables:
            tensor[hit] = old[source].to(tensor.dtype)
        else:
            tensor.copy_(old)
    return {"kept_rows": len(hit), "new_rows": len(row_map) - len(hit)}
