"""The preprocessing job on real Spark: reconciliation, fitting on train only, encodings, reruns."""
from __future__ import annotations

import datetime as dt
import gzip
import json
import math
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from deepfm.config import REPO_ROOT, deep_update, load_conf
from deepfm.encoding import encode
from deepfm.features import FeatureSpec, FieldSpec
from deepfm.preprocess import Options, run
from deepfm.rawlogs import CATEGORICAL_FIELDS, INTEGER_FIELDS, REASONS, InputDayError, parse, read_raw_day
from deepfm.synthetic import write_logs

pytestmark = pytest.mark.slow

END = dt.date(2026, 11, 4)  # test day; train days 2026-11-01..03
TRAIN_DAYS = 3


def line(label: str = "0", ints: dict[str, str] | None = None, cats: dict[str, str] | None = None) -> str:
    ints, cats = ints or {}, cats or {}
    return "\t".join([label, *(ints.get(f, "1") for f in INTEGER_FIELDS),
                      *(cats.get(f, "0000000a") for f in CATEGORICAL_FIELDS)])


def write_day(root: Path, day: dt.date, lines: list[str]) -> None:
    folder = root / f"date={day.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "part-00000.tsv").write_text("\n".join(lines) + "\n")


def options(raw: Path, out: Path, **features: object) -> Options:
    return Options(input=str(raw), output=str(out), end_date=END, train_days=TRAIN_DAYS,
                   features=deep_update(load_conf("features"), features))


def read_split(out: Path, split: str) -> dict[str, list]:
    return pq.read_table(out / split).to_pydict()


@pytest.fixture(scope="module")
def generated(tmp_path_factory, spark):
    """Generated logs with malformed rows, preprocessed once."""
    root = tmp_path_factory.mktemp("gen")
    manifest = write_logs(root / "raw", days=TRAIN_DAYS + 1, rows_per_day=800,
                          start_date=END - dt.timedelta(days=TRAIN_DAYS), seed=5, malformed_fraction=0.03)
    summary = run(spark, options(root / "raw", root / "out"))
    return root, manifest, summary


def test_counts_reconcile_per_day_with_malformed_rows(generated, spark):
    root, manifest, summary = generated
    for day, counts in summary["days"].items():
        planted = manifest["days"][day]
        assert counts["rows_read"] == planted["rows"] == counts["rows_written"] + counts["rows_quarantined"]
        assert counts["quarantined_by_reason"] == {r: n for r, n in planted["malformed"].items() if n}
    assert set(summary["totals"]) == {"rows_read", "rows_written", "rows_quarantined"}
    quarantine = spark.read.parquet(str(root / "out" / "quarantine"))
    assert quarantine.count() == summary["totals"]["rows_quarantined"] > 0
    assert {r.reason for r in quarantine.select("reason").distinct().collect()} <= set(REASONS)
    written = len(read_split(root / "out", "train")["label"]) + len(read_split(root / "out", "test")["label"])
    assert written == summary["totals"]["rows_written"]


def test_output_layout_schema_and_spec(generated):
    root, _, summary = generated
    out = root / "out"
    spec = FeatureSpec.load(out)
    assert summary["spec_version"] == spec.version
    assert [p.name for p in (out / "train").iterdir() if p.is_dir()] != []
    schema = pq.read_schema(next((out / "train").rglob("*.parquet")))
    assert str(schema.field("label").type) == "float"
    assert str(schema.field("C1").type) == "int32" and str(schema.field("I1").type) == "float"
    assert pq.ParquetDataset(out / "train").files, "train split has files"
    assert sum(pq.ParquetFile(f).num_row_groups for f in pq.ParquetDataset(out / "train").files) >= 2 * TRAIN_DAYS
    columns = read_split(out, "train")
    for field in spec.categorical_fields:
        assert max(columns[field.name]) < field.cardinality and min(columns[field.name]) >= 0


def test_vocabulary_is_fitted_on_train_days_only_and_oov_missing_are_zero(tmp_path, spark):
    raw = tmp_path / "raw"
    for k in range(TRAIN_DAYS):
        write_day(raw, END - dt.timedelta(days=TRAIN_DAYS - k),
                  [line(cats={"C1": "aaaaaaaa"})] * 3 + [line(cats={"C1": "cccccccc"})])
    write_day(raw, END, [line(cats={"C1": "bbbbbbbb"})] * 5 + [line(cats={"C1": ""}), line(cats={"C1": "aaaaaaaa"})])
    run(spark, options(raw, tmp_path / "out", defaults={"categorical": {"min_count": 4}}))

    c1 = FeatureSpec.load(tmp_path / "out").field("C1")
    assert c1.vocabulary == ("aaaaaaaa",)  # 9 train occurrences; cccccccc (3) is below min_count
    assert "bbbbbbbb" not in c1.vocabulary  # frequent on the test day only
    assert sorted(read_split(tmp_path / "out", "test")["C1"]) == [0] * 6 + [1]  # OOV and missing -> 0
    assert set(read_split(tmp_path / "out", "train")["C1"]) == {0, 1}


def test_log_and_bucketize_against_hand_computed_values(tmp_path, spark):
    raw = tmp_path / "raw"
    values = ["-5", "0", "1", "3", "4", "9", ""]
    write_day(raw, END, [line(ints={"I1": v, "I2": v}) for v in values])
    parsed, _ = parse(read_raw_day(spark, str(raw), END))
    spec = FeatureSpec(fields=(FieldSpec("I1", "log"), FieldSpec("I2", "bucketize", 4, boundaries=(1.0, 4.0))))
    rows = encode(parsed.select("label", "I1", "I2"), spec).collect()
    by_raw = dict(zip(values, rows))
    expected_log = {"-5": 0.0, "0": 0.0, "1": math.log(2), "3": math.log(4), "4": math.log(5), "9": math.log(10), "": 0.0}
    expected_bucket = {"-5": 1, "0": 1, "1": 2, "3": 2, "4": 3, "9": 3, "": 0}  # 0 = missing; [b_i, b_i+1) buckets
    for value, row in by_raw.items():
        assert row["I1"] == pytest.approx(expected_log[value], rel=1e-6), value
        assert row["I2"] == expected_bucket[value], value


def test_hashing_is_stable_across_runs(generated, tmp_path, spark):
    root, _, _ = generated
    hashing = {"defaults": {"categorical": {"transform": "hash", "hash_buckets": 1000}}}
    first = run(spark, options(root / "raw", tmp_path / "a", **hashing))
    second = run(spark, options(root / "raw", tmp_path / "b", **hashing))
    assert first["spec_version"] == second["spec_version"]
    a, b = read_split(tmp_path / "a", "test"), read_split(tmp_path / "b", "test")
    key = lambda cols: sorted(zip(*(cols[f] for f in ("label", *INTEGER_FIELDS, *CATEGORICAL_FIELDS))))  # noqa: E731
    assert key(a) == key(b)
    assert all(0 <= v < 1000 for f in CATEGORICAL_FIELDS for v in a[f])
    assert max(len(set(a[f])) for f in CATEGORICAL_FIELDS) > 10


def test_rerun_replaces_the_output_without_duplicates(generated, spark):
    root, _, summary = generated
    before = sorted(p.name for p in (root / "out" / "train").rglob("*.parquet"))
    again = run(spark, options(root / "raw", root / "out"))
    assert again["totals"] == summary["totals"]
    assert len(read_split(root / "out", "train")["label"]) + len(read_split(root / "out", "test")["label"]) \
        == summary["totals"]["rows_written"]
    assert len(sorted(p.name for p in (root / "out" / "train").rglob("*.parquet"))) == len(before)
    assert not list(root.glob("out.tmp-*")), "no staging directory left behind"


def test_criteo_layout_with_gzip(tmp_path, spark):
    manifest = write_logs(tmp_path / "raw", days=TRAIN_DAYS + 1, rows_per_day=300,
                          start_date=END - dt.timedelta(days=TRAIN_DAYS), seed=1, layout="criteo", gz=True)
    assert (tmp_path / "raw" / "day_0.gz").exists()
    with gzip.open(tmp_path / "raw" / "day_0.gz", "rt") as fh:
        assert len(fh.read().splitlines()) == 300
    opts = options(tmp_path / "raw", tmp_path / "out")
    summary = run(spark, Options(**{**opts.__dict__, "layout": "auto", "day0_date": END - dt.timedelta(days=TRAIN_DAYS)}))
    assert summary["layout"] == "criteo"
    assert summary["totals"]["rows_read"] == sum(d["rows"] for d in manifest["days"].values())


def test_missing_day_fails_naming_it_unless_skipped(tmp_path, spark):
    raw = tmp_path / "raw"
    for k in (1, 2):  # END-3 is missing
        write_day(raw, END - dt.timedelta(days=k), [line()] * 5)
    write_day(raw, END, [line()] * 5)
    with pytest.raises(InputDayError, match=(END - dt.timedelta(days=3)).isoformat()):
        run(spark, options(raw, tmp_path / "out"))
    assert not (tmp_path / "out").exists(), "a failed run leaves no output"
    opts = options(raw, tmp_path / "out")
    summary = run(spark, Options(**{**opts.__dict__, "skip_missing_days": True}))
    assert (END - dt.timedelta(days=3)).isoformat() in summary["skipped_days"]


def test_cli_help_explains_every_option():
    result = subprocess.run([sys.executable, str(REPO_ROOT / "jobs" / "preprocess.py"), "--help"],
                            capture_output=True, text=True)
    assert result.returncode == 0
    for option in ("--input", "--output", "--end-date", "--train-days", "--test-days", "--layout",
                   "--skip-missing-days", "--categorical-transform", "--min-count", "--hash-buckets"):
        assert option in result.stdout
