"""Benchmark the preprocessing job against a bare Spark pass over the same raw logs.

    python benchmarks/bench_preprocess.py [--rows-per-day 125000] [--days 8] [--gzip] [--repeats 2]

The bare pass is what any job over these logs must at least do: read the text, split the
fields, cast the numerics, write Parquet. After one untimed run of every pass (JIT warm-up),
each repeat times the bare pass, then the job in vocabulary mode and in hashing mode, on the
same generated logs in the same Spark session; the ratios are per repeat (job / bare of that
repeat), so load from other processes on the machine mostly cancels out. Targets: vocabulary
mode <= 2x the bare pass, hashing <= 1.4x.

The job runs twice per mode: from scratch ("vocab", "hash": no day cache, every day validated
and counted), and as the daily job runs ("vocab-daily", "hash-daily"): with the day cache that
yesterday's run left (seeded, untimed, by a run for the window one day earlier, and copied
fresh before every timed run), so only the new day is validated and only the new training day
counted. The logs hold one day more than the window for that earlier run.

The same passes then run on small logs (``--small-rows-per-day``), which time what a run costs
whatever its size (planning, job start-up, file commits: seconds that a day of billions of rows
does not notice). The "per row" ratio removes it: (time - small time) of the job over the same
difference of the bare pass.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from deepfm.cli.config import load_defaults, load_schema, spark_conf
from deepfm.ops.spark import get_spark
from deepfm.prep import preprocess, rawlogs
from deepfm.prep.encoding import FeatureConfig
from deepfm.prep.synthetic import MANIFEST, write_logs

START = dt.date(2024, 1, 1)
MODES = ("vocab", "hash")
CRITEO = load_schema("criteo")


def logs(root: Path, days: int, rows_per_day: int, gz: bool) -> Path:
    """Generated logs under ``root`` (reused when already there with the same parameters)."""
    raw = root / f"raw-{days}x{rows_per_day}{'-gz' if gz else ''}"
    if not (raw / MANIFEST).exists():
        write_logs(raw, days, rows_per_day, START, schema=CRITEO, seed=0, layout="date", gz=gz)
    return raw


def bare_pass(spark: SparkSession, paths: list[str], out: Path) -> None:
    fields = F.split("value", "\t", -1)
    types = {"label": "int", "integer": "int", "categorical": "string"}
    columns = [fields[i].cast(types[c.kind]).alias(c.name) for i, c in enumerate(CRITEO.columns)]
    spark.read.text(paths).select(*columns).write.mode("overwrite").parquet(out.as_uri())


def job(
    spark: SparkSession, raw: Path, out: Path, end: dt.date, days: int, mode: str, cache: Path | None = None
) -> dict:
    features = load_defaults("features")
    features["defaults"]["categorical"]["transform"] = mode
    opts = preprocess.Options(
        input=str(raw),
        output=str(out),
        end_date=end,
        features=FeatureConfig.from_dict(features, CRITEO),
        train_days=days - 2,  # the window stays `days` long: a validation day and a test day end it
        validation_days=1,
        test_days=1,
        day_cache=str(cache) if cache else None,
    )
    return preprocess.run(spark, opts)


def fresh_copy(source: Path, target: Path) -> Path:
    shutil.rmtree(target, ignore_errors=True)
    return Path(shutil.copytree(source, target))


class Clock:
    """Wall time, and CPU time of the Spark JVM (local mode, Linux): on a machine shared with
    other work, the CPU time a pass costs varies much less than its wall time."""

    def __init__(self, spark: SparkSession) -> None:
        self._stat = Path(f"/proc/{spark._jvm.java.lang.ProcessHandle.current().pid()}/stat")
        self._tick = os.sysconf("SC_CLK_TCK")

    def cpu(self) -> float:
        fields = self._stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self._tick  # utime + stime

    def time(self, fn, *args) -> tuple[float, float, object]:
        wall, cpu = time.perf_counter(), self.cpu()
        result = fn(*args)
        return time.perf_counter() - wall, self.cpu() - cpu, result


def time_passes(spark: SparkSession, raw: Path, workdir: Path, days: int, repeats: int) -> tuple[dict, dict, dict]:
    """Wall and CPU seconds of every pass over the last ``days`` days of the logs at ``raw``, per
    repeat, after an untimed run of each (JIT warm-up); and the job's stage seconds of the last
    repeat."""
    end = START + dt.timedelta(days=days)  # the logs start a day earlier, for the day cache's seed run
    day_list = [end - dt.timedelta(days=k) for k in range(days)]
    paths = [p for day in day_list for p in rawlogs.day_paths(spark, str(raw), day, "date")]
    yesterday = workdir / "day-cache-yesterday"
    shutil.rmtree(yesterday, ignore_errors=True)
    job(spark, raw, workdir / "job-yesterday", end - dt.timedelta(days=1), days, "vocab", yesterday)
    cache = workdir / "day-cache"
    passes = {
        "bare": lambda: bare_pass(spark, paths, workdir / "bare"),
        **{m: (lambda m=m: job(spark, raw, workdir / f"job-{m}", end, days, m)) for m in MODES},
        **{f"{m}-daily": (lambda m=m: job(spark, raw, workdir / f"job-{m}", end, days, m, cache)) for m in MODES},
    }
    before = {f"{m}-daily": (lambda: fresh_copy(yesterday, cache)) for m in MODES}  # untimed
    # Warm-up, untimed: one run of every pass, so each is timed with its generated code compiled
    # by the JIT (the job's wide stages take longer to compile than the bare pass's).
    for name, run_pass in passes.items():
        before.get(name, lambda: None)()
        run_pass()
    clock = Clock(spark)
    wall: dict[str, list[float]] = {name: [] for name in passes}
    cpu: dict[str, list[float]] = {name: [] for name in passes}
    stages: dict[str, dict] = {}
    for repeat in range(repeats):
        for name, run_pass in passes.items():
            before.get(name, lambda: None)()
            took, used, summary = clock.time(run_pass)
            if summary:
                stages[name] = summary["stage_seconds"]
            wall[name].append(took)
            cpu[name].append(used)
        print(
            f"{raw.name} repeat {repeat}: "
            + ", ".join(f"{k} {v[-1]:.1f}s wall {cpu[k][-1]:.1f}s cpu" for k, v in wall.items()),
            flush=True,
        )
    return wall, cpu, stages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--days", type=int, default=8, help="days of the job's window: training days, then a validation and a test day"
    )
    parser.add_argument("--rows-per-day", type=int, default=125_000)
    parser.add_argument(
        "--small-rows-per-day",
        type=int,
        default=2_000,
        help="rows per day of the second, small run that measures the per-run (fixed) cost",
    )
    parser.add_argument("--gzip", action="store_true", help="gzipped input files")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "deepfm-bench")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    spark = get_spark("bench-preprocess", spark_conf(load_defaults("preprocess")))
    runs = {}
    for rows_per_day in (args.rows_per_day, args.small_rows_per_day):
        raw = logs(args.workdir, args.days + 1, rows_per_day, args.gzip)
        runs[rows_per_day] = time_passes(spark, raw, args.workdir, args.days, args.repeats)
    (wall, cpu, stages), (small_wall, _, _) = runs[args.rows_per_day], runs[args.small_rows_per_day]
    rows, small_rows = args.days * args.rows_per_day, args.days * args.small_rows_per_day

    print(
        f"\n{rows:,} rows ({args.days} days x {args.rows_per_day:,}{', gzip' if args.gzip else ''}), "
        f"{spark.sparkContext.master}, {os.cpu_count()} cores, {args.repeats} repeats; ratios: median over "
        "repeats of pass / bare pass of the same repeat. Per row: (median time - median time on "
        f"{small_rows:,} rows) of the pass over the same of the bare pass, the ratio the job tends to "
        "as rows grow (the per-run cost amortized)"
    )
    print(
        f"{'pass':<12}{'best wall s':>12}{'rows/s':>10}{'wall ratio':>11}{'cpu ratio':>10}{'per row':>9}"
        f"{f'{small_rows:,} rows s':>16}   stages (last repeat, s)"
    )
    report = {"rows": rows, "gzip": args.gzip, "master": spark.sparkContext.master, "cores": os.cpu_count()}
    marginal_bare = statistics.median(wall["bare"]) - statistics.median(small_wall["bare"])
    for name in wall:
        best = min(wall[name])
        ratios = [statistics.median(t / b for t, b in zip(x[name], x["bare"])) for x in (wall, cpu)]
        small = statistics.median(small_wall[name])
        per_row = (statistics.median(wall[name]) - small) / marginal_bare
        print(
            f"{name:<12}{best:>12.1f}{rows / best:>10,.0f}{ratios[0]:>10.2f}x{ratios[1]:>9.2f}x{per_row:>8.2f}x"
            f"{small:>16.1f}   {stages.get(name, '')}"
        )
        report[name] = {
            "best_wall_seconds": round(best, 2),
            "rows_per_second": round(rows / best),
            "wall_ratio": round(ratios[0], 3),
            "cpu_ratio": round(ratios[1], 3),
            "per_row_ratio": round(per_row, 3),
            "small_run_seconds": round(small, 2),
        }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
