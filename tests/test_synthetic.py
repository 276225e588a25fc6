"""The click-log generator: any schema's layout, deterministic, Criteo's files unchanged, malformed
rows of each reason, late rows, a learnable signal (one Spark test: LogFormat reads what was planted)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import hashlib
import json
import re
import subprocess
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
from testkit import deepfm_command

from deepfm.cli.config import load_schema
from deepfm.core.schema import Column, LogSchema
from deepfm.prep.rawlogs import LogFormat
from deepfm.prep.synthetic import CEILINGS, MANIFEST, build_world, generate_day, reference_ceilings, write_logs

START = dt.date(2026, 3, 1)
CRITEO, AVAZU, APPSTORE = (load_schema(name) for name in ("criteo", "avazu", "appstore"))
# The app-store log as Parquet, its event time in unix seconds: the typed format and the other clock.
APPSTORE_PARQUET = dataclasses.replace(
    APPSTORE,
    name="appstore-parquet",
    format="parquet",
    columns=tuple(dataclasses.replace(c, time_format="unix") if c.kind == "timestamp" else c for c in APPSTORE.columns),
)
SCHEMAS = {s.name: s for s in (CRITEO, AVAZU, APPSTORE, APPSTORE_PARQUET)}
# What the generator wrote before it knew schemas (2 days x 500 rows, seed 3, 5% malformed).
CRITEO_SHA256 = {
    "date=2026-03-01/part-00000.tsv": "7f03120f807ff88437e5dd362c7c943ef07800c6b0f0325389586ddb0679ab16",
    "date=2026-03-02/part-00000.tsv": "b8b25db159d535437bd9dfcd41e428c8a4159f42fde9c7aeb210406489332d7f",
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_criteo_files_are_byte_for_byte_the_ones_written_before_schemas(tmp_path):
    write_logs(tmp_path / "date", 2, 500, START, schema=CRITEO, seed=3, malformed_fraction=0.05)
    write_logs(
        tmp_path / "criteo", 2, 500, START, schema=CRITEO, seed=3, layout="criteo", gz=True, malformed_fraction=0.05
    )
    assert {name: sha256((tmp_path / "date" / name).read_bytes()) for name in CRITEO_SHA256} == CRITEO_SHA256
    for k, name in enumerate(CRITEO_SHA256):
        assert sha256(gzip.decompress((tmp_path / "criteo" / f"day_{k}.gz").read_bytes())) == CRITEO_SHA256[name]


@pytest.mark.parametrize("schema", SCHEMAS.values(), ids=SCHEMAS)
def test_same_seed_same_bytes_and_days_do_not_depend_on_how_many(tmp_path, schema):
    manifest = write_logs(tmp_path / "a", 2, 300, START, schema=schema, seed=3)
    write_logs(tmp_path / "b", 3, 300, START, schema=schema, seed=3)
    write_logs(tmp_path / "c", 2, 300, START, schema=schema, seed=4)
    for day in manifest["days"].values():
        first = (tmp_path / "a" / day["file"]).read_bytes()
        assert first == (tmp_path / "b" / day["file"]).read_bytes()
        assert first != (tmp_path / "c" / day["file"]).read_bytes()


def test_criteo_lines_follow_the_layout_and_malformed_rows_are_one_defect_each():
    world = build_world(CRITEO, 0)
    logs = generate_day(world, START, 0, 5000, malformed_fraction=0.04)
    valid = [line for line in logs.records if re.search(LogFormat(CRITEO).valid_line or "", line)]
    assert len(logs.records) - len(valid) == sum(logs.malformed.values())
    assert list(logs.malformed) == list(LogFormat(CRITEO).reasons) and all(n > 20 for n in logs.malformed.values())
    fields = np.array([line.split("\t") for line in valid], dtype=object)
    assert fields.shape[1] == len(CRITEO.columns)
    assert set(fields[:, 0]) == {"0", "1"}
    ints, cats = fields[:, 1:14], fields[:, 14:]
    assert (ints == "").mean(axis=0).max() > 0.1 and (cats == "").mean(axis=0).max() > 0.1  # missing values
    assert any(v.startswith("-") for v in ints[:, 1])  # I2 goes negative, as in Criteo
    assert all(re.fullmatch(r"[0-9a-f]{8}", v) for v in cats[:, 0] if v)
    # Zipf-skewed: a large field's most frequent value is far above uniform.
    _, freq = np.unique(cats[:, 8][cats[:, 8] != ""], return_counts=True)
    assert freq.max() / freq.sum() > 50 / len(world.values[8])


def read_records(root, manifest, schema: LogSchema) -> list:
    """Every day's records as written: text and JSON lines (a header dropped), Parquet rows."""
    records = []
    for day in manifest["days"].values():
        path = root / day["file"]
        if schema.format == "parquet":
            records += pq.read_table(path).to_pylist()
            continue
        lines = path.read_text().splitlines()
        assert (lines[0] == ",".join(c.name for c in schema.columns)) == schema.header
        records += lines[schema.header :]
    return records


@pytest.mark.parametrize("schema", SCHEMAS.values(), ids=SCHEMAS)
def test_each_schema_gets_its_layout_and_records_that_its_checks_accept_but_the_planted_defects(tmp_path, schema):
    manifest = write_logs(tmp_path, 2, 600, START, schema=schema, seed=1, malformed_fraction=0.1)
    extension = {"criteo": "tsv", "avazu": "csv", "appstore": "json", "appstore-parquet": "parquet"}[schema.name]
    assert [d["file"] for d in manifest["days"].values()] == [
        f"date=2026-03-0{k}/part-00000.{extension}" for k in (1, 2)
    ]
    records = read_records(tmp_path, manifest, schema)
    assert len(records) == sum(d["rows"] for d in manifest["days"].values())
    malformed = sum((Counter(d["malformed"]) for d in manifest["days"].values()), Counter())
    assert list(manifest["days"]["2026-03-01"]["malformed"]) == list(LogFormat(schema).reasons)
    typed = {"malformed_record", "bad_numeric", "bad_timestamp"}  # Parquet's typed records cannot be broken
    assert {r for r, n in malformed.items() if n} == set(LogFormat(schema).reasons) - (
        typed if schema.format == "parquet" else set()
    )
    if schema.format == "text":  # the line regex checks all but the timestamps' values
        rejected = [line for line in records if not re.fullmatch(LogFormat(schema).valid_line or "", line)]
        assert len(rejected) == malformed.total() - malformed["bad_timestamp"]
    if schema.format == "json":
        parsed = [r for r in map(json_or_none, records) if r is not None]
        assert len(records) - len(parsed) == malformed["malformed_record"]
        records = parsed
    if schema.format != "text":  # typed values, but for the planted bad labels and numbers
        apps = [r["installed_apps"] for r in records]
        assert all(isinstance(a, list) for a in apps) and 10 < max(map(len, apps)) <= 16  # max_items
        odd = [r["app_id"] for r in records if r["app_id"] and not re.fullmatch(r"app_id_[0-9a-f]{8}", r["app_id"])]
        assert len(odd) <= malformed["value_too_long"]
        clean = [
            r["clicked"] in (0, 1) and isinstance(r["age"], int | None) and isinstance(r["app_price"], float | None)
            for r in records
        ]
        assert clean.count(False) == malformed["bad_label"] + malformed["bad_numeric"]


def json_or_none(line: str) -> dict | None:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


@pytest.mark.parametrize(
    ("schema", "worth"),
    [(CRITEO, {}), (AVAZU, {"hour_hour": 0.005}), (APPSTORE, {"installed_apps": 0.03, "event_time_hour": 0.005})],
    ids=["criteo", "avazu", "appstore"],
)
def test_planted_signal_is_learnable_and_ctr_realistic(schema, worth):
    logs = generate_day(build_world(schema, 0), START, 1, 10_000, malformed_fraction=0.0)
    assert 0.2 < logs.ctr < 0.3
    assert 0.7 < logs.oracle_auc < 0.85
    # Without the installed apps, or the hour of the event time, the true model knows less.
    assert logs.oracle_auc_without.keys() == worth.keys()
    assert all(logs.oracle_auc_without[name] < logs.oracle_auc - loss for name, loss in worth.items())


def test_event_times_fall_in_their_day_and_late_rows_move_to_the_next_days_file(tmp_path):
    manifest = write_logs(tmp_path, 3, 1000, START, schema=AVAZU, seed=2, malformed_fraction=0.0)
    days = list(manifest["days"])
    for k, (day, entry) in enumerate(manifest["days"].items()):
        lines = (tmp_path / entry["file"]).read_text().splitlines()[1:]
        hours = Counter(line.split(",")[2][:6] for line in lines)  # yyMMdd of yyMMddHH
        late = manifest["days"][days[k - 1]]["late_rows"] if k else 0
        own = 1000 - entry["late_rows"]
        assert hours == Counter({dt.date.fromisoformat(day).strftime("%y%m%d"): own}) + Counter(
            {dt.date.fromisoformat(days[k - 1]).strftime("%y%m%d"): late}
        )
        assert 0 < entry["late_rows"] < 30 and entry["rows"] == own + late
    files = [(tmp_path / entry["file"]).read_text().splitlines()[1:] for entry in manifest["days"].values()]
    ids = [line.split(",")[0] for lines in files for line in lines]
    assert len(set(ids)) == len(ids)  # the ignored id column: unique row ids


def test_cli_writes_criteo_gzip_layout_and_manifest(tmp_path):
    options = "--days 2 --rows-per-day 300 --start-date 2026-03-01 --layout criteo --gzip --malformed-fraction 0.05"
    args = [*deepfm_command("generate-logs"), "--output", str(tmp_path), *options.split(), "--seed", "9"]
    result = subprocess.run(args, capture_output=True, text=True, check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["day_0.gz", "day_1.gz", MANIFEST]
    with gzip.open(tmp_path / "day_1.gz", "rt") as fh:
        assert len(fh.read().splitlines()) == 300
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["days"]["2026-03-02"]["file"] == "day_1.gz" and manifest["schema"] == CRITEO.to_dict()
    assert set(json.loads(result.stdout.strip().splitlines()[-1])) == {"2026-03-01", "2026-03-02"}


def test_cli_writes_a_schema_preset(tmp_path):
    args = [*deepfm_command("generate-logs"), "--output", str(tmp_path), "--schema", "appstore", "--days", "1"]
    subprocess.run([*args, "--rows-per-day", "50", "--start-date", "2026-03-01"], capture_output=True, check=True)
    assert (tmp_path / "date=2026-03-01" / "part-00000.json").read_text().count("\n") == 50
    assert json.loads((tmp_path / MANIFEST).read_text())["schema"] == APPSTORE.to_dict()


def test_what_the_generator_cannot_write_is_refused(tmp_path):
    with pytest.raises(ValueError, match="criteo layout holds text"):
        write_logs(tmp_path, 1, 10, START, schema=APPSTORE, layout="criteo")
    words = LogSchema("words", (Column("label", "label"), Column("word", "categorical", pattern="[a-z]+")))
    with pytest.raises(ValueError, match="no values drawn for pattern"):
        build_world(words, 0)


@pytest.mark.parametrize("schema", [CRITEO, APPSTORE], ids=["criteo", "appstore"])
def test_reference_ceilings_bound_what_a_model_can_learn_from_the_training_days(tmp_path, schema):
    manifest = write_logs(tmp_path, 3, 4000, dt.date(2026, 3, 1), schema=schema, seed=4)
    days = sorted(manifest["days"])
    everything = reference_ceilings(manifest, days[:2], days[2], min_count=0)
    assert everything["seen values, all orders"] == everything["true probability"]  # every effect is known
    assert manifest["days"][days[2]]["oracle_auc"] == round(everything["true probability"]["auc"], 4)
    typical = reference_ceilings(manifest, days[:2], days[2], min_count=3)
    aucs = [typical[name]["auc"] for name in CEILINGS]
    assert aucs[0] > aucs[3] > aucs[2] > aucs[1] > 0.55  # fewer known effects, a lower ceiling
    nothing = reference_ceilings(manifest, days[:2], days[2], min_count=10**9)
    assert len({round(nothing[name]["auc"], 12) for name in CEILINGS[1:]}) == 1  # numeric effects only


def test_log_format_finds_exactly_the_planted_defects_and_dates_rows_by_event_time(tmp_path, spark):
    for schema in SCHEMAS.values():
        manifest = write_logs(tmp_path / schema.name, 3, 400, START, schema=schema, seed=5, malformed_fraction=0.1)
        log_format, entries = LogFormat(schema), manifest["days"]
        files = {dt.date.fromisoformat(day): [str(tmp_path / schema.name / e["file"])] for day, e in entries.items()}
        checked = log_format.with_reason(log_format.read_days(spark, files)).cache()
        found = Counter((str(r.day), r.reason) for r in checked.where("reason IS NOT NULL").collect())
        assert found == Counter({(day, r): n for day, e in entries.items() for r, n in e["malformed"].items()})
        # A day's valid rows, its late ones in the next day's file included (the last day's are not written).
        parsed = log_format.parse_valid(checked.where("reason IS NULL").drop("reason", "field"))
        dated = Counter(str(r.day) for r in parsed.select("day").collect())
        last = max(entries)
        valid = {day: 400 - sum(e["malformed"].values()) - e["late_rows"] * (day == last) for day, e in entries.items()}
        assert dated == Counter(valid), schema.name
        assert (entries[str(START)]["late_rows"] > 0) == bool(schema.event_time)  # folder days would differ
        checked.unpersist()
