"""The daily CTR pipeline: preprocess -> train -> score -> report for a run date, a backfill, or the demo.

  deepfm pipeline run --date 2026-11-22                 # one run date
  deepfm pipeline run --from 2026-11-01 --to 2026-11-07 # backfill, in date order
  deepfm pipeline run --date 2026-11-22 --step train    # one step (what Airflow calls)
  deepfm pipeline demo                                  # generate logs, run, summarise
  deepfm pipeline promote --version 3                   # point the alias at a registered version (rollback)

Finished steps are skipped on a rerun (markers keyed on a fingerprint of command and inputs)
unless --force (which also trains from scratch); a failed step stops the run with its log tail and
exit code 1; a run of a date another run holds is refused with exit code 2. Defaults:
deepfm/conf/pipeline.yaml (relative paths are relative to the current directory).

On a cluster, with the data on an object store: --storage s3a://bucket/ctr --raw-dir s3a://bucket/raw
and a --config file whose spark section every step gets (spark.master, spark.submit.pyFiles, the
fs.s3a.* settings); markers, locks, logs and the MLflow store stay in the local --workdir.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deepfm.cli.config import JobParser, load_defaults, load_schema, spark_conf
from deepfm.cli.logs import setup_logging
from deepfm.core import fs
from deepfm.core.tracking import TrackingSettings, promote, store_uri
from deepfm.ops.locks import Locked
from deepfm.ops.pipeline import STEPS, PipelineSettings, RunPaths, StepFailed, date_range, day_roles, run_date
from deepfm.ops.spark import get_spark, spark_submit_args
from deepfm.prep.synthetic import write_logs
from deepfm.training.launch import LAUNCHERS

log = logging.getLogger(__name__)


def parser() -> JobParser:
    p = JobParser("pipeline", __doc__ or "", load_defaults("pipeline"))
    p.option(
        "--workdir", key="workdir",
        help="local folder of markers, locks, logs and the MLflow store (and of the data, by default)",
    )  # fmt: skip
    p.option(
        "--storage", key="storage",
        help="root of processed data, models, Delta tables, rejects, reports: a path or URI (default: WORKDIR)",
    )  # fmt: skip
    p.option("--raw-dir", key="raw_dir", help="raw click logs root, a path or URI (default: STORAGE/raw)")
    p.option("--model", key="model", help="model to train")
    p.option(
        "--launcher",
        key="launcher",
        choices=LAUNCHERS[1:],
        help="who starts the training's ranks (deepfm train --launcher)",
    )
    p.add_argument("--quiet", action="store_true", help="do not echo the steps' output, only progress lines")
    sub = p.parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the pipeline for one date or a range of dates")
    when = run.add_mutually_exclusive_group(required=True)
    when.add_argument("--date", type=dt.date.fromisoformat, help="run date D (the newest day of logs)")
    when.add_argument("--from", dest="first", type=dt.date.fromisoformat, help="backfill: first run date")
    run.add_argument("--to", dest="last", type=dt.date.fromisoformat, help="backfill: last run date (inclusive)")
    run.add_argument("--step", choices=STEPS, help="run only this step (the scheduler runs one task per step)")
    run.add_argument(
        "--force", action="store_true", help="rerun steps even when their markers say done, training from scratch"
    )
    demo = sub.add_parser("demo", help="generate click logs, run the pipeline for the demo date, print a summary")
    demo.add_argument("--date", type=dt.date.fromisoformat, help="run date of the demo (default: demo.run_date)")
    demo.add_argument("--rows-per-day", type=int, help="generated impressions per day (default: demo.rows_per_day)")
    demo.add_argument(
        "--force", action="store_true", help="rerun steps even when their markers say done, training from scratch"
    )
    promote = sub.add_parser("promote", help="point the registry alias at a version of the registered model")
    promote.add_argument("--version", required=True, help="the registered model's version (see `mlflow ui`)")
    return p


def settings_from(values: Mapping[str, Any]) -> PipelineSettings:
    root = Path(values["workdir"]).resolve()
    storage = fs.absolute(values.get("storage") or root)
    tracking = TrackingSettings.from_dict(values["tracking"]["mlflow"])
    spark = {str(k): str(v) for k, v in (values.get("spark") or {}).items()}
    return PipelineSettings(
        workdir=root,
        raw_dir=fs.absolute(values.get("raw_dir") or fs.join(storage, "raw")),
        storage=storage,
        model=values["model"],
        train_days=int(values["train_days"]),
        num_workers=int(values["num_workers"]),
        hosts=values["hosts"],
        launcher=values["launcher"],
        train_args=tuple(values.get("train_args") or ()),
        preprocess_args=tuple(values.get("preprocess_args") or ()),
        score_args=tuple(values.get("score_args") or ()),
        spark_submit=tuple(spark_submit_args(spark_conf(values))),
        spark=spark,
        registered_model=values["registered_model"],
        alias=values["alias"],
        tracking=dataclasses.replace(tracking, tracking_uri=store_uri(tracking, root)),  # one store for every step
    )


def generate_demo_logs(
    settings: PipelineSettings, run_day: dt.date, rows_per_day: int, demo: Mapping[str, Any]
) -> None:
    """Write train_days + 2 days of generated logs ending at the run date, unless present."""
    days = settings.train_days + 2
    first = run_day - dt.timedelta(days=days - 1)
    wanted = [fs.join(settings.raw_dir, f"date={(first + dt.timedelta(days=i)).isoformat()}") for i in range(days)]
    if all(fs.exists(d) for d in wanted):
        log.info("demo logs already in %s", settings.raw_dir)
        return
    write_logs(
        fs.local_path(settings.raw_dir),
        days,
        rows_per_day,
        first,
        schema=load_schema("criteo"),
        seed=int(demo["seed"]),
        layout="date",
        malformed_fraction=float(demo["malformed_fraction"]),
    )


def delta_rows_for_day(paths: RunPaths, spark_settings: Mapping[str, str]) -> dict[str, int]:
    """Rows and distinct impressions of the run date in the Delta table (duplicates would differ)."""
    from pyspark.sql import functions as F

    spark = get_spark("pipeline-summary", spark_settings)
    table = spark.read.format("delta").load(fs.hadoop_uri(paths.scores_table))
    day = table.where(F.col("date") == F.lit(paths.day).cast("date"))
    row = day.agg(F.count("*").alias("rows"), F.countDistinct("impression_id").alias("distinct")).first()
    assert row is not None  # an aggregation without grouping has one row
    return {"rows": int(row["rows"]), "distinct_impressions": int(row["distinct"])}


def print_summary(settings: PipelineSettings, paths: RunPaths, results: dict[str, dict[str, Any]]) -> None:
    pre, train, score, report = (results.get(s, {}) for s in STEPS)
    totals = pre.get("totals", {})
    delta = delta_rows_for_day(paths, {**spark_conf({}), **settings.spark})

    def pick(summary: dict[str, Any], keys: tuple[str, ...]) -> str:
        return json.dumps({k: summary.get(k) for k in keys if k in summary})

    lines = [
        f"== DeepFM daily pipeline, run date {paths.day} ==",
        "days:       "
        + ", ".join(f"{role} {days}" for role, days in day_roles(paths.date, settings.train_days).items()),
        f"preprocess: {pick(totals, ('rows_read', 'rows_written', 'rows_quarantined'))}",
        f"train:      {pick(train, ('model', 'val_auc', 'val_logloss', 'val_calibration', 'samples_per_s'))}",
        f"score:      {pick(score, ('rows_in', 'scored', 'rejected', 'mean_ctr', 'auc'))}",
        f"delta:      {delta['rows']} rows for {paths.day} ({delta['distinct_impressions']} distinct impressions) "
        f"in {paths.scores_table}",
        f"registry:   {train.get('registered_model')} version {train.get('registered_version')}"
        f"{' (' + settings.alias + ')' if train.get('promoted') else ''} in {settings.tracking.tracking_uri}",
        f"report:     {report.get('report', fs.join(paths.report, 'report.html'))}",
        f"artifacts:  data {paths.processed} | model {paths.bundle} | logs {paths.logs}",
    ]
    print("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args, values = p.parse(argv)
    if args.command == "run" and args.first and not args.last:
        p.parser.error("--from needs --to")
    setup_logging()
    settings = settings_from(values)
    if args.command == "demo" and not fs.is_local(settings.raw_dir):
        p.parser.error(f"the demo generates its logs on this machine: give a local --raw-dir, not {settings.raw_dir}")
    fs.use_s3(fs.S3Settings.from_hadoop(spark_conf(values)))  # the pipeline reads the steps' summaries
    echo = (lambda line: None) if args.quiet else (lambda line: print(f"  | {line}", flush=True))
    try:
        if args.command == "demo":
            demo = values["demo"]
            day = args.date or dt.date.fromisoformat(str(demo["run_date"]))
            generate_demo_logs(settings, day, args.rows_per_day or int(demo["rows_per_day"]), demo)
            results = run_date(settings, day, force=args.force, echo=echo)
            print_summary(settings, RunPaths(settings.workdir, day, settings.storage), results)
            return 0
        if args.command == "promote":
            promote(settings.tracking, settings.workdir, settings.registered_model, args.version, settings.alias)
            print(json.dumps({"registered_model": settings.registered_model, "alias": settings.alias,
                              "version": args.version}))  # fmt: skip
            return 0
        dates = [args.date] if args.date else date_range(args.first, args.last)
        for day in dates:
            results = run_date(settings, day, force=args.force, only=args.step, echo=echo)
            print(json.dumps({"date": day.isoformat(), **results}))
    except StepFailed as failure:
        print(str(failure), file=sys.stderr)
        return 1
    except Locked as locked:
        print(f"refused: {locked}; wait for it to finish, or stop it", file=sys.stderr)
        return 2
    return 0
