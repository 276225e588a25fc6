"""Model bundles: everything scoring needs to rebuild a trained model, in one directory.

    <bundle>/weights.pt              the model's state_dict (CPU tensors; loaded with weights_only=True)
    <bundle>/bundle.json             format, model name, the complete model config, feature spec,
                                     created time, version, torch version and the caller's ``extra``
    <bundle>/validation_metrics.pt   optional: the ``BinaryMetrics`` state of the validation that
                                     selected these weights (reports draw ROC and calibration from it)
    <bundle>/vocabularies/           the feature spec's stored vocabularies (Parquet), when it has any

A bundle rebuilds its model from its own contents alone: ``bundle.json`` holds the whole
``ModelConfig``, so later changes of the defaults cannot change or break it. ``version`` is a
content hash of the weights, model name, config and feature-spec version: two bundles share it
only if they score identically. ``load_bundle`` recomputes it, so a truncated or edited bundle is
refused rather than half-loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import torch

from deepfm.core import fs
from deepfm.core.features import VOCABULARIES, FeatureSpec, FeatureSpecError
from deepfm.core.metrics import BinaryMetrics
from deepfm.models.config import ModelConfig
from deepfm.models.zoo import CTRModel, build_model_for_spec

BUNDLE_FORMAT = 1
WEIGHTS_FILENAME = "weights.pt"
META_FILENAME = "bundle.json"
VALIDATION_FILENAME = "validation_metrics.pt"


class BundleError(ValueError):
    """A bundle is missing, corrupt, or cannot be saved as asked."""


@dataclass(frozen=True)
class Bundle:
    model: CTRModel  # in eval mode, on the ``map_location`` device
    spec: FeatureSpec
    name: str
    config: ModelConfig
    version: str
    meta: dict[str, Any]  # all of bundle.json, including ``extra`` and ``created``
    validation: BinaryMetrics | None  # the validation that selected the weights, when saved


def state_digest(state: Mapping[str, torch.Tensor], header: Any = None) -> str:
    """16 hex digits of SHA-256 over ``header`` (JSON) and every tensor's name, dtype, shape and
    bytes: equal digests mean bit-identical weights."""
    digest = hashlib.sha256(json.dumps(header, sort_keys=True).encode()) if header is not None else hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def bundle_version(state: Mapping[str, torch.Tensor], name: str, config: ModelConfig, spec: FeatureSpec) -> str:
    """The bundle's content hash: weights, model name, config and feature-spec version."""
    return state_digest(state, [name, config.to_dict(), spec.version])


def save_bundle(
    path: str | os.PathLike[str],
    model: CTRModel,
    spec: FeatureSpec,
    extra: dict[str, Any] | None = None,
    validation: BinaryMetrics | None = None,
) -> str:
    """Write ``model`` (trained on ``spec``'s layout) as a bundle at ``path`` (any URI), replacing
    any bundle there whole (``fs.staged_uri``); return its version.

    ``validation`` is the metrics state of the validation that selected these weights.
    """
    layout = (spec.cardinalities, len(spec.numeric_fields), spec.items_per_field)
    model_layout = (model.cardinalities, model.n_numeric, model.items_per_field)
    if layout != model_layout:
        raise BundleError(
            f"feature spec {spec.version} has cardinalities/numeric count/items per field {layout}, "
            f"the model {model_layout}"
        )
    state = {key: tensor.detach().cpu() for key, tensor in model.state_dict().items()}
    version = bundle_version(state, model.name, model.config, spec)
    meta = {
        "bundle_format": BUNDLE_FORMAT,
        "model_name": model.name,
        "model_config": model.config.to_dict(),
        "version": version,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        "feature_spec": spec.to_dict(),
        "extra": extra or {},
    }
    try:
        meta_text = json.dumps(meta, indent=2, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise BundleError(f"bundle metadata is not JSON-serialisable (check extra): {exc}") from exc
    stored = any(f.stored_vocabulary for f in spec.fields)
    with fs.staged_uri(path) as staging:
        if stored:  # the spec's own vocabularies travel with it: the bundle needs nothing else
            fs.copy_tree(spec.vocabularies, fs.join(staging, VOCABULARIES))  # from wherever the spec lives
        save_tensors(fs.join(staging, WEIGHTS_FILENAME), state)
        if validation is not None:
            save_tensors(fs.join(staging, VALIDATION_FILENAME), validation.to_tensor())
        fs.put_text(fs.join(staging, META_FILENAME), meta_text)  # last: on an object store, copied last
    return version


def load_bundle(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Bundle:
    """Load and verify the bundle at ``path`` (any URI); the model comes back in eval mode.

    Raises ``BundleError`` if the bundle is missing, corrupt or inconsistent, and
    ``FeatureSpecError`` if its spec is corrupt.
    """
    path = str(path)
    meta = _read_meta(path)
    try:
        spec = FeatureSpec.from_dict(meta["feature_spec"]).located(path)
    except FeatureSpecError as exc:
        raise FeatureSpecError(f"bundle {path}: {exc}") from exc
    if any(f.stored_vocabulary for f in spec.fields) and not fs.is_dir(fs.join(path, VOCABULARIES)):
        raise BundleError(f"bundle {path} is incomplete: {VOCABULARIES}/ missing")
    name = meta["model_name"]
    try:
        config = ModelConfig.from_dict(meta["model_config"])
    except (ValueError, TypeError) as exc:
        raise BundleError(f"bundle {path} is corrupt: {META_FILENAME}: {exc}") from exc
    state = _read_tensors(path, WEIGHTS_FILENAME, map_location)
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise BundleError(f"bundle {path} is corrupt: {WEIGHTS_FILENAME} is not a state_dict")
    if bundle_version(state, name, config, spec) != meta["version"]:
        raise BundleError(f"bundle {path} is corrupt: its content does not hash to version {meta['version']}")
    state.setdefault("logit_shift", torch.zeros(1))  # bundles from before calibration: no shift
    try:
        model = build_model_for_spec(name, spec, config)
        model.load_state_dict(state)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise BundleError(f"bundle {path}: cannot rebuild model {name!r} from its config and weights: {exc}") from exc
    validation = None
    if fs.exists(fs.join(path, VALIDATION_FILENAME)):
        validation = BinaryMetrics.from_tensor(_read_tensors(path, VALIDATION_FILENAME, "cpu"))
    return Bundle(model.to(map_location).eval(), spec, name, config, meta["version"], meta, validation)


def _read_meta(path: str) -> dict[str, Any]:
    meta_path = fs.join(path, META_FILENAME)
    if not fs.exists(meta_path):
        raise BundleError(f"no model bundle at {path} ({META_FILENAME} missing)")
    try:
        meta = json.loads(fs.read_text(meta_path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"bundle {path} is corrupt: {META_FILENAME}: {exc}") from exc
    required = {"bundle_format", "model_name", "model_config", "version", "feature_spec"}
    missing = sorted(required - set(meta)) if isinstance(meta, dict) else sorted(required)
    if missing:
        raise BundleError(f"bundle {path} is corrupt: {META_FILENAME} lacks {missing}")
    if meta["bundle_format"] != BUNDLE_FORMAT:
        raise BundleError(f"bundle {path} has format {meta['bundle_format']!r}, this code reads {BUNDLE_FORMAT}")
    return meta


def _read_tensors(path: str, filename: str, map_location: str | torch.device) -> Any:
    """The tensors of the bundle's file ``filename``."""
    file = fs.join(path, filename)
    if not fs.exists(file):
        raise BundleError(f"bundle {path} is incomplete: {filename} missing")
    try:
        return load_tensors(file, map_location)
    except Exception as exc:  # torch.load raises many types on a damaged file (zip, pickle, EOF)
        raise BundleError(f"bundle {path} is corrupt: cannot read {filename}: {exc}") from exc


def save_tensors(uri: str, tensors: Any) -> None:
    """``torch.save`` of ``tensors`` (tensors, or containers of them and plain values) to ``uri``,
    any URI, replacing it atomically (``fs.put_stream``)."""
    fs.put_stream(uri, lambda stream: torch.save(tensors, stream))


def load_tensors(uri: str, map_location: str | torch.device) -> Any:
    """What ``save_tensors`` wrote to ``uri`` (loaded with ``weights_only``: no code runs)."""
    with fs.open_input(uri) as stream:
        return torch.load(stream, map_location=map_location, weights_only=True)
