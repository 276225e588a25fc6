"""Model zoo, layers and optimizers: pure torch, tiny inputs."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from testkit import model as build
from testkit import model_config, model_for_spec
from torch import nn

from deepfm.core.features import PADDING, FeatureSpec, FieldSpec
from deepfm.core.metrics import auc
from deepfm.models import ModelConfig, ModelDefaults, build_model, make_optimizers, model_names
from deepfm.models.layers import FieldEmbedding, FMInteraction, InnerProducts, OuterProducts
from deepfm.models.optim import clip_grad_norm
from deepfm.models.surgery import embedding_row_map, pretrain_init, warm_start
from deepfm.training.early_stopping import PlateauDecay

CARDINALITIES = [6, 9, 4]
N_NUMERIC = 2
SMALL = {"hidden_units": [32, 32], "dropout": 0.0, "embedding_dim": 4}


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny ops on a shared 2-core machine: spinning intra-op threads cost far more than they save."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_inputs(batch: int, cardinalities: list[int] = CARDINALITIES, n_numeric: int = N_NUMERIC, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cat = torch.stack([torch.randint(0, c, (batch,), generator=g) for c in cardinalities], dim=1)
    num = torch.rand(batch, n_numeric, generator=g)
    return cat, num


def test_registry_has_exactly_the_paper_models():
    assert model_names() == ["lr", "fm", "fnn", "ipnn", "opnn", "pnn", "lr_dnn", "fm_dnn", "deepfm", "deepfm_p"]


@pytest.mark.parametrize("name", model_names())
def test_every_model_maps_inputs_to_one_logit_per_row(name):
    model = build(name, CARDINALITIES, N_NUMERIC)
    cat, num = random_inputs(5)
    logits = model(cat, num)
    assert logits.shape == (5,) and logits.dtype == torch.float32 and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", model_names())
def test_every_model_fits_a_tiny_batch(name):
    torch.manual_seed(0)
    model = build(name, CARDINALITIES, N_NUMERIC, {"hidden_units": [64, 64]})  # dropout 0.5 kept
    cat, num = random_inputs(64)
    labels = torch.randint(0, 2, (64,), generator=torch.Generator().manual_seed(1)).float()
    optimizers = make_optimizers(model, lr=1e-2)

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            return F.binary_cross_entropy_with_logits(model(cat, num), labels).item()

    before = eval_loss()
    model.train()
    for _ in range(20):
        optimizers.zero_grad()
        F.binary_cross_entropy_with_logits(model(cat, num), labels).backward()
        optimizers.step()
    assert eval_loss() < before - 0.02


def test_models_without_numeric_fields():
    model = build("deepfm", CARDINALITIES, 0, SMALL)
    cat, _ = random_inputs(3)
    assert model(cat, torch.empty(3, 0)).shape == (3,)


def test_fm_sum_square_equals_naive_pairwise_sum():
    embeddings = torch.randn(7, 5, 3, dtype=torch.float64)
    naive = sum((embeddings[:, i] * embeddings[:, j]).sum(-1) for i, j in itertools.combinations(range(5), 2))
    torch.testing.assert_close(FMInteraction()(embeddings), naive)


def test_inner_and_outer_products_match_their_definitions():
    embeddings = torch.randn(4, 5, 3, dtype=torch.float64)
    inner = torch.stack(
        [(embeddings[:, i] * embeddings[:, j]).sum(-1) for i, j in itertools.combinations(range(5), 2)], dim=1
    )
    torch.testing.assert_close(InnerProducts(5)(embeddings), inner)
    outer = torch.einsum("bik,bjl->bkl", embeddings, embeddings).flatten(1)  # sum over all field pairs of e_i e_j^T
    torch.testing.assert_close(OuterProducts()(embeddings), outer)


def test_field_embedding_uses_per_field_offsets_and_scales_numeric_vectors():
    embedding = FieldEmbedding([3, 4], n_numeric=1, dim=2, init_std=1.0)
    cat = torch.tensor([[2, 3]])
    num = torch.tensor([[0.5]])
    out = embedding(cat, num)
    table = embedding.categorical.weight
    torch.testing.assert_close(out[0, 0], table[2])
    torch.testing.assert_close(out[0, 1], table[3 + 3])
    torch.testing.assert_close(out[0, 2], 0.5 * embedding.numeric[0])


def test_deepfm_is_fm_plus_dnn_on_one_shared_embedding():
    torch.manual_seed(0)
    deepfm = build("deepfm", CARDINALITIES, N_NUMERIC, SMALL)
    fm = build("fm", CARDINALITIES, N_NUMERIC, SMALL)
    fm.wide.load_state_dict(deepfm.wide.state_dict())
    cat, num = random_inputs(6)
    deepfm.eval()
    with torch.no_grad():
        expected = fm(cat, num) + deepfm.deep(deepfm.wide(cat, num)[1])
        torch.testing.assert_close(deepfm(cat, num), expected)
    assert sum(isinstance(m, nn.Embedding) for m in deepfm.modules()) == 1
    assert deepfm.deep_embedding is None


def test_fm_dnn_has_its_own_deep_embedding():
    model = build("fm_dnn", CARDINALITIES, N_NUMERIC, SMALL)
    assert sum(isinstance(m, nn.Embedding) for m in model.modules()) == 2
    assert model.deep_embedding is not None


def test_config_resolution_layers_defaults_model_section_and_overrides():
    assert build("deepfm", CARDINALITIES, N_NUMERIC).config.hidden_units == (400, 400, 400)
    assert build("ipnn", CARDINALITIES, N_NUMERIC).config.activation == "tanh"
    model = build("pnn", CARDINALITIES, N_NUMERIC, {"embedding_dim": 3, "hidden_units": [8]})
    assert model.config.embedding_dim == 3 and model.config.product == "both"
    assert model.deep_embedding.dim == 3
    with pytest.raises(ValueError, match="unknown config keys"):
        build("fm", CARDINALITIES, N_NUMERIC, {"embeding_dim": 3})
    with pytest.raises(ValueError, match="unknown model"):
        build_model("xdeepfm", CARDINALITIES, N_NUMERIC, model_config("deepfm"))
    with pytest.raises(ValueError, match="no defaults for model"):
        model_config("xdeepfm")


def test_a_model_config_is_complete_and_refuses_unknown_or_missing_keys():
    config = model_config("deepfm", {"hidden_units": [8]})
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"unknown keys \['extra'\], missing keys \[\]"):
        ModelConfig.from_dict({**config.to_dict(), "extra": 1})
    with pytest.raises(ValueError, match=r"missing keys \['dropout'\]"):
        ModelConfig.from_dict({k: v for k, v in config.to_dict().items() if k != "dropout"})
    with pytest.raises(ValueError, match="unknown activation"):
        config.replace(activation="gelu")
    assert ModelDefaults({"defaults": config.to_dict(), "fm": {"embedding_dim": 3}}).resolve("fm").embedding_dim == 3


def test_build_model_for_spec_follows_the_spec_layout():
    spec = FeatureSpec(
        fields=(
            FieldSpec("I1", "log"),
            FieldSpec("C1", "hash", cardinality=11, hash_buckets=10),
            FieldSpec("C2", "vocab", cardinality=3, vocabulary=("a", "b")),
        )
    )
    model = model_for_spec("deepfm", spec, SMALL)
    assert model.cardinalities == [11, 3] and model.n_numeric == 1
    assert model.wide.rows.categorical.num_embeddings == 14


def test_pretrain_init_copies_fm_latent_vectors_into_fnn():
    fm = build("fm", CARDINALITIES, N_NUMERIC, SMALL)
    fnn = build("fnn", CARDINALITIES, N_NUMERIC, SMALL)
    pretrain_init(fnn, fm)
    torch.testing.assert_close(fnn.deep_embedding.categorical.weight, fm.wide.rows.categorical.weight[:, 1:])
    torch.testing.assert_close(fnn.deep_embedding.numeric, fm.wide.rows.numeric[:, 1:])
    with pytest.raises(ValueError, match="same spec and embedding_dim"):
        pretrain_init(build("fnn", CARDINALITIES, N_NUMERIC, {**SMALL, "embedding_dim": 5}), fm)
    with pytest.raises(ValueError, match="needs an fnn and an fm"):
        pretrain_init(fnn, build("lr", CARDINALITIES, N_NUMERIC))


@pytest.mark.parametrize("name", ["fm", "fm_dnn", "pnn"])
def test_optimizers_update_only_the_embedding_rows_a_batch_touches(name):
    model = build(name, [50, 50], N_NUMERIC, SMALL)
    optimizers = make_optimizers(model, 1e-3)
    kinds = [type(opt).__name__ for opt in optimizers]
    assert kinds == ["SparseAdam", "Adam"]
    tables = [m.weight for m in model.modules() if isinstance(m, nn.Embedding)]
    sparse_ids = {id(p) for _, p in optimizers.named_parameters[0]}
    assert {id(t) for t in tables} == sparse_ids

    cat = torch.tensor([[1, 2], [3, 2]])
    before = [t.detach().clone() for t in tables]
    optimizers.zero_grad()
    model(cat, torch.rand(2, N_NUMERIC)).sum().backward()
    assert all(t.grad.is_sparse for t in tables)
    optimizers.step()
    touched = torch.tensor([1, 3, 50 + 2])
    for table, old in zip(tables, before):
        changed = (table.detach() != old).any(dim=1).nonzero().flatten()
        assert torch.equal(changed, touched)


def test_optimizers_state_round_trips():
    model = build("deepfm", CARDINALITIES, N_NUMERIC, SMALL)
    optimizers = make_optimizers(model, 1e-3)
    cat, num = random_inputs(8)
    model(cat, num).sum().backward()
    optimizers.step()
    state = optimizers.state_dict()
    fresh = make_optimizers(model, 1e-3)
    fresh.load_state_dict(state)
    assert [o.state_dict()["state"].keys() for o in fresh] == [o.state_dict()["state"].keys() for o in optimizers]
    groups = [group for optimizer in fresh for group in optimizer.param_groups]
    assert len(groups) == 2 and all(g["lr"] == 1e-3 for g in groups)
    wrapped = fresh.wrap(lambda opt, named: opt)
    assert wrapped.optimizers == fresh.optimizers


def planted_interaction_data(n: int, seed: int):
    """Label depends only on the product of two fields' hidden ±1 factors: no order-1 signal.

    Fields 0 and 1 have 20 values with factor +1 on half and -1 on the other half; every value
    of field 0 is clicked as often as not on average over field 1, so LR can only guess.
    """
    g = torch.Generator().manual_seed(seed)
    cards = [21, 21, 11]
    cat = torch.stack([torch.randint(1, c, (n,), generator=g) for c in cards], dim=1)
    factor = torch.where(torch.arange(21) % 2 == 0, 1.0, -1.0)
    probability = torch.sigmoid(4.0 * factor[cat[:, 0]] * factor[cat[:, 1]])
    labels = torch.bernoulli(probability, generator=g)
    return cards, cat, torch.rand(n, 1, generator=g), labels


def train_and_auc(name: str, epochs: int = 4) -> float:
    torch.manual_seed(0)
    cards, cat, num, labels = planted_interaction_data(4000, seed=0)
    model = build(name, cards, 1, {**SMALL, "embedding_init_std": 0.1})
    optimizers = make_optimizers(model, lr=0.02)
    for _ in range(epochs):
        for rows in torch.randperm(len(labels)).split(200):
            optimizers.zero_grad()
            F.binary_cross_entropy_with_logits(model(cat[rows], num[rows]), labels[rows]).backward()
            optimizers.step()
    _, test_cat, test_num, test_labels = planted_interaction_data(2000, seed=1)
    model.eval()
    with torch.no_grad():
        return auc(model(test_cat, test_num), test_labels)


def test_second_order_terms_learn_a_pure_pairwise_interaction():
    lr_auc, fm_auc, deepfm_auc = (train_and_auc(name) for name in ("lr", "fm", "deepfm"))
    assert lr_auc < 0.6
    assert fm_auc > 0.85 and deepfm_auc > 0.85


# Multi-valued fields: n slot columns per field, items then PADDING, pooled with x_i = 1/n.


def multi_valued_inputs(batch: int, cardinalities: list[int], items: list[int], n_numeric: int, seed: int = 0):
    """``cat [batch, sum(items)]``: one index per single-valued field; a multi-valued field's slots
    hold 1..n items (repeats possible), then PADDING; every count occurs across the rows."""
    g = torch.Generator().manual_seed(seed)
    columns = []
    for card, n in zip(cardinalities, items):
        slots = torch.randint(0, card, (batch, n), generator=g)
        used = torch.arange(batch).remainder(n).add(1).unsqueeze(1)  # items in the row: 1, 2, .., n, 1, ..
        columns.append(slots.masked_fill(torch.arange(n) >= used, PADDING))
    return torch.cat(columns, dim=1), torch.randn(batch, n_numeric, generator=g)


def test_fm_over_pooled_fields_equals_the_pairwise_sum_over_their_features():
    """Rendle's FM with x_i = 1/n per item of a multi-valued field, 1 per single value, the value
    per numeric field: sum over all feature pairs i<j, pairs inside one field included."""
    cards, items, n_numeric = [5, 7, 6, 4], [1, 4, 1, 3], 2
    embedding = FieldEmbedding(cards, n_numeric, dim=3, init_std=1.0, items_per_field=items).double()
    cat, num = multi_valued_inputs(8, cards, items, n_numeric)
    num = num.double()
    pooled = embedding.pool(cat, num)
    table, offsets = embedding.categorical.weight, torch.tensor([0, *cards[:-1]]).cumsum(0)
    for b in range(len(cat)):
        features = []  # (x_i, v_i)
        for field, slots in enumerate(cat[b].split(items)):
            present = slots[slots != PADDING]
            features += [(1.0 / len(present), table[offsets[field] + i]) for i in present]
        features += [(num[b, j], embedding.numeric[j]) for j in range(n_numeric)]
        naive = sum(xi * xj * (vi @ vj) for (xi, vi), (xj, vj) in itertools.combinations(features, 2))
        torch.testing.assert_close(FMInteraction()(pooled.vectors[b : b + 1], pooled.squares[b : b + 1])[0], naive)
    # the squares are what count the pairs inside a field: without them the FM is another sum
    assert not torch.allclose(FMInteraction()(pooled.vectors), FMInteraction()(pooled.vectors, pooled.squares))


def test_a_multi_valued_field_is_the_mean_of_its_items_and_its_gradient_reaches_only_them():
    embedding = FieldEmbedding([4, 10], n_numeric=1, dim=2, init_std=1.0, items_per_field=[1, 3])
    cat = torch.tensor([[2, 5, 7, PADDING], [1, 9, PADDING, PADDING], [3, 6, 6, 8]])
    vectors = embedding(cat, torch.ones(3, 1))
    table = embedding.categorical.weight
    assert vectors.shape == (3, 3, 2)  # fields, not columns
    torch.testing.assert_close(vectors[:, 0], table[[2, 1, 3]])
    torch.testing.assert_close(vectors[0, 1], (table[4 + 5] + table[4 + 7]) / 2)
    torch.testing.assert_close(vectors[1, 1], table[4 + 9])
    torch.testing.assert_close(vectors[2, 1], (2 * table[4 + 6] + table[4 + 8]) / 3)  # a repeated item counts twice
    vectors[:, 1].sum().backward()
    assert table.grad.is_sparse
    weights = torch.zeros(14)
    weights[[4 + 5, 4 + 7]] = 1 / 2
    weights[4 + 9] = 1.0
    weights[[4 + 6, 4 + 8]] = torch.tensor([2 / 3, 1 / 3])
    torch.testing.assert_close(table.grad.to_dense(), weights.unsqueeze(1).expand(14, 2))  # padding: none


@pytest.mark.parametrize("name", model_names())
def test_every_model_trains_on_a_spec_with_a_multi_valued_field(name):
    spec = FeatureSpec(
        fields=(
            FieldSpec("C1", "vocab", cardinality=4, vocabulary=("a", "b", "c")),
            FieldSpec("apps", "hash", cardinality=21, hash_buckets=21, max_items=4),
            FieldSpec("I1", "log"),
        )
    )
    torch.manual_seed(0)
    model = model_for_spec(name, spec, SMALL)
    assert model.items_per_field == [1, 4]
    cat, num = multi_valued_inputs(16, spec.cardinalities, spec.items_per_field, 1)
    labels = torch.randint(0, 2, (16,), generator=torch.Generator().manual_seed(1)).float()
    optimizers = make_optimizers(model, lr=1e-2)
    F.binary_cross_entropy_with_logits(model(cat, num), labels).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    optimizers.step()
    reordered = cat.clone()  # each row's items in reverse slot order: a set, the same row
    for row, count in enumerate((cat[:, 1:] != PADDING).sum(dim=1).tolist()):
        reordered[row, 1 : 1 + count] = cat[row, 1 : 1 + count].flip(0)
    model.eval()
    with torch.no_grad():
        logits = model(cat, num)
        assert logits.shape == (16,) and torch.isfinite(logits).all()
        torch.testing.assert_close(model(reordered, num), logits)


def apps_spec(apps: tuple[str, ...], max_items: int, tags_items: int) -> FeatureSpec:
    return FeatureSpec(
        fields=(
            FieldSpec("C1", "hash", cardinality=5, hash_buckets=5),
            FieldSpec("apps", "vocab", cardinality=len(apps) + 1, vocabulary=apps, max_items=max_items),
            FieldSpec("tags", "hash", cardinality=6, hash_buckets=6, max_items=tags_items),
            FieldSpec("I0", "raw"),
        )
    )


def test_warm_start_maps_a_multi_valued_fields_items_by_value_across_a_vocabulary_change():
    old_spec, new_spec = apps_spec(("a", "b", "c"), 3, 2), apps_spec(("c", "d", "a", "e"), 5, 4)
    # apps by value (c: 3 -> 1, a: 1 -> 3, d and e new); tags one to one although max_items grew
    assert embedding_row_map(new_spec, old_spec).tolist() == [0, 1, 2, 3, 4, 5, 8, -1, 6, -1, *range(9, 15)]
    torch.manual_seed(0)
    old = model_for_spec("deepfm", old_spec, SMALL).eval()
    new = model_for_spec("deepfm", new_spec, SMALL).eval()
    assert warm_start(new, new_spec, old, old_spec) == {"kept_rows": 14, "new_rows": 2}
    num = torch.tensor([[0.5]])
    old_row = torch.tensor([[2, 1, 3, PADDING, 4, PADDING]])  # C1 2, apps {a, c}, tags {4}
    new_row = torch.tensor([[2, 3, 1, PADDING, PADDING, PADDING, 4, PADDING, PADDING, PADDING]])
    with torch.no_grad():
        torch.testing.assert_close(new(new_row, num), old(old_row, num))
    single = FeatureSpec(
        (old_spec.fields[0], FieldSpec("apps", "vocab", cardinality=3, vocabulary=("a", "b")), *old_spec.fields[2:])
    )
    with pytest.raises(ValueError, match="field apps was multi-valued, is single-valued now"):
        warm_start(model_for_spec("deepfm", single, SMALL), single, old, old_spec)


# The training recipe: each piece is a setting, and each acts as its setting says.


def test_batch_norm_sits_before_each_hidden_activation_and_normalises_the_batch():
    model = build("deepfm", CARDINALITIES, N_NUMERIC, {**SMALL, "batch_norm": True})
    layers = list(model.deep.mlp.layers)
    kinds = [type(layer).__name__ for layer in layers]
    assert kinds == ["Linear", "BatchNorm", "ReLU", "Dropout"] * 2 + ["Linear"]
    assert layers[0].bias is None  # the batch norm's shift replaces it
    cat, num = random_inputs(64)
    model.train()
    linear = layers[0](model.wide(cat, num)[1].flatten(1))
    mean, var = linear.mean(dim=0), linear.var(dim=0, unbiased=False)
    assert torch.allclose(layers[1](linear), (linear - mean) / (var + 1e-5).sqrt(), atol=1e-5)
    one_row = model(*random_inputs(1))  # a shard's last batch may be one row: running statistics
    assert one_row.shape == (1,) and torch.isfinite(one_row).all()
    without = build("deepfm", CARDINALITIES, N_NUMERIC, {**SMALL, "batch_norm": False})
    assert not any(isinstance(m, nn.BatchNorm1d) for m in without.modules())


def test_configs_written_before_the_recipe_keys_load_and_keep_their_form():
    config = model_config("deepfm", {"hidden_units": [8], "batch_norm": False, "embedding_lr_scale": 1.0})
    added = ("batch_norm", "embedding_weight_decay", "embedding_lr_scale")
    old = {k: v for k, v in config.to_dict().items() if k not in added}
    assert config.to_dict() == old  # at their legacy values the added keys are not written
    assert ModelConfig.from_dict(old) == config and not config.batch_norm
    assert config.replace(batch_norm=True).to_dict()["batch_norm"] is True
    with pytest.raises(ValueError, match="embedding_weight_decay must be >= 0"):
        config.replace(embedding_weight_decay=-1.0)


def test_embedding_weight_decay_shrinks_only_the_touched_rows_by_lr_times_decay():
    model = build("fm", [50, 50], N_NUMERIC, SMALL)
    table = model.wide.rows.categorical.weight
    cat, num = torch.tensor([[1, 2], [3, 2]]), torch.rand(2, N_NUMERIC)

    def step(row_decay: float) -> torch.Tensor:
        torch.manual_seed(0)
        fresh = build("fm", [50, 50], N_NUMERIC, SMALL)
        fresh.load_state_dict(model.state_dict())
        optimizers = make_optimizers(fresh, 0.1, row_decay=row_decay)
        fresh(cat, num).sum().backward()
        optimizers.step()
        return fresh.wide.rows.categorical.weight.detach()

    plain, decayed = step(0.0), step(2.0)
    touched = torch.tensor([1, 3, 50 + 2])
    untouched = torch.ones(100, dtype=torch.bool)
    untouched[touched] = False
    assert torch.allclose(decayed[touched], plain[touched] * (1 - 0.1 * 2.0))
    assert torch.equal(decayed[untouched], table.detach()[untouched])


def test_embedding_lr_scale_steps_the_tables_by_its_multiple_and_the_schedule_keeps_the_ratio():
    torch.manual_seed(0)
    model = build("fm", [50, 50], N_NUMERIC, SMALL)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizers = make_optimizers(model, 0.01, sparse_lr_scale=5.0)
    model(torch.tensor([[1, 2], [3, 2]]), torch.rand(2, N_NUMERIC)).sum().backward()
    optimizers.step()
    # Adam's first step moves every element with a gradient by its step size (m / sqrt(v) = sign).
    table = model.wide.rows.categorical.weight
    moved = (table.detach() - before["wide.rows.categorical.weight"]).abs()
    assert torch.allclose(moved[[1, 3, 52]], torch.full_like(moved[[1, 3, 52]], 0.05), rtol=1e-3)
    assert torch.allclose((model.wide.bias.detach() - before["wide.bias"]).abs(), torch.tensor(0.01), rtol=1e-3)
    assert optimizers.lr == pytest.approx(0.01)
    optimizers.set_lr(0.002)
    assert [g["lr"] for o in optimizers for g in o.param_groups] == pytest.approx([0.01, 0.002])
    with pytest.raises(ValueError, match="embedding_lr_scale must be > 0"):
        model_config("fm", {"embedding_lr_scale": 0.0})


def test_gradient_clipping_bounds_the_global_norm_of_sparse_and_dense_gradients():
    model = build("deepfm", CARDINALITIES, N_NUMERIC, SMALL)
    cat, num = random_inputs(32)
    (model(cat, num) * 1000).sum().backward()
    params = list(model.parameters())
    before = clip_grad_norm(params, max_norm=1.0)
    assert before > 1.0
    after = clip_grad_norm(params, max_norm=1.0)  # measures the clipped gradients, changes nothing
    assert after == pytest.approx(1.0, rel=1e-4)
    # (the call above may have clipped again by a float32 rounding above 1.0: hence rel)
    assert clip_grad_norm(params, max_norm=10.0) == pytest.approx(after, rel=1e-5)


def test_plateau_decay_lowers_the_rate_on_a_validation_without_gain_down_to_its_floor():
    decay = PlateauDecay(factor=0.5, floor=3e-4)
    assert decay.next_lr(1e-3, improved=True) == 1e-3
    assert decay.next_lr(1e-3, improved=False) == 5e-4
    assert decay.next_lr(5e-4, improved=False) == 3e-4
    assert decay.next_lr(3e-4, improved=False) == 3e-4
    assert decay.next_lr(1e-4, improved=False) == 1e-4  # already below the floor: left alone
    assert PlateauDecay().next_lr(1e-3, improved=False) == 1e-3
    with pytest.raises(ValueError, match="lr_decay_factor"):
        PlateauDecay(factor=0.0)
    optimizers = make_optimizers(build("deepfm", CARDINALITIES, N_NUMERIC, SMALL), 1e-3)
    optimizers.set_lr(2e-4)
    assert optimizers.lr == 2e-4 and all(g["lr"] == 2e-4 for o in optimizers for g in o.param_groups)


def test_dropout_and_embedding_size_are_settings_the_model_follows():
    model = build("deepfm", CARDINALITIES, N_NUMERIC, {**SMALL, "dropout": 0.3, "embedding_dim": 7})
    assert {m.p for m in model.modules() if isinstance(m, nn.Dropout)} == {0.3}
    assert model.wide.rows.categorical.weight.shape[1] == 1 + 7
    cat, num = random_inputs(16)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(cat, num), model(cat, num))  # no dropout noise at evaluation
