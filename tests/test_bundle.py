"""Model bundles: round trip, versioning, atomic overwrite, and refusals."""

from __future__ import annotations

import json
import stat

import pyarrow as pa
import pytest
import torch
import yaml
from testkit import model_for_spec

from deepfm.cli.config import load_defaults
from deepfm.core import fs
from deepfm.core.features import PADDING, FeatureSpec, FeatureSpecError, FieldSpec
from deepfm.core.metrics import BinaryMetrics
from deepfm.models import ModelDefaults
from deepfm.models.bundle import (
    META_FILENAME,
    WEIGHTS_FILENAME,
    BundleError,
    bundle_version,
    load_bundle,
    save_bundle,
)

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
    return model_for_spec("deepfm", spec, CONFIG).eval()


def inputs():
    return torch.tensor([[1, 3], [0, 10], [2, 0]]), torch.tensor([[0.5], [1.5], [0.0]])


def test_round_trip_restores_model_spec_and_metadata(tmp_path, model, spec):
    version = save_bundle(tmp_path / "bundle", model, spec, extra={"auc": 0.8})
    bundle = load_bundle(tmp_path / "bundle")
    assert (bundle.name, bundle.version, bundle.spec) == ("deepfm", version, spec)
    assert bundle.config == model.config and bundle.config.hidden_units == (16,)
    assert bundle.validation is None
    assert bundle.meta["extra"] == {"auc": 0.8} and bundle.meta["created"]
    assert bundle.spec.metadata == spec.metadata
    assert not bundle.model.training
    with torch.no_grad():
        torch.testing.assert_close(bundle.model(*inputs()), model(*inputs()))


def test_version_is_a_content_hash(tmp_path, model, spec):
    first = save_bundle(tmp_path / "a", model, spec)
    assert save_bundle(tmp_path / "b", model, spec) == first
    with torch.no_grad():
        model.deep.mlp.layers[0].weight.add_(1.0)
    assert save_bundle(tmp_path / "c", model, spec) != first


def test_overwrite_replaces_the_bundle_and_leaves_no_temporaries(tmp_path, model, spec):
    save_bundle(tmp_path / "bundle", model, spec)
    other = model_for_spec("fm", spec, CONFIG)
    version = save_bundle(tmp_path / "bundle", other, spec)
    assert load_bundle(tmp_path / "bundle").name == "fm" and load_bundle(tmp_path / "bundle").version == version
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_missing_bundle_and_missing_weights_are_refused(tmp_path, model, spec):
    with pytest.raises(BundleError, match="no model bundle"):
        load_bundle(tmp_path / "nowhere")
    save_bundle(tmp_path / "bundle", model, spec)
    (tmp_path / "bundle" / WEIGHTS_FILENAME).unlink()
    with pytest.raises(BundleError, match=r"weights\.pt missing"):
        load_bundle(tmp_path / "bundle")


def test_corrupt_files_are_refused(tmp_path, model, spec):
    bundle = tmp_path / "bundle"
    save_bundle(bundle, model, spec)
    weights = (bundle / WEIGHTS_FILENAME).read_bytes()
    (bundle / WEIGHTS_FILENAME).write_bytes(weights[: len(weights) // 2])
    with pytest.raises(BundleError, match=r"cannot read weights\.pt"):
        load_bundle(bundle)

    save_bundle(bundle, model, spec)
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


def test_save_refuses_a_spec_that_does_not_describe_the_model(tmp_path, model, spec):
    with pytest.raises(BundleError, match="cardinalities"):
        save_bundle(tmp_path / "b", model, make_spec(c2_buckets=20))
    with pytest.raises(BundleError, match="JSON"):
        save_bundle(tmp_path / "b", model, spec, extra={"x": object()})
    assert not (tmp_path / "b").exists()


def test_a_spec_of_an_older_format_is_refused_not_encoded_differently(tmp_path, model, spec):
    bundle = tmp_path / "bundle"
    save_bundle(bundle, model, spec)
    meta = json.loads((bundle / META_FILENAME).read_text())
    meta["feature_spec"]["format_version"] = 1  # format 1 hashed concat('<seed>:', value)
    (bundle / META_FILENAME).write_text(json.dumps(meta))
    with pytest.raises(FeatureSpecError, match="unsupported feature spec format 1"):
        load_bundle(bundle)


def test_a_bundle_rebuilds_its_model_from_its_own_contents_whatever_the_defaults_say(
    tmp_path, model, spec, monkeypatch
):
    save_bundle(tmp_path / "bundle", model, spec)
    with torch.no_grad():
        before = model(*inputs())
    changed = load_defaults("models")
    changed["defaults"]["layer_norm"] = True  # a new key
    changed["defaults"]["hidden_width"] = changed["defaults"].pop("hidden_units")  # a renamed key
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "models.yaml").write_text(yaml.safe_dump(changed))
    monkeypatch.setenv("DEEPFM_CONF_DIR", str(conf))
    with pytest.raises(ValueError, match="unknown keys"):  # the changed defaults are read for new models
        ModelDefaults(load_defaults("models")).resolve("deepfm")
    bundle = load_bundle(tmp_path / "bundle")  # ... and not by a bundle
    with torch.no_grad():
        assert torch.equal(bundle.model(*inputs()), before)


def test_the_validation_that_selected_a_bundle_travels_with_it(tmp_path, model, spec):
    validation = BinaryMetrics()
    validation.update(torch.tensor([0.2, 0.7, 0.4]), torch.tensor([0.0, 1.0, 1.0]))
    save_bundle(tmp_path / "bundle", model, spec, validation=validation)
    kept = load_bundle(tmp_path / "bundle").validation
    assert kept is not None and torch.equal(kept.to_tensor(), validation.to_tensor())
    assert kept.compute()["auc"] == validation.compute()["auc"] == 1.0


def test_bundle_files_get_the_umask_permissions_not_private_ones(tmp_path, model, spec):
    save_bundle(tmp_path / "bundle", model, spec)
    for path in (tmp_path / "bundle", *(tmp_path / "bundle").iterdir()):
        assert stat.S_IMODE(path.stat().st_mode) == (fs.DIR_MODE if path.is_dir() else fs.FILE_MODE), path


def apps_spec(max_items: int) -> FeatureSpec:
    return FeatureSpec(
        fields=(
            FieldSpec("I1", "log"),
            FieldSpec("C1", "vocab", cardinality=4, vocabulary=("a", "b", "c")),
            FieldSpec("apps", "hash", cardinality=11, hash_buckets=10, max_items=max_items),
        )
    )


def test_a_bundle_with_a_multi_valued_field_rebuilds_it_and_scoring_reads_its_slot_columns(tmp_path):
    spec = apps_spec(max_items=3)
    torch.manual_seed(0)
    model = model_for_spec("deepfm", spec, CONFIG).eval()
    cat = torch.tensor([[1, 4, 7, PADDING], [0, 10, PADDING, PADDING], [2, 3, 3, 9]])
    num = torch.tensor([[0.5], [1.5], [0.0]])
    version = save_bundle(tmp_path / "bundle", model, spec)
    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.spec == spec and bundle.model.items_per_field == [1, 3]
    with torch.no_grad():
        expected = model(cat, num)
        assert torch.equal(bundle.model(cat, num), expected)
    with pytest.raises(BundleError, match="items per field"):
        save_bundle(tmp_path / "other", model, apps_spec(max_items=5))

    from deepfm.serving.predict import predict_fn  # imports pyspark (no JVM): only this test pays for it

    columns = {name: pa.array(cat[:, j].int().numpy()) for j, name in enumerate(spec.categorical_columns)}
    batch = pa.RecordBatch.from_pydict(
        {
            "impression_id": pa.array([7, 8, 9]),
            "label": pa.array([1.0, 0.0, None], pa.float32()),
            "I1": num[:, 0].numpy(),
        }
        | columns
    )
    scored = list(
        predict_fn(str(tmp_path / "bundle"), version, spec, torch.get_num_threads(), fs.S3Settings())([batch])
    )
    torch.testing.assert_close(torch.from_numpy(scored[0].column("ctr").to_numpy()), torch.sigmoid(expected))


@pytest.mark.parametrize("as_uri", [str, lambda path: f"file://{path}"], ids=["plain path", "file URI"])
def test_a_bundle_round_trips_through_a_plain_path_and_a_uri(tmp_path, model, spec, as_uri):
    validation = BinaryMetrics()
    validation.update(torch.tensor([0.2, 0.7]), torch.tensor([0.0, 1.0]))
    version = save_bundle(as_uri(tmp_path / "bundle"), model, spec, validation=validation)
    bundle = load_bundle(as_uri(tmp_path / "bundle"))
    assert bundle.version == version and bundle.spec.version == spec.version and bundle.validation is not None
    with torch.no_grad():
        assert torch.equal(bundle.model(*inputs()), model(*inputs()))
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_a_bundle_carries_its_logit_shift_and_one_from_before_calibration_loads_without(tmp_path, model, spec):
    with torch.no_grad():
        raw = model(*inputs())
        model.logit_shift.fill_(-0.25)
    save_bundle(tmp_path / "shifted", model, spec)
    with torch.no_grad():
        torch.testing.assert_close(load_bundle(tmp_path / "shifted").model(*inputs()), raw - 0.25)
    # a bundle written before the shift existed: weights without it, version hashed without it
    old = tmp_path / "old"
    save_bundle(old, model, spec)
    state = torch.load(old / WEIGHTS_FILENAME, weights_only=True)
    del state["logit_shift"]
    torch.save(state, old / WEIGHTS_FILENAME)
    meta = json.loads((old / META_FILENAME).read_text())
    meta["version"] = bundle_version(state, model.name, model.config, spec)
    (old / META_FILENAME).write_text(json.dumps(meta))
    with torch.no_grad():
        torch.testing.assert_close(load_bundle(old).model(*inputs()), raw)
