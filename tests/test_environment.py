"""The four real components the pipeline stands on: Spark+Delta, Petastorm, Horovod, doctor."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pyspark.sql import functions as F

from deepfm.training.launch import horovodrun
from deepfm.training.petastorm_io import petastorm_row_groups

VENV_BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def test_doctor_reports_every_component():
    result = subprocess.run([sys.executable, "-m", "deepfm", "doctor"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    for component in ("pyspark", "delta", "petastorm", "horovod", "torch", "pyarrow", "java", "mlflow"):
        assert component in result.stdout
    assert "Gloo" in result.stdout
    # What `make setup-test` (run by `make test`) provides: the S3 server and the S3A jars, present.
    lines = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines() if len(line.split()) > 1}
    assert lines["seaweedfs"] == "ok" and lines["s3a-jars"] == "ok"


def test_delta_write_replace_where_and_time_travel(spark, tmp_path):
    table = str(tmp_path / "events")
    df = spark.range(6).select(F.col("id"), (F.col("id") % 2).alias("part"))
    df.write.format("delta").partitionBy("part").save(table)

    replacement = spark.range(100, 103).select(F.col("id"), F.lit(1).cast("long").alias("part"))
    (replacement.write.format("delta").mode("overwrite").option("replaceWhere", "part = 1").save(table))

    current = spark.read.format("delta").load(table)
    assert sorted(r.id for r in current.where("part = 1").collect()) == [100, 101, 102]
    assert sorted(r.id for r in current.where("part = 0").collect()) == [0, 2, 4]
    version0 = spark.read.format("delta").option("versionAsOf", 0).load(table)
    assert sorted(r.id for r in version0.collect()) == list(range(6))
    history = spark.sql(f"DESCRIBE HISTORY delta.`{table}`").select("version").collect()
    assert {r.version for r in history} == {0, 1}


def test_petastorm_two_shards_are_disjoint_and_complete(spark, tmp_path):
    path = str(tmp_path / "rows")
    rows = spark.range(2000).select(F.col("id").cast("int").alias("row_id"), (F.col("id") % 7).cast("float").alias("x"))
    rows.repartition(8).write.option("parquet.block.size", 4096).parquet(path)

    shards = []
    for shard in range(2):
        ids: list[int] = []
        for group in petastorm_row_groups(path, ["row_id", "x"], shard=shard, shard_count=2):
            ids.extend(group["row_id"].tolist())
        shards.append(ids)
    assert shards[0] and shards[1], "each shard must receive rows"
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(2000))


def test_horovodrun_two_ranks_agree(tmp_path):
    script = Path(__file__).parent / "scripts" / "horovod_allreduce_check.py"
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    result = subprocess.run(
        horovodrun(2, "localhost:2", [str(script), str(tmp_path)]),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for name in rank0:
        torch.testing.assert_close(rank0[name], rank1[name], rtol=0, atol=0)
