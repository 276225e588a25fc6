"""The daily CTR pipeline: preprocess → train → score → report for a run date, a backfill, or the demo.

  python pipelines/daily.py run --date 2026-11-22              # one run date
  python pipelines/daily.py run --from 2026-11-01 --to 2026-11-07   # backfill, in date order
  python pipelines/daily.py run --date 2026-11-22 --step train  # one step (what Airflow calls)
  python pipelines/daily.py demo                              # generate logs, run, summarise

Finished steps are skipped on a rerun (markers keyed on a fingerprint of command and inputs)
unless --force; a failed step stops the run with its log tail and exit code 1.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import subprocess
import sys
from pathlib import Path

try:
    import deepfm  # noqa: F401
except ImportError:  # running from a checkout without the editable install
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deepfm.config import REPO_ROOT, load_conf
from deepfm.pipeline import STEPS, PipelineSettings, RunPaths, StepFailed, date_range, run_date


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    conf = load_conf("pipeline")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=conf["workdir"],
                        help="root of raw logs, processed data, models, Delta tables, logs (default: %(default)s)")
    parser.add_argument("--raw-dir", help="raw click logs root (default: WORKDIR/raw)")
    parser.add_argument("--model", help=f"model to train (default: {conf['model']})")
    parser.add_argument("--quiet", action="store_true", help="do not echo the steps' output, only progress lines")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the pipeline for one date or a range of dates")
    when = run.add_mutually_exclusive_group(required=True)
    when.add_argument("--date", type=dt.date.fromisoformat, help="run date D (the newest day of logs)")
    when.add_argument("--from", dest="first", type=dt.date.fromisoformat, help="backfill: first run date")
    run.add_argument("--to", dest="last", type=dt.date.fromisoformat, help="backfill: last run date (inclusive)")
    run.add_argument("--step", choices=STEPS, help="run only this step (the scheduler runs one task per step)")
    run.add_argument("--force", action="store_true", help="rerun steps even when their markers say done")

    demo = sub.add_parser("demo", help="generate click logs, run the pipeline for the demo date, print a summary")
    demo.add_argument("--date", type=dt.date.fromisoformat, default=dt.date.fromisoformat(conf["demo"]["run_date"]),
                      help="run date of the demo (default: %(default)s)")
    demo.add_argument("--rows-per-day", type=int, default=conf["demo"]["rows_per_day"],
                      help="generated impressions per day (default: %(default)s)")
    demo.add_argument("--force", action="store_true", help="rerun steps even when their markers say done")
    args = parser.parse_args(argv)
    if args.command == "run" and args.first and not args.last:
        parser.error("--from needs --to")
    return args


def generate_demo_logs(settings: PipelineSettings, run_day: dt.date, rows_per_day: int) -> None:
    """Write train_days + 2 days of generated logs ending at the run date, unless present."""
    days = settings.train_days + 2
    first = run_day - dt.timedelta(days=days - 1)
    wanted = [settings.raw_dir / f"date={(first + dt.timedelta(days=i)).isoformat()}" for i in range(days)]
    if all(d.exists() for d in wanted):
        logging.info("demo logs already in %s", settings.raw_dir)
        return
    demo = load_conf("pipeline")["demo"]
    subprocess.run(
        [settings.python, str(REPO_ROOT / "jobs" / "generate_logs.py"), "--output", str(settings.raw_dir),
         "--days", str(days), "--rows-per-day", str(rows_per_day), "--start-date", first.isoformat(),
         "--seed", str(demo["seed"]), "--layout", "date",
         "--malformed-fraction", str(demo["malformed_fraction"])],
        check=True,
    )


def delta_rows_for_day(paths: RunPaths) -> dict[str, int]:
    """Rows and distinct impressions of the run date in the Delta table (duplicates would differ)."""
    from pyspark.sql import functions as F

    from deepfm.spark import get_spark

    spark = get_spark("pipeline-summary")
    day = spark.read.format("delta").load(str(paths.scores_table)).where(F.col("date") == F.lit(paths.day).cast("date"))
    row = day.agg(F.count("*").alias("rows"), F.countDistinct("impression_id").alias("distinct")).first()
    return {"rows": int(row["rows"]), "distinct_impressions": int(row["distinct"])}


def print_summary(paths: RunPaths, results: dict[str, dict]) -> None:
    pre, train, score, report = (results.get(s, {}) for s in STEPS)
    pre = pre.get("totals", {})
    delta = delta_rows_for_day(paths)
    lines = [
        f"== DeepFM daily pipeline, run date {paths.day} ==",
        f"preprocess: {json.dumps({k: pre.get(k) for k in ('rows_read', 'rows_written', 'rows_quarantined') if k in pre})}",
        f"train:      {json.dumps({k: train.get(k) for k in ('model', 'val_auc', 'val_logloss', 'val_calibration', 'samples_per_s') if k in train})}",
        f"score:      {json.dumps({k: score.get(k) for k in ('rows_in', 'scored', 'rejected', 'mean_ctr', 'auc') if k in score})}",
        f"delta:      {delta['rows']} rows for {paths.day} ({delta['distinct_impressions']} distinct impressions) in {paths.scores_table}",
        f"report:     {report.get('report', paths.report / 'report.html')}",
        f"artifacts:  data {paths.processed} | model {paths.bundle} | logs {paths.logs}",
    ]
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = parse_args(argv)
    settings = PipelineSettings.from_conf(args.workdir, raw_dir=args.raw_dir, model=args.model)
    echo = (lambda line: None) if args.quiet else (lambda line: print(f"  | {line}", flush=True))
    try:
        if args.command == "demo":
            generate_demo_logs(settings, args.date, args.rows_per_day)
            results = run_date(settings, args.date, force=args.force, echo=echo)
            print_summary(RunPaths(settings.workdir, args.date), results)
            return 0
        dates = [args.date] if args.date else date_range(args.first, args.last)
        for day in dates:
            results = run_date(settings, day, force=args.force, only=args.step, echo=echo)
            print(json.dumps({"date": day.isoformat(), **results}))
    except StepFailed as failure:
        print(str(failure), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
