"""Declared log schemas on real Spark: validation, parsing and encoding of text, JSON and Parquet
records, multi-valued fields, event-time days, and scoring's refusal of logs of another schema."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from pyspark.sql import functions as F
from testkit import CRITEO, ENV, deepfm_command, model_for_spec

from deepfm.cli.config import load_defaults, load_schema
from deepfm.core.features import FeatureSpec, FieldSpec
from deepfm.core.schema import LogSchema
from deepfm.models.bundle import save_bundle
from deepfm.prep.encoding import FeatureConfig, encode, value_counts
from deepfm.prep.preprocess import Options
from deepfm.prep.preprocess import run as run_preprocess
from deepfm.prep.rawlogs import LogFormat, quarantined
from deepfm.prep.synthetic import write_logs
from deepfm.serving.score import SchemaMismatchError, ScoreOptions, run

pytestmark = pytest.mark.slow

AVAZU_SAMPLE = Path(__file__).parent / "data" / "avazu_sample.csv"
SAMPLE_DAY = dt.date(2014, 10, 21)  # every row of the sample is from the hour 14102100
DAY = dt.date(2026, 3, 4)

# A small log of every kind of column, written as text, JSON lines or Parquet by the tests.
SMALL = {
    "name": "small",
    "format": "text",
    "delimiter": ",",
    "header": True,
    "positive": ["yes"],
    "negative": ["no"],
    "event_time": "ts",
    "derived": ["hour", "weekday"],
    "columns": [
        {"name": "rid", "kind": "ignore"},
        {"name": "clicked", "kind": "label"},
        {"name": "ts", "kind": "timestamp", "time_format": "yyyy-MM-dd HH:mm:ss"},
        {"name": "site", "kind": "categorical", "max_length": 5},
        {"name": "code", "kind": "categorical", "pattern": "[ABC][0-9]"},
        {"name": "visits", "kind": "integer"},
        {"name": "price", "kind": "float"},
        {"name": "apps", "kind": "multi", "max_items": 3, "max_length": 4, "item_delimiter": "|"},
    ],
}


def small_schema(**changes) -> LogSchema:
    return LogSchema.from_dict({**SMALL, **changes})


def write(root: Path, day: dt.date, name: str, text: str) -> Path:
    folder = root / f"date={day.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return root


def checked_and_parsed(spark, logs: LogFormat, root: Path, day: dt.date = DAY):
    raw = logs.read_day(spark, str(root), day)
    checked = logs.with_reason(raw)
    return checked, logs.parse_valid(checked.where(F.col("reason").isNull()).drop("reason", "field"))


def test_text_records_get_the_reason_and_field_of_their_first_problem(tmp_path, spark):
    logs = LogFormat(small_schema())
    header = "rid,clicked,ts,site,code,visits,price,apps"
    records = {
        "1,yes,2026-03-04 23:59:59,ab,A1,7,1.5e2,x|y||z|w": None,  # empty item dropped, 3 items kept
        "2,no,2026-03-04 00:00:00,,,,,": None,  # every feature missing
        "3,no,2026-03-04 00:00:00,ab,A1,7,1.5": ("wrong_field_count", None),
        "4,maybe,2026-03-04 00:00:00,ab,A1,7,1.5,x": ("bad_label", None),
        "5,no,2026-03-04 25:00:00,ab,A1,7,1.5,x": ("bad_timestamp", "ts"),
        "6,no,2026-03-04 00:00:00,abcdef,A1,7,1.5,x": ("value_too_long", "site"),
        "7,no,2026-03-04 00:00:00,ab,D1,7,1.5,x": ("bad_categorical", "code"),
        "8,no,2026-03-04 00:00:00,ab,A1,7.0,1.5,x": ("bad_numeric", "visits"),
        "9,no,2026-03-04 00:00:00,ab,A1,7,1.5.1,x": ("bad_numeric", "price"),
        "10,no,2026-03-04 00:00:00,ab,A1,7,1.5,x|toolong": ("value_too_long", "apps"),
        "11,no,2026-03-04 00:00:00,abcdef,D1,x,1.5,x": ("value_too_long", "site"),  # the first problem
    }
    root = write(tmp_path, DAY, "part-0.csv", "".join(f"{x}\n" for x in [header, *records]))
    checked, parsed = checked_and_parsed(spark, logs, root)
    found = {r.raw_line: (r.reason, r.field) if r.reason else None for r in checked.collect()}
    assert found == records  # the header line is not a record
    assert logs.valid_line is not None and set(logs.reasons) == {
        "wrong_field_count", "bad_label", "bad_timestamp", "value_too_long", "bad_categorical", "bad_numeric"
    }  # fmt: skip
    rows = {r.visits: r for r in parsed.collect()}
    full, empty = rows[7], rows[None]
    assert (full.clicked, full.site, full.code, full.price, full.apps) == (1, "ab", "A1", 150.0, ["x", "y", "z"])
    assert (full.day, full.ts_hour, full.ts_weekday) == (DAY, 23, 4)  # 2026-03-04 is a Wednesday
    assert (empty.clicked, empty.site, empty.code, empty.price, empty.apps) == (0, None, None, None, [])
    assert parsed.columns == [
        "impression_id", "day", "clicked", "site", "code", "visits", "price", "apps", "ts_hour", "ts_weekday"
    ]  # fmt: skip
    quarantine = quarantined(logs.rejected(logs.read_day(spark, str(root), DAY)))  # what the jobs write
    assert quarantine.columns == ["raw_bytes", "raw_line", "day", "reason", "field"]
    assert {r.raw_line: (r.reason, r.field) for r in quarantine.collect()} == {k: v for k, v in records.items() if v}


def test_json_and_parquet_records_are_checked_field_by_field(tmp_path, spark):
    schema = small_schema(format="json", header=False)
    records = [
        {"rid": 1, "clicked": "yes", "ts": "2026-03-04 10:00:00", "site": "ab", "code": "B2", "visits": 3,
         "price": 2.5, "apps": ["x", "y"]},
        {"rid": 2, "clicked": "no", "ts": "2026-03-04 11:00:00"},  # absent keys: missing values
        {"rid": 3, "clicked": "no", "ts": "2026-03-04 11:00:00", "visits": "many"},
        {"rid": 4, "clicked": "no", "ts": "2026-03-04 11:00:00", "apps": ["x", "toolong"]},
    ]  # fmt: skip
    lines = [json.dumps(r) for r in records] + ['{"rid": 5, "clicked": "no", "ts": ']
    root = write(tmp_path / "json", DAY, "part-0.json", "".join(f"{x}\n" for x in lines))
    checked, parsed = checked_and_parsed(spark, LogFormat(schema), root)
    reasons = sorted((r.reason, r.field) for r in checked.where("reason IS NOT NULL").collect())
    assert reasons == [("bad_numeric", "visits"), ("malformed_record", None), ("value_too_long", "apps")]
    rows = sorted(parsed.collect(), key=lambda r: r.ts_hour)
    assert [(r.clicked, r.site, r.visits, r.price, r.apps) for r in rows] == [
        (1, "ab", 3, 2.5, ["x", "y"]),
        (0, None, None, None, []),
    ]

    # The same log as Parquet (typed columns, multi as a list): a record is the row's JSON text.
    table = pa.Table.from_pylist(
        [{**{c["name"]: None for c in SMALL["columns"]}, **r} for r in records[:2]],
        schema=pa.schema([("rid", pa.int64()), ("clicked", pa.string()), ("ts", pa.string()), ("site", pa.string()),
                          ("code", pa.string()), ("visits", pa.int64()), ("price", pa.float64()),
                          ("apps", pa.list_(pa.string()))]),
    )  # fmt: skip
    folder = tmp_path / "parquet" / f"date={DAY.isoformat()}"
    folder.mkdir(parents=True)
    pq.write_table(table, folder / "part-0.parquet")
    checked, parsed = checked_and_parsed(spark, LogFormat(small_schema(format="parquet")), tmp_path / "parquet")
    assert checked.where("reason IS NOT NULL").count() == 0
    assert sorted((r.clicked, r.visits, r.apps) for r in parsed.collect()) == [(0, None, []), (1, 3, ["x", "y"])]


def test_event_time_dates_rows_by_their_timestamp_and_unix_seconds_by_the_zone(tmp_path, spark):
    header = "rid,clicked,ts,site,code,visits,price,apps"
    late = "1,no,2026-03-03 23:30:00,ab,A1,1,1,x"  # logged into the next day's folder
    root = write(tmp_path, DAY, "part-0.csv", f"{header}\n{late}\n")
    _, parsed = checked_and_parsed(spark, LogFormat(small_schema()), root)
    assert [(r.day, r.ts_hour) for r in parsed.collect()] == [(DAY - dt.timedelta(days=1), 23)]

    unix = small_schema(columns=[{**c, "time_format": "unix"} if c["name"] == "ts" else c for c in SMALL["columns"]],
                        time_zone="Asia/Tokyo")  # fmt: skip
    seconds = int(dt.datetime(2026, 3, 3, 20, 0, tzinfo=dt.UTC).timestamp())  # 05:00 on the 4th in Tokyo
    root = write(tmp_path / "unix", DAY, "part-0.csv", f"{header}\n1,no,{seconds},ab,A1,1,1,x\n")
    _, parsed = checked_and_parsed(spark, LogFormat(unix), root)
    assert [(r.day, r.ts_hour) for r in parsed.collect()] == [(DAY, 5)]


def test_the_public_avazu_sample_is_valid_avazu(tmp_path, spark):
    logs = LogFormat(load_schema("avazu"))
    folder = tmp_path / f"date={SAMPLE_DAY.isoformat()}"
    folder.mkdir()
    shutil.copy(AVAZU_SAMPLE, folder / "train.csv")
    checked, parsed = checked_and_parsed(spark, logs, tmp_path, SAMPLE_DAY)
    assert checked.count() == 100 and checked.where("reason IS NOT NULL").count() == 0
    rows = parsed.collect()
    clicks = sum(line.split(",")[1] == "1" for line in AVAZU_SAMPLE.read_text().splitlines()[1:])
    assert sum(r.click for r in rows) == clicks and len(rows) == 100
    assert {(r.day, r.hour_hour, r.hour_weekday) for r in rows} == {(SAMPLE_DAY, 0, 3)}  # a Tuesday
    assert rows[0].site_id == "1fbe01fe" and rows[0].C21 == "79"


def test_multi_valued_items_are_counted_and_encoded_into_slots(spark):
    data = [(["a", "b", "a"], "x"), (["b"], "x"), ([], None), (["c", "z", "a", "b"], "y")]
    rows = spark.createDataFrame(data, "apps array<string>, site string")
    counts = {(r.field, r.value): r["count"] for r in value_counts(rows, ["apps", "site"], multi=["apps"]).collect()}
    assert counts == {("apps", "a"): 3, ("apps", "b"): 3, ("apps", "c"): 1, ("apps", "z"): 1, ("site", "x"): 2,
                      ("site", "y"): 1}  # fmt: skip
    vocab = FieldSpec("apps", "vocab", 3, vocabulary=("a", "b"), max_items=3)
    hashed = FieldSpec("apps", "hash", 7, hash_buckets=7, max_items=3)
    for field in (vocab, hashed):
        spec = FeatureSpec((field, FieldSpec("site", "hash", 5, hash_buckets=5)))
        slots = [tuple(r) for r in encode(rows, spec).select(*field.columns).collect()]
        if field is vocab:  # OOV "c"/"z" -> 0; slots past the list -> -1; an empty list is item 0
            assert slots == [(1, 2, 1), (2, -1, -1), (0, -1, -1), (0, 0, 1)]
        else:  # the same hash for the same item in any slot
            assert slots[0][0] == slots[0][2] == slots[3][2] and slots[2] == (0, -1, -1) and slots[1][1:] == (-1, -1)
            assert all(0 < s < 7 for s in (*slots[0], slots[1][0], *slots[3]))


def test_spec_records_its_schema_and_older_specs_keep_their_version():
    fields = (FieldSpec("I1", "log"), FieldSpec("C1", "hash", 8, hash_buckets=8))
    legacy = FeatureSpec(fields)
    recorded = FeatureSpec(fields, schema=CRITEO)
    before = {"fields": [f.to_dict() for f in fields], "hash_seed": 0, "label": "label"}  # a spec's payload until now
    assert legacy.version == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()[:16]
    assert recorded.version != legacy.version
    assert FeatureSpec.from_dict(recorded.to_dict()).schema == CRITEO
    assert FeatureSpec.from_dict(legacy.to_dict()).schema is None
    assert "max_items" not in json.dumps(legacy.to_dict())  # single-valued fields: the same JSON as before


@pytest.fixture(scope="module")
def avazu_bundle(tmp_path_factory):
    """An (untrained) DeepFM bundle for the Avazu schema: enough to score with."""
    schema = load_schema("avazu")
    fields = tuple(FieldSpec(name, "hash", 64, hash_buckets=64) for name in schema.feature_kinds)
    spec = FeatureSpec(fields, label=schema.label, schema=schema)
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("avazu_bundle")
    save_bundle(root / "bundle", model_for_spec("deepfm", spec, {"embedding_dim": 4, "hidden_units": [8]}), spec)
    return root / "bundle"


def score_options(tmp_path: Path, bundle: Path, raw: Path, day: dt.date, **kw) -> ScoreOptions:
    return ScoreOptions(date=day, model=str(bundle), table=str(tmp_path / "scores"), input_root=str(raw), **kw)


def test_scoring_reads_the_models_schema_and_refuses_logs_of_another(tmp_path, spark, avazu_bundle):
    raw = tmp_path / "raw"
    (raw / f"date={SAMPLE_DAY.isoformat()}").mkdir(parents=True)
    shutil.copy(AVAZU_SAMPLE, raw / f"date={SAMPLE_DAY.isoformat()}" / "train.csv")
    summary = run(spark, score_options(tmp_path, avazu_bundle, raw, SAMPLE_DAY))
    assert (summary["rows_in"], summary["scored"], summary["rejected"]) == (100, 100, 0) and summary["reconciled"]

    with pytest.raises(SchemaMismatchError, match="declared as schema 'criteo'"):
        run(spark, score_options(tmp_path / "declared", avazu_bundle, raw, SAMPLE_DAY, schema=CRITEO))
    criteo_day = write(tmp_path / "criteo", DAY, "part-0.tsv", "0\t1\t2" + "\t" * 37 + "\n")
    with pytest.raises(SchemaMismatchError, match="none of the day's first 1 records is a valid 'avazu' record"):
        run(spark, score_options(tmp_path / "other", avazu_bundle, criteo_day, DAY))
    assert not (tmp_path / "declared").exists() and not (tmp_path / "other").exists()  # refused before writing


START = dt.date(2026, 5, 1)
TRAIN = 3  # training days, then a validation day and a test day; the logs hold one day more


def train_cli(data: Path, output: Path, env: dict[str, str]) -> dict:
    """``deepfm train`` in one process: the run's summary."""
    args = ["--data", str(data), "--output", str(output), "--epochs", "2", "--batch-size", "256"]
    done = subprocess.run(deepfm_command("train", *args, "--set", "tracking.mlflow.enabled=false"), env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def written_by_event_day(manifest: dict, day: dt.date) -> int:
    """Valid rows of ``day``: those in its file, less the previous day's late ones, plus its own
    late ones (in the next day's file)."""
    days = manifest["days"]
    this, before = days[day.isoformat()], days.get((day - dt.timedelta(days=1)).isoformat(), {"late_rows": 0})
    return this["rows"] - sum(this["malformed"].values()) - before["late_rows"] + this["late_rows"]


@pytest.fixture(scope="module")
def appstore(tmp_path_factory, spark):
    """Generated app-store logs (JSON lines, installed apps, event time with late rows),
    preprocessed with the job's own function."""
    root = tmp_path_factory.mktemp("appstore")
    schema = load_schema("appstore")
    manifest = write_logs(root / "raw", TRAIN + 3, 3000, START, schema=schema, seed=3, malformed_fraction=0.01)
    end = START + dt.timedelta(days=TRAIN + 1)
    features = FeatureConfig.from_dict(load_defaults("features"), schema)
    opts = Options(input=str(root / "raw"), output=str(root / "out"), end_date=end, train_days=TRAIN,
                   features=features, day_cache=str(root / "cache"))  # fmt: skip
    return root, manifest, run_preprocess(spark, opts)


def test_appstore_logs_are_split_by_event_day_and_counts_reconcile(appstore):
    _, manifest, summary = appstore
    window = [START + dt.timedelta(days=k) for k in range(TRAIN + 2)]
    for day in window:
        assert summary["days"][day.isoformat()]["rows_written"] == written_by_event_day(manifest, day)
    late_folder = summary["days"][(window[-1] + dt.timedelta(days=1)).isoformat()]
    assert late_folder["split"] == "late" and late_folder["rows_written"] == 0
    totals = summary["totals"]
    assert totals["rows_read"] == totals["rows_written"] + totals["rows_quarantined"] + totals["rows_outside_window"]
    assert totals["rows_outside_window"] > 1000  # the day after the window: read for its late rows only
    assert summary["schema"]["days_by"] == "event_time" and summary["day_cache"] is None
    assert summary["missing_by_field"]["installed_apps"] > 0


def test_appstore_multi_valued_field_is_encoded_into_slots(appstore):
    root, _, _ = appstore
    spec = FeatureSpec.load(root / "out")
    apps = spec.field("installed_apps")
    assert (apps.transform, apps.max_items, spec.schema.name) == ("vocab", 16, "appstore")
    assert {"event_time_hour", "event_time_weekday"} <= {f.name for f in spec.fields}
    table = pq.read_table(root / "out" / "train")
    slots = np.stack([table.column(c).to_numpy() for c in apps.columns], axis=1)
    assert table.schema.field("installed_apps__0").type == pa.int32() and table.num_columns > len(spec.fields)
    assert (slots[:, 0] >= 0).all() and (slots == -1).any() and (slots > 0).sum() > slots.shape[0]
    filled = slots >= 0  # items first, then padding
    assert (filled[:, :-1] >= filled[:, 1:]).all()


def test_appstore_trains_and_scores_into_delta(appstore, spark, tmp_path):
    root, _, _ = appstore
    trained = train_cli(root / "out", tmp_path / "run", ENV)
    assert trained["val_auc"] > 0.6
    test_day = START + dt.timedelta(days=TRAIN + 1)
    table = tmp_path / "scores"
    options = ScoreOptions(date=test_day, model=trained["bundle"], table=str(table), input_root=str(root / "raw"))
    first = run(spark, options)
    again = run(spark, options)  # a rerun replaces the day
    assert first["reconciled"] and again["reconciled"] and first["scored"] == again["scored"] > 1000
    assert spark.read.format("delta").load(str(table)).count() == first["scored"]
    assert first["auc"] > 0.6


def test_avazu_preset_from_the_command_line_and_the_public_sample_scored(tmp_path, spark):
    schema = load_schema("avazu")
    write_logs(tmp_path / "raw", TRAIN + 2, 1500, START, schema=schema, seed=4, malformed_fraction=0.01)
    end = START + dt.timedelta(days=TRAIN + 1)
    args = ["--schema", "avazu", "--input", str(tmp_path / "raw"), "--output", str(tmp_path / "out"),
            "--end-date", end.isoformat(), "--train-days", str(TRAIN), "--day-cache", ""]  # fmt: skip
    done = subprocess.run(deepfm_command("preprocess", *args), env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout[done.stdout.index("{") :])
    assert summary["schema"]["name"] == "avazu" and summary["totals"]["rows_quarantined"] > 0
    assert set(summary["rejected_by_field"]) >= {"(record)", "hour"}  # malformed records, bad timestamps
    trained = train_cli(tmp_path / "out", tmp_path / "run", ENV)
    assert trained["val_auc"] > 0.55

    sample = tmp_path / "sample" / f"date={SAMPLE_DAY.isoformat()}"
    sample.mkdir(parents=True)
    shutil.copy(AVAZU_SAMPLE, sample / "train.csv")
    table = tmp_path / "scores"
    scored = run(spark, ScoreOptions(date=SAMPLE_DAY, model=trained["bundle"], table=str(table),
                                     input_root=str(tmp_path / "sample")))  # fmt: skip
    assert (scored["rows_in"], scored["scored"], scored["rejected"]) == (100, 100, 0) and scored["reconciled"]
    ctr = [r.ctr for r in spark.read.format("delta").load(str(table)).collect()]
    assert len(ctr) == 100 and all(0 < c < 1 for c in ctr)
