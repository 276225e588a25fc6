"""Raw-log parsing, feature encoding and the preprocessing job, on real Spark with small inputs."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import math
import os
import shutil
import signal
import stat
import struct
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from pyspark.sql import Observation
from pyspark.sql import functions as F
from testkit import CATEGORICAL_FIELDS, CRITEO, ENV, INTEGER_FIELDS, deepfm_command, in_hash_order

from deepfm.cli.config import deep_update, load_defaults
from deepfm.core import fs
from deepfm.core.features import FeatureSpec, FieldSpec
from deepfm.core.schema import LogSchema
from deepfm.prep.encoding import FeatureConfig, encode, fill_missing, fit, present_counts
from deepfm.prep.preprocess import Options, Window, run
from deepfm.prep.rawlogs import InputDayError, LogFormat, day_paths, detect_layout, quarantined
from deepfm.prep.synthetic import write_logs

END = dt.date(2026, 3, 4)  # test day; training days 2026-03-01..03
TRAIN_DAYS = 2  # then a validation day (END - 1) and the test day (END)
DAYS = TRAIN_DAYS + 2
FIRST = END - dt.timedelta(days=DAYS - 1)
ENCODED = ("label", *INTEGER_FIELDS, *CATEGORICAL_FIELDS)
LOGS = LogFormat(CRITEO)
REASONS = LOGS.reasons


def line(label: str = "0", ints: dict[str, str] | None = None, cats: dict[str, str] | None = None) -> str:
    ints, cats = ints or {}, cats or {}
    return "\t".join(
        [label, *(ints.get(f, "1") for f in INTEGER_FIELDS), *(cats.get(f, "0000000a") for f in CATEGORICAL_FIELDS)]
    )


def write_day(root: Path, day: dt.date, lines: list[str], name: str = "part-00000.tsv") -> None:
    folder = root / f"date={day.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(f"{x}\n" for x in lines))


def features(overrides: dict | None = None) -> FeatureConfig:
    return FeatureConfig.from_dict(deep_update(load_defaults("features"), overrides or {}), CRITEO)


def options(raw: Path, out: Path, features_overrides: dict | None = None, **kw) -> Options:
    values = {"input": str(raw), "output": str(out), "end_date": END, "train_days": TRAIN_DAYS, **kw}
    return Options(features=features(features_overrides), **values)


def parse(lines):
    """Typed valid rows and quarantined rows of ``read_days`` lines, as the jobs split them."""
    checked = LOGS.with_reason(lines)
    return LOGS.parse_valid(checked.where(F.col("reason").isNull())), quarantined(LOGS.rejected(lines))


def rows(out: Path, split: str) -> list[tuple]:
    table = pq.read_table(out / split).to_pydict()
    return sorted(zip(*(table[c] for c in ENCODED)))


def test_one_scan_of_several_days_gives_each_line_its_files_day(tmp_path, spark):
    root = tmp_path / "raw logs"  # a space: input_file_name() spells the path URI-encoded
    days = [END - dt.timedelta(days=k) for k in range(3)]
    for k, day in enumerate(days):
        write_day(root, day, [line(str(k % 2))] * (k + 1), "part 0.tsv")  # the same file name every day
    files = {day: day_paths(spark, str(root), day) for day in days}
    lines = LOGS.read_days(spark, files).groupBy("day", "source_file").count().collect()
    assert sorted((r.day, r.source_file, r["count"]) for r in lines) == [
        (day, "part%200.tsv", k + 1) for k, day in reversed(list(enumerate(days)))
    ]


@pytest.fixture(scope="module")
def generated(tmp_path_factory, spark):
    """Generated logs with malformed rows of every kind, preprocessed once."""
    root = tmp_path_factory.mktemp("generated")
    manifest = write_logs(root / "raw", DAYS, 1500, FIRST, schema=CRITEO, seed=11, malformed_fraction=0.02)
    return root, manifest, run(spark, options(root / "raw", root / "out"))


def test_parse_gives_each_malformed_line_its_reason_and_types_the_rest(tmp_path, spark):
    valid = {
        line("1", {"I1": "-3", "I2": "", "I3": "123456789012345678"}, {"C1": ""}): (
            1,
            -3,
            None,
            123456789012345678,
            None,
        ),
        line("0"): (0, 1, 1, 1, "0000000a"),
    }
    malformed = {
        line() + "\t": "wrong_field_count",
        line().rsplit("\t", 1)[0]: "wrong_field_count",
        "": "wrong_field_count",
        line("2"): "bad_label",
        line(""): "bad_label",
        line("0.5", {"I1": "x"}): "bad_label",  # the first defect wins
        line(ints={"I5": "1.5"}): "bad_numeric",
        line(ints={"I6": " 7"}): "bad_numeric",
        line(ints={"I7": "1234567890123456789"}): "bad_numeric",  # 19 digits
        line(ints={"I13": "-"}): "bad_numeric",
        line(cats={"C2": "ABCDEF12"}): "bad_categorical",
        line(cats={"C3": "0123456"}): "bad_categorical",
        line(cats={"C26": "xyz12345"}): "bad_categorical",
    }
    write_day(tmp_path, END, [*valid, *malformed, *valid])
    typed, quarantine = parse(LOGS.read_day(spark, str(tmp_path), END))

    assert {(r.raw_line, r.reason) for r in quarantine.collect()} == set(malformed.items())
    assert all(bytes(r.raw_bytes) == r.raw_line.encode() for r in quarantine.collect())
    assert {r.day for r in quarantine.collect()} == {END}
    got = typed.select("impression_id", "label", "I1", "I2", "I3", "C1").collect()
    assert sorted((tuple(r)[1:] for r in got), key=str) == sorted([*valid.values(), *valid.values()], key=str)
    # The id is a hash of (day, file, line): identical lines share it, distinct lines do not.
    assert len({r.impression_id for r in got}) == len(valid)
    again = parse(LOGS.read_day(spark, str(tmp_path), END))[0].select("impression_id").collect()
    assert sorted(r.impression_id for r in again) == sorted(r.impression_id for r in got)


def test_day_files_in_both_layouts(tmp_path, spark):
    write_day(tmp_path / "dated", END, [line()], "part-0.tsv")
    write_day(tmp_path / "dated", END, [line()], "part-1.tsv.gz")
    (tmp_path / "dated" / f"date={END}" / "_SUCCESS").touch()
    assert detect_layout(spark, str(tmp_path / "dated")) == "date"
    assert sorted(Path(p).name for p in day_paths(spark, str(tmp_path / "dated"), END)) == [
        "part-0.tsv",
        "part-1.tsv.gz",
    ]

    criteo = tmp_path / "criteo"
    criteo.mkdir()
    (criteo / "day_2.gz").write_bytes(gzip.compress(b"x\n"))
    (criteo / "day_3").write_text("")
    assert detect_layout(spark, str(criteo)) == "criteo"
    day0 = END - dt.timedelta(days=3)
    assert [Path(p).name for p in day_paths(spark, str(criteo), END - dt.timedelta(days=1), "criteo", day0)] == [
        "day_2.gz"
    ]
    with pytest.raises(InputDayError, match=f"input day {END}: input files .* are empty"):
        day_paths(spark, str(criteo), END, "criteo", day0)
    with pytest.raises(InputDayError, match=f"input day {day0}: no input files"):
        day_paths(spark, str(criteo), day0, "criteo", day0)


def test_job_counts_reconcile_and_output_layout(generated, spark):
    root, manifest, summary = generated
    out = root / "out"
    for day, counts in summary["days"].items():
        planted = manifest["days"][day]
        assert counts["rows_read"] == planted["rows"] == counts["rows_written"] + counts["rows_quarantined"]
        assert counts["quarantined_by_reason"] == planted["malformed"]
        split = {END.isoformat(): "test", (END - dt.timedelta(days=1)).isoformat(): "validation"}.get(day, "train")
        assert counts["split"] == split
        assert pq.read_table(out / split / f"day={day}").num_rows == counts["rows_written"]
    assert summary["train_days"] == [(END - dt.timedelta(days=k)).isoformat() for k in (3, 2)]
    assert summary["validation_days"] == [(END - dt.timedelta(days=1)).isoformat()]
    assert summary["test_days"] == [END.isoformat()] and summary["end_date"] == END.isoformat()
    assert set(summary["stage_seconds"]) == {"discover", "validate", "fit", "encode", "finalize"}
    assert json.loads((out / "summary.json").read_text()) == summary

    quarantine = spark.read.parquet(str(out / "quarantine"))
    assert quarantine.columns == ["raw_bytes", "raw_line", "reason", "field", "day"]
    by_reason = quarantine.groupBy("reason").count().collect()
    planted = {
        reason: sum(d["malformed"][reason] for d in manifest["days"].values())
        for reason in manifest["days"][str(END)]["malformed"]
    }
    assert {r.reason: r["count"] for r in by_reason} == planted
    # The field at fault: a column of the reason's kind, none for the record's shape or label.
    fields = {(r.reason, r.field and r.field[0]) for r in quarantine.select("reason", "field").distinct().collect()}
    assert fields == {("wrong_field_count", None), ("bad_label", None), ("bad_numeric", "I"), ("bad_categorical", "C")}
    rejected = summary["rejected_by_field"]
    assert sum(n for by in rejected.values() for n in by.values()) == sum(planted.values())
    assert set(rejected["(record)"]) == {"wrong_field_count", "bad_label"}
    # Missing values per field, over every valid row: the generator leaves C12 empty ~30% of the time.
    written = sum(d["rows_written"] for d in summary["days"].values())
    assert summary["missing_by_field"]["I2"] == 0 and 0.2 < summary["missing_by_field"]["C12"] / written < 0.4
    assert summary["schema"]["name"] == "criteo" and summary["totals"]["rows_outside_window"] == 0

    spec = FeatureSpec.load(out)
    assert summary["spec_version"] == spec.version
    assert spec.metadata["source_days"] == summary["train_days"]
    assert spec.metadata["train_rows"] == sum(summary["days"][d]["rows_written"] for d in summary["train_days"])
    schema = pq.read_schema(next((out / "train").rglob("*.parquet")))
    assert [schema.field(c).type for c in ("label", "I1", "C1")] == ["float", "float", "int32"]
    assert schema.names == list(ENCODED)
    for day in summary["train_days"]:  # small days still shard: several one-row-group files each
        files = [pq.ParquetFile(f) for f in (out / "train" / f"day={day}").glob("*.parquet")]
        assert len(files) >= 4 and all(f.num_row_groups == 1 for f in files)


# A field per transform (named after it), and a multi-valued one.
TRANSFORM_KINDS = {"log": "integer", "bucketize": "integer", "ivocab": "integer", "raw": "float"}
TRANSFORM_KINDS |= {"vocab": "categorical", "hybrid": "categorical", "hash": "categorical"}
APPS = {"name": "apps", "kind": "multi", "max_items": 2, "item_delimiter": "|"}
FIELDS = [{"name": name, "kind": kind} for name, kind in TRANSFORM_KINDS.items()]
MISSING_SCHEMA = LogSchema.from_dict(
    {"name": "missing", "columns": [{"name": "label", "kind": "label"}, *FIELDS, APPS]}
)


def test_missing_values_are_counted_per_field_for_every_transform(tmp_path, spark):
    """A missing value is counted whatever its encoded value shares it with: an out-of-vocabulary
    value (index 0 too), a log or raw 0.0, an empty list. Counted on the unfilled encoding, whose
    filled form is the usual one."""
    conf = deep_update(
        load_defaults("features"), {"defaults": {"categorical": {"min_count": 2}, "multi": {"min_count": 2}}}
    )
    conf["fields"] = {
        "bucketize": {"transform": "bucketize", "buckets": 3},
        "ivocab": {"transform": "vocab", "min_count": 2},
        "raw": {"transform": "raw"},
        "hybrid": {"oov_buckets": 3},
        "hash": {"transform": "hash", "hash_buckets": 16},
    }
    config = FeatureConfig.from_dict(conf, MISSING_SCHEMA)

    def gap(r: int, k: int) -> bool:  # row r lacks field k
        return r % (k + 2) == 0

    n = 60
    rows = [
        (
            r % 2,
            *(None if gap(r, k) else (r % 5) - 2 for k in range(3)),  # zeros and negatives: log 0.0
            None if gap(r, 3) else 0.0,
            *(None if gap(r, k) else f"v{r % 7 if r < 30 else r}" for k in (4, 5, 6)),  # OOV from row 30
            [] if gap(r, 7) else [f"a{r % 3}", f"new{r}"],
        )
        for r in range(n)
    ]
    types = {"integer": "long", "float": "double", "categorical": "string"}
    ddl = ", ".join(f"{name} {types[kind]}" for name, kind in TRANSFORM_KINDS.items())
    df = spark.createDataFrame(rows, f"label int, {ddl}, apps array<string>")
    spec = fit(df, config, str(tmp_path))
    unfilled = encode(df, spec, fill=False)
    observed = Observation("missing")
    filled = fill_missing(unfilled.observe(observed, *present_counts(spec)), spec)
    assert sorted(map(tuple, filled.collect())) == sorted(map(tuple, encode(df, spec).collect()))
    names = [f.name for f in spec.fields]
    missing = {name: n - observed.get[f"present {name}"] for name in names}
    assert missing == {name: sum(gap(r, k) for r in range(n)) for k, name in enumerate(names)}
    assert 0 < missing["apps"] < missing["vocab"]  # each field its own count


def test_both_layouts_and_gzip_give_the_same_encoded_data(generated, tmp_path, spark):
    root, _, summary = generated
    write_logs(
        tmp_path / "raw",
        DAYS,
        1500,
        FIRST,
        schema=CRITEO,
        seed=11,
        layout="criteo",
        gz=True,
        malformed_fraction=0.02,
    )
    assert sorted(p.name for p in (tmp_path / "raw").glob("day_*")) == [f"day_{k}.gz" for k in range(4)]
    criteo = run(spark, options(tmp_path / "raw", tmp_path / "out", day0_date=FIRST))
    assert criteo["layout"] == "criteo" and summary["layout"] == "date"
    assert criteo["spec_version"] == summary["spec_version"]
    assert criteo["days"] == summary["days"]
    for split in ("train", "validation", "test"):
        assert rows(tmp_path / "out", split) == rows(root / "out", split)


def test_vocabulary_comes_from_training_days_only_ranked_by_count(tmp_path, spark):
    raw = tmp_path / "raw"
    train = [line(cats={"C1": "aaaaaaaa"})] * 3 + [line(cats={"C1": "dddddddd"}), line(cats={"C1": "cccccccc"})]
    for k in (3, 2):
        write_day(raw, END - dt.timedelta(days=k), train)
    unseen = [line(cats={"C1": "bbbbbbbb"})] * 9 + [line(cats={"C1": ""}), line(cats={"C1": "dddddddd"})]
    write_day(raw, END - dt.timedelta(days=1), unseen)  # the validation day: no vocabulary from it either
    write_day(raw, END, unseen)
    run(spark, options(raw, tmp_path / "out", {"defaults": {"categorical": {"min_count": 2}}}))

    spec = FeatureSpec.load(tmp_path / "out")
    c1 = spec.field("C1")
    vocabulary = spec.vocabulary_table(c1).to_pydict()
    # Count desc; cccccccc and dddddddd tie at 2 and come in the order of their 64-bit hashes (unsigned).
    assert vocabulary["value"] == ["aaaaaaaa", *in_hash_order(spark, ["cccccccc", "dddddddd"])]
    assert vocabulary["index"] == [1, 2, 3] and c1.cardinality == 4 and c1.vocabulary == ()
    stored = pq.read_table(tmp_path / "out" / "vocabularies")  # written by Spark, next to the spec
    assert "C1" in set(stored.column("field").to_pylist()) <= set(CATEGORICAL_FIELDS)
    test_c1 = sorted(r[ENCODED.index("C1")] for r in rows(tmp_path / "out", "test"))
    d_index = vocabulary["value"].index("dddddddd") + 1
    assert test_c1 == [0] * 10 + [d_index]  # bbbbbbbb (test day only) and missing -> 0
    # No line was malformed: every day still has its (empty) quarantine folder.
    quarantine = tmp_path / "out" / "quarantine"
    assert sorted(p.name for p in quarantine.glob("day=*")) == [
        f"day={END - dt.timedelta(days=k)}" for k in (3, 2, 1, 0)
    ]
    assert all(pq.read_table(day).num_rows == 0 for day in quarantine.glob("day=*"))


def xxh64(data: bytes, seed: int = 42) -> int:
    """Reference XXH64 (what Spark's xxhash64 computes) for inputs under 32 bytes, as a signed long."""
    mask, p1, p2, p3, p4, p5 = (
        (1 << 64) - 1,
        11400714785074694791,
        14029467366897019727,
        1609587929392839161,
        9650029242287828579,
        2870177450012600261,
    )
    rotl = lambda x, r: ((x << r) | (x >> (64 - r))) & mask  # noqa: E731
    h, i = (seed + p5 + len(data)) & mask, 0
    for i in range(0, len(data) - 7, 8):
        h = (rotl(h ^ (rotl((struct.unpack_from("<Q", data, i)[0] * p2) & mask, 31) * p1 & mask), 27) * p1 + p4) & mask
    i = len(data) - len(data) % 8
    if len(data) - i >= 4:
        h, i = (rotl(h ^ (struct.unpack_from("<I", data, i)[0] * p1 & mask), 23) * p2 + p3) & mask, i + 4
    for b in data[i:]:
        h = rotl(h ^ (b * p5 & mask), 11) * p1 & mask
    h = ((h ^ (h >> 33)) * p2) & mask
    h = ((h ^ (h >> 29)) * p3) & mask
    h ^= h >> 32
    return h - (1 << 64) if h >> 63 else h


def test_hash_index_is_the_documented_formula_so_it_is_stable_everywhere(spark):
    values = [("deadbeef", 7), ("0000000a", None), (None, 123), ("ffffffff", -1)]
    df = spark.createDataFrame(values, "C1 string, I1 bigint")
    spec = FeatureSpec(
        (FieldSpec("I1", "hash", 1000, hash_buckets=1000), FieldSpec("C1", "hash", 1000, hash_buckets=1000)), 7
    )
    got = [(r.C1, r.I1) for r in encode(df, spec).collect()]
    seed = xxh64(struct.pack("<i", 7))  # xxhash64(7, value): the int seed is hashed first, then the value
    index = lambda v: 0 if v is None else 1 + xxh64(f"{v}".encode(), seed) % 999  # noqa: E731  (Python % is pmod)
    assert got == [(index(c), index(i)) for c, i in values]
    assert got[0] == (513, 552)  # pinned: a change of formula or seed handling breaks old models


def test_log_raw_and_bucketize_math(tmp_path, spark):
    values = [-5, 0, 1, 3, 4, 9, None]
    df = spark.createDataFrame([(v, v, v, 1) for v in values], "I1 bigint, I2 bigint, I3 bigint, label int")
    spec = FeatureSpec(
        (FieldSpec("I1", "log"), FieldSpec("I2", "raw"), FieldSpec("I3", "bucketize", 4, boundaries=(1.0, 4.0)))
    )
    got = encode(df, spec).collect()
    assert [r.I1 for r in got] == pytest.approx(
        [0, 0, math.log(2), math.log(4), math.log(5), math.log(10), 0], rel=1e-6
    )
    assert [r.I2 for r in got] == [-5, 0, 1, 3, 4, 9, 0]
    assert [r.I3 for r in got] == [1, 1, 2, 2, 3, 3, 0]  # 0 missing; x < 1 -> 1; 1 <= x < 4 -> 2; x >= 4 -> 3
    assert [type(r.label) for r in got] == [float] * 7

    # Fitted boundaries: quantiles of the training values, deduplicated (mostly zeros here).
    train = spark.range(1, 101).select((F.col("id") * (F.col("id") > 60).cast("long")).alias("I6"))
    conf = features({"fields": {"I6": {"transform": "bucketize", "buckets": 4}}})
    i6 = fit(
        train.select(
            "I6",
            *(F.lit(None).cast("string").alias(c) for c in CATEGORICAL_FIELDS),
            *(F.lit(1).alias(c) for c in INTEGER_FIELDS if c != "I6"),
        ),
        conf,
        str(tmp_path / "fitted"),
    ).field("I6")
    assert i6.boundaries == (0.0, 75.0) and i6.cardinality == 4


def test_rerun_replaces_the_output_and_a_failed_run_keeps_the_previous_one(generated, tmp_path, spark):
    root, _, summary = generated
    files = sorted(p.relative_to(root / "out") for p in (root / "out").rglob("*.parquet"))
    before = rows(root / "out", "train")
    again = run(spark, options(root / "raw", root / "out"))
    assert again["days"] == summary["days"] and again["spec_version"] == summary["spec_version"]
    assert len(sorted((root / "out").rglob("*.parquet"))) == len(files)
    assert rows(root / "out", "train") == before
    assert sorted(p.name for p in root.iterdir()) == ["out", "raw"], "no staging or old output left"

    for k in (2, 1, 0):  # the first training day is missing
        day = f"date={END - dt.timedelta(days=k)}"
        shutil.copytree(root / "raw" / day, tmp_path / "raw" / day)
    with pytest.raises(InputDayError, match=(END - dt.timedelta(days=3)).isoformat()):
        run(spark, options(tmp_path / "raw", root / "out"))
    assert json.loads((root / "out" / "summary.json").read_text())["finished_at"] == again["finished_at"]
    assert sorted(p.name for p in root.iterdir()) == ["out", "raw"]


def test_day_cache_keeps_what_a_day_decides_and_a_rewritten_day_is_recomputed(tmp_path, spark):
    raw, cache = tmp_path / "raw", str(tmp_path / "day_cache")
    write_logs(raw, DAYS + 1, 600, FIRST - dt.timedelta(days=1), schema=CRITEO, seed=5, malformed_fraction=0.03)
    yesterday = replace(options(raw, tmp_path / "yesterday", day_cache=cache), end_date=END - dt.timedelta(days=1))
    assert run(spark, yesterday)["day_cache"]["reused"] == {"validation": [], "value_counts": []}

    def today(out: str, **kw) -> dict:
        return run(spark, options(raw, tmp_path / out, **kw))

    def same_output(a: str, b: str) -> None:
        for split in ("train", "validation", "test"):
            assert rows(tmp_path / a, split) == rows(tmp_path / b, split)
        quarantined = [sorted(pq.read_table(tmp_path / x / "quarantine").to_pylist(), key=str) for x in (a, b)]
        assert quarantined[0] == quarantined[1] and quarantined[0]

    cached, cold = today("cached", day_cache=cache), today("cold")
    assert cached["day_cache"]["reused"] == {  # only the new test day validated; yesterday's validation day counted
        "validation": [(END - dt.timedelta(days=k)).isoformat() for k in (3, 2, 1)],
        "value_counts": [(END - dt.timedelta(days=3)).isoformat()],
    }
    assert cold["day_cache"] is None
    assert cached["days"] == cold["days"] and cached["spec_version"] == cold["spec_version"]
    cached_c1, cold_c1 = (FeatureSpec.load(tmp_path / out) for out in ("cached", "cold"))
    assert cached_c1.vocabulary_table(cached_c1.field("C1")).equals(cold_c1.vocabulary_table(cold_c1.field("C1")))
    same_output("cached", "cold")

    rewritten = END - dt.timedelta(days=2)
    day_file = next((raw / f"date={rewritten}").glob("*"))
    day_file.write_text("".join(day_file.read_text().splitlines(keepends=True)[:-100]))
    cached, cold = today("cached", day_cache=cache), today("cold")
    assert rewritten.isoformat() not in cached["day_cache"]["reused"]["validation"]
    assert rewritten.isoformat() not in cached["day_cache"]["reused"]["value_counts"]
    assert cached["days"][rewritten.isoformat()]["rows_read"] == 500
    assert cached["days"] == cold["days"] and cached["spec_version"] == cold["spec_version"]
    same_output("cached", "cold")
    assert len(list((tmp_path / "day_cache" / f"day={rewritten}").iterdir())) == 1, "the stale entry is gone"


def test_unreadable_or_empty_day_fails_naming_it_unless_skipped(tmp_path, spark):
    raw, day0 = tmp_path / "raw", FIRST
    write_logs(raw, DAYS, 200, day0, schema=CRITEO, seed=2, layout="criteo", gz=True)
    data = (raw / "day_1.gz").read_bytes()
    (raw / "day_1.gz").write_bytes(data[: len(data) // 2])  # truncated: not a whole gzip stream
    with pytest.raises(InputDayError, match=f"input day {day0 + dt.timedelta(days=1)}: unreadable"):
        run(spark, options(raw, tmp_path / "out", day0_date=day0))
    assert not (tmp_path / "out").exists()

    (raw / "day_2.gz").write_bytes(gzip.compress(b""))  # a valid gzip file without a line
    summary = run(spark, options(raw, tmp_path / "out", day0_date=day0, skip_missing_days=True))
    skipped = summary["skipped_days"]
    assert sorted(skipped) == [str(day0 + dt.timedelta(days=1)), str(day0 + dt.timedelta(days=2))]
    assert skipped[str(day0 + dt.timedelta(days=1))].startswith("unreadable")
    assert skipped[str(day0 + dt.timedelta(days=2))] == "no lines"
    assert summary["train_days"] == [str(day0)]
    assert sorted(p.name for p in (tmp_path / "out" / "quarantine").glob("day=*")) == [f"day={day0}", f"day={END}"]


@pytest.mark.slow
def test_cli_help_and_run(generated, tmp_path):
    job = deepfm_command("preprocess")
    help_text = subprocess.run([*job, "--help"], capture_output=True, text=True, check=True).stdout
    options = "--end-date --input --output --train-days --test-days --layout --day0-date --skip-missing-days "
    options += "--row-group-rows --min-row-groups-per-day --config --set --categorical-transform --min-count "
    options += "--hash-buckets --day-cache"
    for option in options.split():
        assert option in help_text
    root, _, summary = generated
    result = subprocess.run(
        [
            *job,
            "--input",
            str(root / "raw"),
            "--output",
            str(tmp_path / "{end_date}"),
            "--end-date",
            str(END),
            "--train-days",
            str(TRAIN_DAYS),
            "--categorical-transform",
            "hash",
            "--hash-buckets",
            "5000",
            "--day-cache",
            str(tmp_path / "day_cache"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout)
    assert printed["days"] == summary["days"] and printed["output"] == str(tmp_path / str(END))
    assert sorted(p.name for p in (tmp_path / "day_cache").iterdir()) == [f"day={d}" for d in summary["days"]]
    assert FeatureSpec.load(tmp_path / str(END)).field("C9").hash_buckets == 5000


def test_quarantine_keeps_any_line_losslessly_and_pandas_pyarrow_and_spark_read_it(tmp_path, spark):
    """Invalid UTF-8, a NUL, a lone CR (a line break to Spark's reader: two lines) and a 5 MB line."""
    good = line().encode()
    odd = [
        good.replace(b"0000000a", b"\xff\xfe000000", 1),  # invalid UTF-8 in a categorical
        good.replace(b"0000000a", b"000\x00000a", 1),  # a NUL byte
        good[:40] + b"\r" + good[40:],  # a CR: Spark ends a line there
        b"1\t" + b"x" * (5 * 2**20),  # a 5 MB line
    ]
    for k in range(DAYS):
        folder = tmp_path / "raw" / f"date={(END - dt.timedelta(days=k)).isoformat()}"
        folder.mkdir(parents=True)
        (folder / "part-00000.tsv").write_bytes(b"\n".join([good] * 20 + (odd if k == 0 else [])) + b"\n")
    summary = run(spark, options(tmp_path / "raw", tmp_path / "out"))
    expected = {odd[0], odd[1], good[:40], good[40:], odd[3]}  # as Spark's reader splits the lines
    assert summary["days"][END.isoformat()]["rows_quarantined"] == len(expected)
    folder = tmp_path / "out" / "quarantine" / f"day={END.isoformat()}"
    table = pq.read_table(folder)
    assert set(table.column("raw_bytes").to_pylist()) == expected  # lossless
    frame = pd.read_parquet(folder)
    assert "\ufffd" in frame.loc[frame.raw_bytes == odd[0], "raw_line"].item()  # readable: invalid bytes replaced
    assert frame.loc[frame.raw_bytes == odd[1], "raw_line"].item() == odd[1].decode()
    assert len(frame.loc[frame.raw_bytes == odd[3], "raw_line"].item()) == len(odd[3])
    assert spark.read.parquet(str(folder)).where("reason IS NOT NULL").count() == len(expected)


def _mutate(line: bytes, rng: np.random.Generator) -> bytes:
    """One random corruption: an inserted or deleted byte, an extra tab, a byte >= 0x80, a cut."""
    at = int(rng.integers(0, len(line) + 1))
    kind = int(rng.integers(0, 5))
    if kind == 0:
        byte = int(rng.choice([b for b in range(256) if b not in (0x0A, 0x0D)]))  # not a line break
        return line[:at] + bytes([byte]) + line[at:]
    if kind == 1:
        return line[:at] + line[at + 1 :]
    if kind == 2:
        return line[:at] + b"\t" + line[at:]
    if kind == 3:
        return line[:at] + bytes([int(rng.integers(0x80, 0x100))]) + line[at + 1 :]
    return line[:at]


def test_fuzzed_lines_end_valid_or_quarantined_with_a_reason_and_counts_reconcile(tmp_path, spark):
    rng = np.random.default_rng(2026)
    write_logs(tmp_path / "raw", DAYS, 400, FIRST, schema=CRITEO, seed=5, malformed_fraction=0)
    files = sorted((tmp_path / "raw").glob("date=*/*.tsv"))
    mutated: dict[str, set[bytes]] = {}
    for file in files:
        lines = file.read_bytes().split(b"\n")[:-1]
        touched = rng.random(len(lines)) < 0.3
        lines = [_mutate(x, rng) if t else x for x, t in zip(lines, touched)]
        mutated[file.parent.name.removeprefix("date=")] = {x for x, t in zip(lines, touched) if t}
        file.write_bytes(b"\n".join(lines) + b"\n")
    summary = run(spark, options(tmp_path / "raw", tmp_path / "out"))  # reconciles per day, or raises
    quarantine = pq.read_table(tmp_path / "out" / "quarantine").to_pylist()
    assert {r["reason"] for r in quarantine} <= set(REASONS)
    for day, counts in summary["days"].items():
        assert counts["rows_read"] == 400 == counts["rows_written"] + counts["rows_quarantined"]
        kept = [r["raw_bytes"] for r in quarantine if str(r["day"]) == day]
        assert len(kept) == counts["rows_quarantined"] and set(kept) <= mutated[day]  # lossless, only the touched
        assert counts["rows_quarantined"] > 0.3 * len(mutated[day])  # most corruptions break the layout


@pytest.mark.slow
def test_a_run_killed_while_encoding_reruns_to_the_same_output(generated, tmp_path):
    root, _, _ = generated
    args = ["--input", str(root / "raw"), "--output", str(tmp_path / "out"), "--end-date", str(END)]
    command = [*deepfm_command("preprocess"), *args, "--train-days", str(TRAIN_DAYS), "--day-cache", ""]
    killed = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, start_new_session=True, env=ENV)
    for log_line in killed.stderr:  # type: ignore[union-attr]
        if "stage encode: started" in log_line:
            os.killpg(killed.pid, signal.SIGKILL)  # the driver JVM and Python, mid-write
            break
    assert killed.wait(timeout=120) == -signal.SIGKILL
    assert not (tmp_path / "out").exists() and any(p.name.startswith(".out.tmp-") for p in tmp_path.iterdir())
    rerun = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    for split in ("train", "validation", "test"):
        assert rows(tmp_path / "out", split) == rows(root / "out", split)
    assert [p.name for p in tmp_path.iterdir()] == ["out"], "the killed run's staging folder is swept"
    assert_not_private(tmp_path / "out")


def assert_not_private(root: Path) -> None:
    """Every file and folder under ``root`` has the permissions the umask gives (never 0600/0700)."""
    if fs.UMASK & 0o044:
        return  # a umask that hides files from others: nothing to check
    for path in (root, *root.rglob("*")):
        assert stat.S_IMODE(path.stat().st_mode) & 0o044 == 0o044, f"{path} is private"


def test_the_window_names_each_days_split_and_refuses_ambiguous_validation():
    window = Window.of(options(Path("raw"), Path("out")))
    assert (window.train, window.validation, window.test) == (
        [FIRST, FIRST + dt.timedelta(days=1)],
        [END - dt.timedelta(days=1)],
        [END],
    )
    pipeline = Window.of(options(Path("raw"), Path("out"), train_days=7, test_days=0))  # the daily pipeline's
    assert pipeline.validation == [END] and pipeline.test == [] and len(pipeline.train) == 7
    with pytest.raises(ValueError, match="either validation_days > 0 or validation_fraction > 0"):
        Window.of(options(Path("raw"), Path("out"), validation_fraction=0.1))
    fraction = Window.of(options(Path("raw"), Path("out"), validation_days=0, validation_fraction=0.1))
    assert fraction.validation == [] and fraction.split(END - dt.timedelta(days=1)) == "train"


def test_a_validation_fraction_takes_a_seeded_share_of_the_training_rows(generated, tmp_path, spark):
    root, _, _ = generated
    opts = options(root / "raw", tmp_path / "out", validation_days=0, validation_fraction=0.25, validation_seed=3)
    summary = run(spark, opts)
    assert summary["validation_days"] == [] and summary["validation_fraction"] == 0.25
    train, validation = (pq.read_table(tmp_path / "out" / split) for split in ("train", "validation"))
    for day in summary["train_days"]:
        rows_of_day = [t.filter(pc.equal(t["day"].cast("string"), day)).num_rows for t in (train, validation)]
        assert sum(rows_of_day) == summary["days"][day]["rows_written"]
        assert 0.15 < rows_of_day[1] / sum(rows_of_day) < 0.35
    again = run(spark, replace(opts, output=str(tmp_path / "again")))
    assert rows(tmp_path / "again", "validation") == rows(tmp_path / "out", "validation")  # seeded: the same rows
    assert again["spec_version"] == summary["spec_version"]
