"""Model bundles: everything scoring needs to rebuild a trained model, in one directory.

    <bundle>/weights.pt    the model's state_dict (CPU tensors; loaded with weights_only=True)
    <bundle>/bundle.json   format, model name, full resolved model config, feature spec,
                           created time, version, torch version and the caller's ``extra``

``version`` is a content hash of the weights, model name, config and feature-spec version:
two bundles share it only if they score identically. ``load_bundle`` recomputes it, so a
truncated or edited bundle is refused rather than half-loaded.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from deepfm.features import FeatureSpec, FeatureSpecError
from deepfm.models import CTRModel, build_model, resolve_model_config

BUNDLE_FORMAT = 1
WEIGHTS_FILENAME = "weights.pt"
META_FILENAME = "bundle.json"


class BundleError(ValueError):
    """A bundle is missing, corrupt, or cannot be saved as asked."""


class BundleSpecMismatchError(BundleError, FeatureSpecError):
    """The bundle's feature spec is not the one the caller expects."""


@dataclass(frozen=True)
class Bundle:
    model: CTRModel  # in eval mode, on the ``map_location`` device
    spec: FeatureSpec
    name: str
    config: dict[str, Any]
    version: str
    meta: dict[str, Any]  # all of bundle.json, including ``extra`` and ``created``


def bundle_version(state: dict[str, torch.Tensor], name: str, config: dict[str, Any], spec: FeatureSpec) -> str:
    """16 hex digits of SHA-256 over model name, config, spec version and every tensor's bytes."""
    digest = hashlib.sha256(json.dumps([name, config, spec.version], sort_keys=True).encode())
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def save_bundle(
    path: str | os.PathLike[str],
    model: CTRModel,
    model_name: str,
    config: dict[str, Any] | None,
    spec: FeatureSpec,
    extra: dict[str, Any] | None = None,
) -> str:
    """Write ``model`` as a bundle at ``path`` (replacing any bundle there); return its version.

    ``config`` is resolved like ``build_model``'s (defaults + overrides) and must describe
    ``model``; the full result is stored, so later edits of ``conf/models.yaml`` cannot change
    what a bundle rebuilds. The bundle is written to a temporary sibling directory and renamed
    into place, so readers see the old bundle or the new one, never a partial one (``path`` is
    briefly absent between the two renames when replacing).
    """
    path = Path(path)
    full_config = _checked_config(model, model_name, config, spec)
    state = {key: tensor.detach().cpu() for key, tensor in model.state_dict().items()}
    version = bundle_version(state, model_name, full_config, spec)
    meta = {
        "bundle_format": BUNDLE_FORMAT,
        "model_name": model_name,
        "model_config": full_config,
        "version": version,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        "feature_spec": spec.to_dict(),
        "extra": extra or {},
    }
    try:
        meta_text = json.dumps(meta, indent=2, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise BundleError(f"bundle metadata is not JSON-serialisable (check extra): {exc}") from exc

    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    staging.chmod(0o755)  # mkdtemp makes it 0700: scoring may run as another user
    try:
        torch.save(state, staging / WEIGHTS_FILENAME)
        (staging / META_FILENAME).write_text(meta_text)
        _swap_into_place(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return version


def _checked_config(
    model: CTRModel, model_name: str, config: dict[str, Any] | None, spec: FeatureSpec
) -> dict[str, Any]:
    """The full config to store, after checking that it, the name and the spec describe ``model``."""
    if model.name != model_name:
        raise BundleError(f"model is a {model.name!r}, not a {model_name!r}")
    full_config = resolve_model_config(model_name, config)
    if full_config != model.config:
        raise BundleError(f"config {full_config} does not describe the model (built with {model.config})")
    layout = (spec.cardinalities, len(spec.numeric_fields))
    if layout != (model.cardinalities, model.n_numeric):
        raise BundleError(
            f"feature spec {spec.version} has cardinalities/numeric count {layout}, "
            f"the model {(model.cardinalities, model.n_numeric)}"
        )
    return full_config


def _swap_into_place(staging: Path, path: Path) -> None:
    if not path.exists():
        os.replace(staging, path)
        return
    retired = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
    os.replace(path, retired)
    os.replace(staging, path)
    shutil.rmtree(retired, ignore_errors=True)


def load_bundle(
    path: str | os.PathLike[str],
    expected_spec: FeatureSpec | None = None,
    map_location: str | torch.device = "cpu",
) -> Bundle:
    """Load and verify a bundle; the model comes back in eval mode.

    Raises ``BundleSpecMismatchError`` (a ``BundleError`` and a ``FeatureSpecError``) naming the
    differences if ``expected_spec`` is given and differs, ``BundleError`` if the bundle is
    missing, corrupt or inconsistent, ``FeatureSpecError`` if its spec is corrupt.
    """
    path = Path(path)
    meta = _read_meta(path)
    try:
        spec = FeatureSpec.from_dict(meta["feature_spec"])
    except FeatureSpecError as exc:
        raise FeatureSpecError(f"bundle {path}: {exc}") from exc
    if expected_spec is not None:
        _check_spec(path, spec, expected_spec)

    name, config = meta["model_name"], meta["model_config"]
    state = _read_weights(path, map_location)
    if bundle_version(state, name, config, spec) != meta["version"]:
        raise BundleError(f"bundle {path} is corrupt: its content does not hash to version {meta['version']}")
    try:
        model = build_model(name, spec.cardinalities, len(spec.numeric_fields), config)
        model.load_state_dict(state)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise BundleError(f"bundle {path}: cannot rebuild model {name!r} from its config and weights: {exc}") from exc
    return Bundle(model.to(map_location).eval(), spec, name, config, meta["version"], meta)


def _read_meta(path: Path) -> dict[str, Any]:
    meta_path = path / META_FILENAME
    if not meta_path.is_file():
        raise BundleError(f"no model bundle at {path} ({META_FILENAME} missing)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"bundle {path} is corrupt: {META_FILENAME}: {exc}") from exc
    required = {"bundle_format", "model_name", "model_config", "version", "feature_spec"}
    missing = sorted(required - set(meta)) if isinstance(meta, dict) else sorted(required)
    if missing:
        raise BundleError(f"bundle {path} is corrupt: {META_FILENAME} lacks {missing}")
    if meta["bundle_format"] != BUNDLE_FORMAT:
        raise BundleError(f"bundle {path} has format {meta['bundle_format']!r}, this code reads {BUNDLE_FORMAT}")
    return meta


def _check_spec(path: Path, spec: FeatureSpec, expected: FeatureSpec) -> None:
    if spec.version == expected.version:
        return
    differences = expected.differences(spec) or ["encodings differ"]
    raise BundleSpecMismatchError(
        f"bundle {path} was trained on feature spec {spec.version}, expected {expected.version}: "
        + "; ".join(differences)
        + " (first spec: expected, second: the bundle's)"
    )


def _read_weights(path: Path, map_location: str | torch.device) -> dict[str, torch.Tensor]:
    weights_path = path / WEIGHTS_FILENAME
    if not weights_path.is_file():
        raise BundleError(f"bundle {path} is incomplete: {WEIGHTS_FILENAME} missing")
    try:
        state = torch.load(weights_path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch.load raises many types on a damaged file (zip, pickle, EOF)
        raise BundleError(f"bundle {path} is corrupt: cannot read {WEIGHTS_FILENAME}: {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise BundleError(f"bundle {path} is corrupt: {WEIGHTS_FILENAME} is not a state_dict")
    return state
