"""Model bundles: round trip, versioning, atomic overwrite, and refusals."""
from __future__ import annotations

import json

import pytest
import torch

from deepfm.bundle import (
    META_FILENAME,
    WEIGHTS_FILENAME,
    BundleError,
    BundleSpecMismatchError,
    load_bundle,
    save_bundle,
)
from deepfm.features import FeatureSpec, FeatureSpecError, FieldSpec
from deepfm.models import build_model_for_spec

CONFIG = {"hidden_units": [16], "embedding_dim": 4}


def make_spec(c2_buckets: int = 10) -> FeatureSpec:
    return FeatureSpec(
        fields=(
            FieldSpec("I1", "log"),
            FieldSpec("C1", "vocab", cardinality=4, vocabulary=("a", "b", "c")),
            FieldSpec("C2", "hash", cardinality=c2_buckets + 1, hash_buckets=c2_buckets),
        ),
        metadata={"days": ["2024-01-01"]},
    )


@pytest.fixture
def spec() -> FeatureSpec:
    return make_spec()


@pytest.fixture
def model(spec):
    torch.manual_seed(0)
    return build_model_for_spec("deepfm", spec, CONFIG).eval()


def inputs():
    return torch.tensor([[1, 3], [0, 10], [2, 0]]), torch.tensor([[0.5], [1.5], [0.0]])


def test_round_trip_restores_model_spec_and_metadata(tmp_path, model, spec):
    version = save_bundle(tmp_path / "bundle", model, "deepfm", CONFIG, spec, extra={"auc": 0.8})
    bundle = load_bundle(tmp_path / "bundle", expected_spec=spec)
    assert (bundle.name, bundle.version, bundle.spec) == ("deepfm", version, spec)
    assert bundle.config == model.config and bundle.config["hidden_units"] == [16]
    assert bundle.meta["extra"] == {"auc": 0.8} and bundle.meta["created"]
    assert bundle.spec.metadata == spec.metadata
    assert not bundle.model.training
    with torch.no_grad():
        torch.testing.assert_close(bundle.model(*inputs()), model(*inputs()))


def test_version_is_a_content_hash(tmp_path, model, spec):
    first = save_bundle(tmp_path / "a", model, "deepfm", CONFIG, spec)
    assert save_bundle(tmp_path / "b", model, "deepfm", CONFIG, spec) == first
    with torch.no_grad():
        model.deep.mlp.layers[0].bias.add_(1.0)
    assert save_bundle(tmp_path / "c", model, "deepfm", CONFIG, spec) != first


def test_overwrite_replaces_the_bundle_and_leaves_no_temporaries(tmp_path, model, spec):
    save_bundle(tmp_path / "bundle", model, "deepfm", CONFIG, spec)
    other = build_model_for_spec("fm", spec, CONFIG)
    version = save_bundle(tmp_path / "bundle", other, "fm", CONFIG, spec)
    assert load_bundle(tmp_path / "bundle").name == "fm" and load_bundle(tmp_path / "bundle").version == version
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_spec_mismatch_names_the_differences(tmp_path, model, spec):
    save_bundle(tmp_path / "bundle", model, "deepfm", CONFIG, spec)
    with pytest.raises(BundleSpecMismatchError, match="field C2: cardinality differs") as info:
        load_bundle(tmp_path / "bundle", expected_spec=make_spec(c2_buckets=20))
    assert isinstance(info.value, FeatureSpecError) and isinstance(info.value, BundleError)


def test_missing_bundle_and_missing_weights_are_refused(tmp_path, model, spec):
    with pytest.raises(BundleError, match="no model bundle"):
        load_bundle(tmp_path / "nowhere")
    save_bundle(tmp_path / "bundle", model, "deepfm", CONFIG, spec)
    (tmp_path / "bundle" / WEIGHTS_FILENAME).unlink()
    with pytest.raises(BundleError, match="weights.pt missing"):
        load_bundle(tmp_path / "bundle")


def test_corrupt_files_are_refused(tmp_path, model, spec):
    bundle = tmp_path / "bundle"
    save_bundle(bundle, model, "deepfm", CONFIG, spec)
    weights = (bundle / WEIGHTS_FILENAME).read_bytes()
    (bundle / WEIGHTS_FILENAME).write_bytes(weights[: len(weights) // 2])
    with pytest.raises(BundleError, match="cannot read weights.pt"):
        load_bundle(bundle)

    save_bundle(bundle, model, "deepfm", CONFIG, spec)
    meta = json.loads((bundle / META_FILENAME).read_text())
    meta["model_config"]["dropout"] = 0.1  # config no longer matches the recorded version
    (bundle / META_FILENAME).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="does not hash to version"):
        load_bundle(bundle)

    (bundle / META_FILENAME).write_text("{not json")
    with pytest.raises(BundleError, match="corrupt"):
        load_bundle(bundle)

    meta["feature_spec"]["version"] = "0" * 16
    (bundle / META_FILENAME).write_text(json.dumps(meta))
    with pytest.raises(FeatureSpecError, match="corrupt feature spec"):
        load_bundle(bundle)


def test_save_refuses_a_name_config_or_spec_that_does_not_describe_the_model(tmp_path, model, spec):
    with pytest.raises(BundleError, match="not a 'fm'"):
        save_bundle(tmp_path / "b", model, "fm", CONFIG, spec)
    with pytest.raises(BundleError, match="does not describe the model"):
        save_bundle(tmp_path / "b", model, "deepfm", {**CONFIG, "embedding_dim": 8}, spec)
    with pytest.raises(BundleError, match="cardinalities"):
        save_bundle(tmp_path / "b", model, "deepfm", CONFIG, make_spec(c2_buckets=20))
    with pytest.raises(BundleError, match="JSON"):
        save_bundle(tmp_path / "b", model, "deepfm", CONFIG, spec, extra={"x": object()})
    assert not (tmp_path / "b").exists()


def test_a_spec_of_an_older_format_is_refused_not_encoded_differently(tmp_path, model, spec):
    bundle = tmp_path / "bundle"
    save_bundle(bundle, model, "deepfm", CONFIG, spec)
    meta = json.loads((bundle / META_FILENAME).read_text())
    meta["feature_spec"]["format_version"] = 1  # format 1 hashed concat('<seed>:', value)
    (bundle / META_FILENAME).write_text(json.dumps(meta))
    with pytest.raises(FeatureSpecError, match="unsupported feature spec format 1"):
        load_bundle(bundle)
