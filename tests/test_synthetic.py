"""The click-log generator: deterministic, Criteo's raw layout, malformed rows of each kind, a learnable signal."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import re
import subprocess

import numpy as np
from testkit import deepfm_command

from deepfm.prep.rawlogs import CATEGORICAL_FIELDS, INTEGER_FIELDS, N_COLUMNS, REASONS, VALID_LINE
from deepfm.prep.synthetic import CEILINGS, MANIFEST, build_world, generate_day, reference_ceilings, write_logs

START = dt.date(2026, 3, 1)


def test_same_seed_same_bytes_and_days_do_not_depend_on_how_many(tmp_path):
    write_logs(tmp_path / "a", days=2, rows_per_day=500, start_date=START, seed=3)
    write_logs(tmp_path / "b", days=3, rows_per_day=500, start_date=START, seed=3)
    write_logs(tmp_path / "c", days=2, rows_per_day=500, start_date=START, seed=4)
    for name in ("date=2026-03-01", "date=2026-03-02"):
        a = (tmp_path / "a" / name / "part-00000.tsv").read_bytes()
        assert a == (tmp_path / "b" / name / "part-00000.tsv").read_bytes()
        assert a != (tmp_path / "c" / name / "part-00000.tsv").read_bytes()


def test_lines_follow_the_layout_and_malformed_rows_are_one_defect_each():
    world = build_world(0)
    logs = generate_day(world, 0, 0, 5000, malformed_fraction=0.04)
    valid = [line for line in logs.lines if re.search(VALID_LINE, line)]
    assert len(logs.lines) - len(valid) == sum(logs.malformed.values())
    assert all(logs.malformed[r] > 20 for r in REASONS)
    fields = np.array([line.split("\t") for line in valid], dtype=object)
    assert fields.shape[1] == N_COLUMNS
    assert set(fields[:, 0]) == {"0", "1"}
    ints = fields[:, 1 : 1 + len(INTEGER_FIELDS)]
    cats = fields[:, 1 + len(INTEGER_FIELDS) :]
    assert (ints == "").mean(axis=0).max() > 0.1 and (cats == "").mean(axis=0).max() > 0.1  # missing values
    assert any(v.startswith("-") for v in ints[:, 1])  # I2 goes negative, as in Criteo
    assert all(re.fullmatch(r"[0-9a-f]{8}", v) for v in cats[:, 0] if v)
    # Zipf-skewed: a large field's most frequent value is far above uniform.
    big = CATEGORICAL_FIELDS.index("C9")
    _, freq = np.unique(cats[:, big][cats[:, big] != ""], return_counts=True)
    assert freq.max() / freq.sum() > 50 / len(world.values[big])


def test_planted_signal_is_learnable_and_ctr_realistic():
    logs = generate_day(build_world(0), 0, 1, 20_000, malformed_fraction=0.0)
    assert 0.2 < logs.ctr < 0.3
    assert 0.72 < logs.oracle_auc < 0.85


def test_cli_writes_criteo_gzip_layout_and_manifest(tmp_path):
    options = "--days 2 --rows-per-day 300 --start-date 2026-03-01 --layout criteo --gzip --malformed-fraction 0.05"
    args = [*deepfm_command("generate-logs"), "--output", str(tmp_path), *options.split(), "--seed", "9"]
    result = subprocess.run(args, capture_output=True, text=True, check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["day_0.gz", "day_1.gz", MANIFEST]
    with gzip.open(tmp_path / "day_1.gz", "rt") as fh:
        assert len(fh.read().splitlines()) == 300
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["days"]["2026-03-02"]["file"] == "day_1.gz"
    assert set(json.loads(result.stdout.strip().splitlines()[-1])) == {"2026-03-01", "2026-03-02"}


def test_reference_ceilings_bound_what_a_model_can_learn_from_the_training_days(tmp_path):
    manifest = write_logs(tmp_path, days=3, rows_per_day=4000, start_date=dt.date(2026, 3, 1), seed=4)
    days = sorted(manifest["days"])
    everything = reference_ceilings(manifest, days[:2], days[2], min_count=0)
    assert everything["seen values, all orders"] == everything["true probability"]  # every effect is known
    assert manifest["days"][days[2]]["oracle_auc"] == round(everything["true probability"]["auc"], 4)
    typical = reference_ceilings(manifest, days[:2], days[2], min_count=3)
    aucs = [typical[name]["auc"] for name in CEILINGS]
    assert aucs[0] > aucs[3] > aucs[2] > aucs[1] > 0.55  # fewer known effects, a lower ceiling
    nothing = reference_ceilings(manifest, days[:2], days[2], min_count=10**9)
    assert len({round(nothing[name]["auc"], 12) for name in CEILINGS[1:]}) == 1  # numeric effects only
