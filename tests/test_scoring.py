"""The daily scoring job against real Spark and real Delta, on generated click logs.

One small world: three days of synthetic logs (2% malformed), a feature spec using every
transform of the real encoder, and a DeepFM bundle saved in the real bundle format. The three
days are scored concurrently into one table (two threads here, one ``spark-submit``); the
other tests read those runs, rerun a day, or try to break the job.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from pyspark.sql import functions as F
from testkit import CATEGORICAL_FIELDS, CRITEO, INTEGER_FIELDS, model_for_spec

from deepfm import ENTRY_POINT
from deepfm.cli.config import spark_conf
from deepfm.core.features import FeatureSpec, FeatureSpecError, FieldSpec
from deepfm.core.metrics import BinaryMetrics, auc
from deepfm.models.bundle import BundleError, load_bundle, save_bundle
from deepfm.ops.spark import spark_submit_args
from deepfm.prep.encoding import encode
from deepfm.prep.rawlogs import LogFormat
from deepfm.prep.synthetic import write_logs
from deepfm.serving.delta import TableError, TableRef, ensure_table
from deepfm.serving.predict import MetricsSum, day_metrics, metrics_vector
from deepfm.serving.score import METRICS_SCHEMA, SCORES_SCHEMA, ScoreOptions, run

pytestmark = pytest.mark.slow

DAY0 = dt.date(2026, 11, 20)
DAYS = [DAY0 + dt.timedelta(days=k) for k in range(3)]
ROWS_PER_DAY = 2000


def small_spec(raw_day: Path) -> FeatureSpec:
    """Every transform the encoder has: vocab (C1's frequent values), hash, bucketize, log, raw."""
    rows = [line.split("\t") for line in (raw_day / "part-00000.tsv").read_text().splitlines()[:500]]
    c1 = Counter(r[14] for r in rows if len(r) == 40 and r[14])
    numeric = {
        "I2": FieldSpec("I2", "raw"),
        "I6": FieldSpec("I6", "bucketize", 8, boundaries=(1.0, 2.0, 4.0, 8.0, 16.0, 64.0)),
    }
    return FeatureSpec(
        fields=(
            *(numeric.get(name, FieldSpec(name, "log")) for name in INTEGER_FIELDS),
            FieldSpec("C1", "vocab", 4, vocabulary=tuple(v for v, _ in c1.most_common(3))),
            *(FieldSpec(name, "hash", 500, hash_buckets=500) for name in CATEGORICAL_FIELDS[1:]),
        ),
        hash_seed=3,
        schema=CRITEO,
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Raw logs, their generator manifest, and a DeepFM bundle with spread-out predictions."""
    root = tmp_path_factory.mktemp("scoring")
    manifest = write_logs(
        root / "raw",
        days=len(DAYS),
        rows_per_day=ROWS_PER_DAY,
        start_date=DAY0,
        schema=CRITEO,
        seed=7,
        malformed_fraction=0.02,
    )
    spec = small_spec(root / "raw" / f"date={DAY0.isoformat()}")
    torch.manual_seed(0)
    model = model_for_spec("deepfm", spec, {"embedding_dim": 4, "hidden_units": [16, 16], "embedding_init_std": 0.1})
    save_bundle(root / "bundle", model, spec)
    return {"root": root, "manifest": manifest, "bundle": root / "bundle"}


def options(world, day: dt.date, table: str, **kwargs) -> ScoreOptions:
    root = world["root"]
    return ScoreOptions(
        date=day,
        model=str(kwargs.pop("model", world["bundle"])),
        table=str(root / table),
        input_root=str(root / "raw"),
        batch_size=512,
        **kwargs,
    )


def day_rows(spark, table: Path, day: dt.date):
    return spark.read.format("delta").load(str(table)).where(F.col("date") == F.lit(day))


def history(spark, table: Path):
    return spark.sql(f"DESCRIBE HISTORY delta.`{table}`").orderBy("version").collect()


def score_cli(*args: str) -> subprocess.Popen:
    """Start ``spark-submit $(deepfm submit-args) score ARGS``, as the pipeline and users run it."""
    python = sys.executable
    env = {**os.environ, "PYSPARK_PYTHON": python, "PYSPARK_DRIVER_PYTHON": python}
    command = [
        str(Path(python).parent / "spark-submit"),
        *spark_submit_args(spark_conf({})),
        "--conf",
        "spark.sql.shuffle.partitions=2",
        ENTRY_POINT,
        "score",
    ]
    return subprocess.Popen(
        [*command, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True
    )


@pytest.fixture(scope="module")
def scored(spark, world):
    """Three runs at the same time into the pre-created table ``scores``: days 0 and 1 by two
    threads of this session, day 2 by a ``spark-submit`` of the CLI (a second JVM)."""
    root = world["root"]
    ensure_table(spark, TableRef.of(str(root / "scores")), SCORES_SCHEMA, ["date"])
    cli = score_cli(
        "--date",
        DAYS[2].isoformat(),
        "--model",
        str(world["bundle"]),
        "--input",
        str(root / "raw"),
        "--table",
        str(root / "scores"),
        "--summary",
        str(root / "cli_summary.json"),
    )
    refused = score_cli(
        "--date",
        DAYS[2].isoformat(),
        "--model",
        str(root / "no_bundle"),
        "--input",
        str(root / "raw"),
        "--table",
        str(root / "refused"),
    )
    results: dict[dt.date, object] = {}

    def score(day: dt.date) -> None:
        try:
            results[day] = run(spark, options(world, day, "scores"))
        except Exception as exc:
            results[day] = exc

    threads = [threading.Thread(target=score, args=(day,)) for day in DAYS[:2]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stdout, stderr = cli.communicate(timeout=400)
    assert all(isinstance(r, dict) for r in results.values()), {d: str(r) for d, r in results.items()}
    assert cli.returncode == 0, stdout[-3000:] + stderr[-3000:]
    return {**results, DAYS[2]: json.loads(stdout.strip().splitlines()[-1]), "refused": refused}


@pytest.fixture(scope="module")
def first_run(scored):
    return scored[DAY0]


def test_three_concurrent_runs_for_different_dates_all_commit(spark, world, scored):
    table = world["root"] / "scores"
    for day in DAYS:
        assert day_rows(spark, table, day).count() == scored[day]["scored"] > 0
    writes = [h for h in history(spark, table) if h["operation"] == "WRITE"]
    assert sorted(h["version"] for h in writes) == sorted(scored[day]["version"] for day in DAYS)


def test_cli_prints_and_saves_a_json_summary(world, scored):
    summary = scored[DAYS[2]]
    assert summary == json.loads((world["root"] / "cli_summary.json").read_text())
    assert summary["date"] == DAYS[2].isoformat() and summary["reconciled"]
    assert {"rows_in", "scored", "rejected", "mean_ctr", "auc", "logloss", "table", "version"} <= summary.keys()
    run = MlflowClient().get_run(summary["mlflow_run_id"])  # the day's metrics as a run of its own
    assert run.data.tags["model_version"] == load_bundle(world["bundle"]).version
    assert run.data.tags["date"] == DAYS[2].isoformat() and run.data.metrics["auc"] == pytest.approx(summary["auc"])


def test_cli_refusal_exits_2_with_the_reason_and_writes_nothing(world, scored):
    stdout, stderr = scored["refused"].communicate(timeout=400)
    assert scored["refused"].returncode == 2, stdout[-3000:] + stderr[-3000:]
    assert "no model bundle" in json.loads(stdout.strip().splitlines()[-1])["error"]
    assert not any(world["root"].glob("refused*"))


def test_metastore_table_needs_a_rejects_directory(spark, world):
    with pytest.raises(TableError, match="--rejects"):
        run(spark, ScoreOptions(date=DAY0, model=str(world["bundle"]), table="ctr_scores", input_root="raw"))


def test_runs_racing_to_create_a_table_both_succeed(spark, tmp_path):
    for trial in range(3):
        ref = TableRef.of(str(tmp_path / f"t{trial}"))
        errors: list[Exception] = []

        def create(ref: TableRef = ref, errors: list[Exception] = errors) -> None:
            try:
                ensure_table(spark, ref, METRICS_SCHEMA, [])
            except Exception as exc:
                errors.append(exc)

        threads = [threading.Thread(target=create) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, [str(e) for e in errors]
        assert [h["operation"] for h in history(spark, tmp_path / f"t{trial}")] == ["CREATE TABLE"]


def test_scores_equal_the_bundle_applied_in_torch(spark, world, first_run):
    table = world["root"] / "scores"
    scored = day_rows(spark, table, DAY0).select("impression_id", "ctr").toPandas()
    bundle = load_bundle(world["bundle"])
    spec = bundle.spec
    logs = LogFormat(CRITEO)
    checked = logs.with_reason(logs.read_day(spark, str(world["root"] / "raw"), DAY0))
    valid = logs.parse_valid(checked.where(F.col("reason").isNull()))
    encoded = encode(valid, spec).toPandas()
    with torch.no_grad():
        logits = bundle.model.eval()(
            torch.from_numpy(encoded[spec.categorical_columns].to_numpy(np.int64)),
            torch.from_numpy(encoded[[f.name for f in spec.numeric_fields]].to_numpy(np.float32)),
        )
    encoded["expected"] = torch.sigmoid(logits).numpy()
    # Byte-identical lines share an impression id (and their prediction): compare distinct ids.
    joined = scored.drop_duplicates("impression_id").merge(
        encoded[["impression_id", "expected"]].drop_duplicates("impression_id"), on="impression_id", how="outer"
    )
    assert len(joined) == scored["impression_id"].nunique() == encoded["impression_id"].nunique()
    np.testing.assert_allclose(joined["ctr"], joined["expected"], rtol=0, atol=1e-5)
    assert joined["ctr"].std() > 0.01, "the test model should spread its predictions"


def test_table_schema_partitioning_and_run_stamps(spark, world, first_run):
    table = world["root"] / "scores"
    df = spark.read.format("delta").load(str(table))
    assert [(f.name, f.dataType) for f in df.schema] == [(f.name, f.dataType) for f in SCORES_SCHEMA]
    assert spark.sql(f"DESCRIBE DETAIL delta.`{table}`").first()["partitionColumns"] == ["date"]
    stamps = day_rows(spark, table, DAY0).select("model_name", "model_version", "spec_version").distinct().collect()
    bundle = load_bundle(world["bundle"])
    assert [tuple(r) for r in stamps] == [("deepfm", bundle.version, bundle.spec.version)]
    assert first_run["model_version"] == bundle.version


def test_counts_reconcile_and_rejects_carry_reasons(spark, world, first_run):
    day = world["manifest"]["days"][DAY0.isoformat()]
    assert first_run["rows_in"] == day["rows"] == ROWS_PER_DAY
    assert first_run["rejected"] == sum(day["malformed"].values()) > 0
    assert first_run["scored"] + first_run["rejected"] == first_run["rows_in"]
    assert first_run["reconciled"]
    rejects = spark.read.parquet(first_run["rejects"]).groupBy("reason").count().collect()
    assert {r["reason"]: r["count"] for r in rejects} == {k: v for k, v in day["malformed"].items() if v}
    assert first_run["rejects"].endswith(f"scores_rejects/{DAY0.isoformat()}")


def test_day_metrics_match_numpy_and_land_in_the_metrics_table(spark, world, first_run):
    rows = day_rows(spark, world["root"] / "scores", DAY0).select("ctr", "label").toPandas()
    p, y = rows["ctr"].to_numpy(np.float64), rows["label"].to_numpy(np.float64)
    assert first_run["mean_ctr"] == pytest.approx(p.mean(), abs=1e-6)
    assert first_run["labeled"] == len(rows)
    assert first_run["auc"] == pytest.approx(auc(p, y), abs=1e-3)  # binned vs exact
    q = np.clip(p, 1e-7, 1 - 1e-7)
    assert first_run["logloss"] == pytest.approx(-(y * np.log(q) + (1 - y) * np.log(1 - q)).mean(), rel=1e-6)
    assert first_run["calibration"] == pytest.approx(p.sum() / y.sum(), rel=1e-6)

    metrics = spark.read.format("delta").load(first_run["metrics_table"])
    assert [f.name for f in metrics.schema] == METRICS_SCHEMA.fieldNames()
    record = metrics.where(F.col("run_id") == first_run["run_id"]).first()
    assert record["table_version"] == first_run["version"] and record["auc"] == first_run["auc"]
    assert metrics.select("date").distinct().count() == len(DAYS)


def test_day_metrics_sum_per_task_states_like_one_pass():
    rng = np.random.default_rng(0)
    p, y = rng.uniform(0.01, 0.99, 1000).astype(np.float32), (rng.uniform(size=1000) < 0.3).astype(np.float32)
    total = MetricsSum().zero(None)
    for part in np.array_split(np.arange(1000), 3):  # three tasks' updates, summed as the driver does
        metrics = BinaryMetrics()
        metrics.update(p[part], y[part])
        total = MetricsSum().addInPlace(total, metrics_vector(metrics, len(part), float(p[part].sum(dtype=np.float64))))
    whole = BinaryMetrics()
    whole.update(p, y)
    expected = whole.compute()
    got = day_metrics(total)
    assert got["scored"] == got["labeled"] == 1000
    assert got["mean_ctr"] == pytest.approx(p.mean(dtype=np.float64), rel=1e-12)
    for key, name in (("auc", "auc"), ("logloss", "logloss"), ("calibration", "calibration")):
        assert got[key] == pytest.approx(expected[name], rel=1e-12)
    assert day_metrics(None) == {
        "scored": 0,
        "mean_ctr": None,
        "labeled": 0,
        "observed_ctr": None,
        "auc": None,
        "logloss": None,
        "calibration": None,
    }


def test_rerun_replaces_the_day_and_leaves_other_days(spark, world, first_run):
    table = world["root"] / "scores"
    others = F.col("date") != F.lit(DAY0)
    others_before = sorted(spark.read.format("delta").load(str(table)).where(others).collect())
    again = run(spark, options(world, DAY0, "scores"))

    assert again["version"] > first_run["version"] and again["scored"] == first_run["scored"]
    assert again["mean_ctr"] == pytest.approx(first_run["mean_ctr"], abs=1e-9)
    assert day_rows(spark, table, DAY0).count() == first_run["scored"]
    assert day_rows(spark, table, DAY0).select("scored_at").distinct().count() == 1  # nothing left over
    assert sorted(spark.read.format("delta").load(str(table)).where(others).collect()) == others_before
    # Time travel still reaches the first run; the history names each run.
    before = spark.read.format("delta").option("versionAsOf", first_run["version"]).load(str(table))
    assert before.where(F.col("date") == F.lit(DAY0)).count() == first_run["scored"]
    runs = {h["version"]: json.loads(h["userMetadata"])["run_id"] for h in history(spark, table) if h["userMetadata"]}
    assert runs[first_run["version"]] == first_run["run_id"] and runs[again["version"]] == again["run_id"]


def _table_state(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


def damage_bundle(bundle: Path, damage: str) -> None:
    meta_path = bundle / "bundle.json"
    meta = json.loads(meta_path.read_text())
    if damage == "missing_spec":
        del meta["feature_spec"]
    elif damage == "corrupt_spec":
        meta["feature_spec"]["fields"][0]["transform"] = "raw"  # no longer matches its stored version
    elif damage == "corrupt_weights":
        (bundle / "weights.pt").write_bytes((bundle / "weights.pt").read_bytes()[:100])
    meta_path.write_text(json.dumps(meta))


@pytest.mark.parametrize("damage", ["missing_spec", "corrupt_spec", "corrupt_weights", "no_bundle"])
def test_bad_bundle_is_refused_and_nothing_written(spark, world, first_run, damage, tmp_path):
    bundle = tmp_path / "bundle"
    if damage != "no_bundle":
        shutil.copytree(world["bundle"], bundle)
        damage_bundle(bundle, damage)
    root = world["root"]
    before = {p: _table_state(root / p) for p in ("scores", "scores_metrics", "scores_rejects")}
    with pytest.raises((BundleError, FeatureSpecError)):
        run(spark, options(world, DAYS[2], "scores", model=bundle))
    assert {p: _table_state(root / p) for p in before} == before


def test_incompatible_table_is_refused_unless_evolution_allowed(spark, world):
    table = world["root"] / "narrow"
    empty = spark.createDataFrame([], "impression_id long, date date, ctr double")
    empty.write.format("delta").partitionBy("date").save(str(table))
    version = len(history(spark, table))
    with pytest.raises(TableError, match="ctr is double"):
        run(spark, options(world, DAY0, "narrow", allow_schema_evolution=True))
    assert len(history(spark, table)) == version and not (world["root"] / "narrow_rejects").exists()

    evolving = world["root"] / "evolving"
    without_ctr = [f for f in SCORES_SCHEMA.fields if f.name != "ctr"]
    empty = spark.createDataFrame([], ", ".join(f"{f.name} {f.dataType.simpleString()}" for f in without_ctr))
    empty.write.format("delta").partitionBy("date").save(str(evolving))
    with pytest.raises(TableError, match="lacks column ctr"):
        run(spark, options(world, DAY0, "evolving"))
    summary = run(spark, options(world, DAY0, "evolving", allow_schema_evolution=True))
    assert summary["reconciled"] and "ctr" in spark.read.format("delta").load(str(evolving)).columns


def test_a_table_whose_creation_was_killed_before_its_first_commit_is_created_again(spark, world, first_run):
    log = world["root"] / "half_created" / "_delta_log"
    log.mkdir(parents=True)
    (log / ".00000000000000000000.json.0b1c.tmp").write_text("{}")  # the first commit, never renamed
    summary = run(spark, options(world, DAY0, "half_created"))
    assert summary["reconciled"] and summary["scored"] == first_run["scored"]
    (world["root"] / "not_delta").mkdir()
    (world["root"] / "not_delta" / "data.csv").write_text("a,b\n")
    with pytest.raises(TableError, match="exists and is not a Delta table"):
        run(spark, options(world, DAY0, "not_delta"))


def test_a_run_killed_while_writing_the_day_reruns_to_one_copy_of_it(spark, world, first_run):
    """kill -9 of the job (driver JVM and Python) as the Delta write starts; the rerun commits the
    day once, whatever the killed run left in the table's folder."""
    root = world["root"]
    args = ["--date", DAY0.isoformat(), "--model", str(world["bundle"]), "--input", str(root / "raw")]
    args += ["--table", str(root / "killed")]
    killed = score_cli(*args)
    for log_line in killed.stdout:  # type: ignore[union-attr]  (spark-submit passes the driver's log on)
        if "stage score and write: started" in log_line:
            time.sleep(1)  # into the write
            os.killpg(killed.pid, signal.SIGKILL)
            break
    assert killed.wait(timeout=120) == -signal.SIGKILL
    rerun = score_cli(*args)
    stdout, stderr = rerun.communicate(timeout=400)
    assert rerun.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout.strip().splitlines()[-1])
    day = day_rows(spark, root / "killed", DAY0)
    assert day.count() == summary["scored"] == first_run["scored"] and summary["reconciled"]
    reference = day_rows(spark, root / "scores", DAY0).select("impression_id").distinct().count()
    assert day.select("impression_id").distinct().count() == reference  # no duplicates
