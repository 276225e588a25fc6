"""Vocabularies as distributed data, on real Spark: stored as Parquet next to the spec, joined when
encoding (broadcast or shuffled alike), capped or hybrid, carried by bundles, mapped by warm starts."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from pyspark.sql import functions as F
from testkit import in_hash_order, model_for_spec

from deepfm.core.features import FeatureSpec
from deepfm.core.schema import LogSchema
from deepfm.models.bundle import load_bundle, save_bundle
from deepfm.models.surgery import embedding_row_map, warm_start
from deepfm.prep import vocabulary
from deepfm.prep.encoding import FeatureConfig, encode, fit
from deepfm.prep.vocabulary import COUNT_BITS

pytestmark = pytest.mark.slow

SCHEMA = LogSchema.from_dict(
    {
        "name": "tiny",
        "columns": [
            {"name": "label", "kind": "label"},
            {"name": "site", "kind": "categorical"},
            {"name": "apps", "kind": "multi", "max_items": 3, "item_delimiter": "|"},
        ],
    }
)
COLUMNS = "label int, site string, apps array<string>, rid int"  # rid: the row's position


def config(**site) -> FeatureConfig:
    defaults = {"transform": "vocab", "min_count": 1, "max_size": 0, "oov_buckets": 0, "hash_buckets": 8}
    conf = {"defaults": {"categorical": defaults, "multi": defaults}, "fields": {"site": site}}
    return FeatureConfig.from_dict(conf, SCHEMA)


def rows(spark, sites: list[str | None], apps: list[list[str]] | None = None):
    apps = apps or [[s] if s else [] for s in sites]
    return spark.createDataFrame([(i % 2, s, a, i) for i, (s, a) in enumerate(zip(sites, apps))], COLUMNS)


def sites(df) -> list[int]:
    """The encoded site of each row, in row order (a shuffle join reorders rows)."""
    return [r.site for r in df.orderBy("rid").collect()]


# Skewed: one hot value, a long tail, missing values.
TRAIN = ["hot"] * 50 + [f"v{i:03d}" for i in range(200)] + ["warm"] * 5 + [None] * 20


def test_vocabularies_are_stored_by_spark_next_to_the_spec(tmp_path, spark):
    spec = fit(rows(spark, TRAIN), config(), str(tmp_path))
    site = spec.field("site")
    assert (site.vocabulary, site.vocabulary_size, site.cardinality) == ((), 202, 203)
    table = spec.vocabulary_table(site).to_pydict()
    assert table["value"][:2] == ["hot", "warm"] and table["index"] == list(range(1, 203))
    stored = pq.read_table(tmp_path / "vocabularies")
    assert sorted(set(stored.column("field").to_pylist())) == ["apps", "site"]
    spec.save(tmp_path)
    assert "v199" not in (tmp_path / "feature_spec.json").read_text()  # the JSON holds sizes and hashes
    assert FeatureSpec.load(tmp_path) == spec

    # The version follows the vocabulary's content: one more value, another version.
    grown = fit(rows(spark, [*TRAIN, "new"]), config(), str(tmp_path / "grown"))
    assert grown.version != spec.version and grown.field("site").vocabulary_hash != site.vocabulary_hash
    again = fit(rows(spark, list(reversed(TRAIN))), config(), str(tmp_path / "again"))
    assert again.version == spec.version


def test_ranks_follow_counts_exactly_also_past_the_rank_keys_count_bits(spark):
    # Two fields, each numbered 1.. in its own partition; counts from 2**24 on share the sort key's
    # front and are ordered by the full count behind it; ties of count 3 follow the value's hash.
    huge = 2**COUNT_BITS
    counts = [("a", "x", huge + 5), ("a", "y", huge * 3), ("a", "z", 3), ("a", "w", 3), ("a", "u", 9), ("a", "r", 1)]
    counts += [("b", "x", 2), ("b", "q", huge)]
    frame = spark.createDataFrame(counts, "field string, value string, count long")
    ranked = vocabulary.rank(frame, {"a": 2, "b": 1}, {"a": 0, "b": 1}, summed=True).collect()
    got = {(r["field"], r["value"]): r["index"] for r in ranked}
    tied = in_hash_order(spark, ["z", "w"])
    ints = spark.range(-50, 5000).select(F.col("id").cast("int").alias("k"))
    assert all(vocabulary.murmur3_int(r["k"]) == r["h"] for r in ints.select("k", F.hash("k").alias("h")).collect())
    assert got == {("a", "y"): 1, ("a", "x"): 2, ("a", "u"): 3, ("a", tied[0]): 4, ("a", tied[1]): 5, ("b", "q"): 1}


def test_a_shuffled_vocabulary_encodes_exactly_as_a_broadcast_one(tmp_path, spark):
    spec = fit(rows(spark, TRAIN), config(), str(tmp_path))
    probe = ["hot"] * 30 + ["v007", "unseen", None, "warm", "v199"] * 20
    apps = [[s, "hot", "unseen"] if s else [] for s in probe]
    df = rows(spark, probe, apps)
    columns = ["site", *spec.field("apps").columns]
    broadcast = sorted(tuple(r) for r in encode(df, spec).select(*columns).collect())
    shuffled_df = encode(df, spec, broadcast_max=0)
    plan = shuffled_df._jdf.queryExecution().executedPlan().toString()
    # One join of all values with all vocabularies, one of the rows with their indexes: not one
    # per vocabulary lookup (site and apps' 3 slots); the rows are shuffled once.
    assert plan.count("SortMergeJoin") == 2 and "BroadcastHashJoin" not in plan
    assert plan.count("Exchange hashpartitioning") == 4  # values, vocabularies, indexes, rows
    assert sorted(tuple(r) for r in shuffled_df.select(*columns).collect()) == broadcast
    doubled = encode(df.unionByName(df), spec, broadcast_max=0).select(*columns).collect()
    assert sorted(tuple(r) for r in doubled) == sorted(broadcast * 2)  # identical rows share a row key
    index = dict(zip(*spec.vocabulary_table(spec.field("site")).to_pydict().values(), strict=True))
    assert {r[0] for r in broadcast} == {0, index["hot"], index["v007"], index["warm"], index["v199"]}


def test_top_k_caps_and_hybrid_buckets_for_values_out_of_the_vocabulary(tmp_path, spark):
    spec = fit(rows(spark, TRAIN), config(max_size=2, oov_buckets=4), str(tmp_path))
    site = spec.field("site")
    assert (site.vocabulary_size, site.oov_buckets, site.cardinality) == (2, 4, 7)
    probe = ["hot", "warm", "v001", "v002", "unseen", None]
    got = sites(encode(rows(spark, probe), spec))
    assert got[:2] == [1, 2] and got[-1] == 0  # in the vocabulary; missing
    assert all(3 <= i <= 6 for i in got[2:5]) and len(set(got[2:5])) > 1  # hashed into the extra buckets
    assert got == sites(encode(rows(spark, probe), spec, broadcast_max=0))
    plain = fit(rows(spark, TRAIN), config(max_size=2), str(tmp_path / "plain"))
    assert sites(encode(rows(spark, probe), plain)) == [1, 2, 0, 0, 0, 0]


def test_bundles_carry_their_vocabularies_and_warm_starts_map_rows_by_value(tmp_path, spark):
    old = fit(rows(spark, TRAIN), config(), str(tmp_path / "old"))
    old.save(tmp_path / "old")
    torch.manual_seed(0)
    model = model_for_spec("deepfm", old, {"embedding_dim": 4, "hidden_units": [8]})
    save_bundle(tmp_path / "bundle", model, old)
    shutil.rmtree(tmp_path / "old")  # the bundle needs nothing but itself
    bundle = load_bundle(tmp_path / "bundle")
    assert (tmp_path / "bundle" / "vocabularies").is_dir() and bundle.spec.directory == str(tmp_path / "bundle")
    probe = sites(encode(rows(spark, ["hot", "v123", "unseen"]), bundle.spec))
    index = dict(zip(*bundle.spec.vocabulary_table(bundle.spec.field("site")).to_pydict().values(), strict=True))
    assert probe == [index["hot"], index["v123"], 0]

    # Tomorrow's vocabulary: "hot" keeps its rank, "new" arrives, v000..v099 drop out, the rest move.
    tomorrow = ["hot"] * 50 + [f"v{i:03d}" for i in range(100, 200)] + ["new"] * 8 + ["warm"] * 5
    new = fit(rows(spark, tomorrow), config(), str(tmp_path / "new"))
    row_map = embedding_row_map(new, bundle.spec)
    new_index = dict(zip(*new.vocabulary_table(new.field("site")).to_pydict().values(), strict=True))
    assert row_map[new_index["hot"]] == index["hot"] and row_map[new_index["v150"]] == index["v150"]
    assert row_map[new_index["new"]] == -1 and row_map[0] == 0
    fresh = model_for_spec("deepfm", new, {"embedding_dim": 4, "hidden_units": [8]})
    counts = warm_start(fresh, new, bundle.model, bundle.spec)
    weights, old_weights = fresh.wide.rows.categorical.weight, bundle.model.wide.rows.categorical.weight
    assert torch.equal(weights[new_index["v150"]], old_weights[index["v150"]])
    assert counts["kept_rows"] == int(np.sum(row_map >= 0))
    meta = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert meta["feature_spec"]["fields"][0]["vocabulary"] == []
