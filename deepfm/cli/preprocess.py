"""Parse, validate and encode raw click logs of a declared schema (--schema) for one end date.

The TEST_DAYS days ending on END_DATE are the test days, the VALIDATION_DAYS days before them the
validation days (model selection: early stopping, the kept bundle), and the TRAIN_DAYS days before
those the training days (the feature spec is fitted on them only). Writes
OUTPUT/{train,validation,test}/day=YYYY-MM-DD/ Parquet, OUTPUT/quarantine/ (malformed lines with a
reason and the field at fault), OUTPUT/feature_spec.json (with the log schema) and OUTPUT/summary.json
(counts per day, rejected and missing values per field), replacing any previous OUTPUT whole. With
an event-time schema a row's day is its event's date, and rows logged late (in the --late-days
folders after the window) still count for their own day.
Prints the summary as JSON. Exit status: 0 done, 2 a missing or unreadable input day.

    spark-submit $(deepfm submit-args) preprocess --end-date 2024-01-08

(``deepfm preprocess ...`` works too; spark-submit's driver Java option lets the JIT compile the
job's wide generated code: faster, not different.) Defaults: deepfm/conf/preprocess.yaml, with
the feature transforms of deepfm/conf/features.yaml under ``features``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from deepfm.cli.config import JobParser, load_defaults, load_schema, spark_conf
from deepfm.cli.logs import setup_logging
from deepfm.ops.spark import get_spark
from deepfm.prep import preprocess, rawlogs
from deepfm.prep.encoding import FeatureConfig

log = logging.getLogger(__name__)


def parser() -> JobParser:
    defaults = {**load_defaults("preprocess"), "features": load_defaults("features")}
    p = JobParser("preprocess", __doc__ or "", defaults)
    p.add_argument(
        "--end-date",
        type=dt.date.fromisoformat,
        required=True,
        help="the last day of the window (the last test day; with --test-days 0 the last validation day), YYYY-MM-DD",
    )
    p.option("--input", key="input", help="root folder of the raw daily logs (any Hadoop path)")
    p.option(
        "--schema",
        key="schema",
        help="log schema of the input: a preset (criteo, avazu, appstore: deepfm/conf/schemas/) or a schema file",
    )
    p.option(
        "--late-days",
        key="late_days",
        type=int,
        help="event-time schemas: folders after the window also read for rows logged late",
    )
    p.option(
        "--output",
        key="output",
        help="output directory of this run ({end_date} is replaced by END_DATE); replaced whole on rerun",
    )
    p.option("--train-days", key="train_days", type=int, help="number of training days")
    p.option(
        "--validation-days", key="validation_days", type=int,
        help="days of the validation split (model selection), before the test days; 0 with --validation-fraction",
    )  # fmt: skip
    p.option(
        "--validation-fraction", key="validation_fraction", type=float,
        help="instead of validation days: this share of the training days' rows (a seeded hash of the impression id)",
    )  # fmt: skip
    p.option("--test-days", key="test_days", type=int, help="number of test days, ending on END_DATE (may be 0)")
    p.option(
        "--layout",
        key="layout",
        choices=("auto", *rawlogs.LAYOUTS),
        help="input layout: date = INPUT/date=YYYY-MM-DD/ folders, criteo = INPUT/day_N[.gz] files "
        "(Criteo Terabyte), auto = detect",
    )
    p.option("--day0-date", key="day0_date", help="criteo layout: the date of day_0")
    p.option(
        "--skip-missing-days",
        key="skip_missing_days",
        action=argparse.BooleanOptionalAction,
        help="skip a missing, empty or unreadable input day (reported in the summary) instead of failing",
    )
    p.option(
        "--row-group-rows",
        key="row_group_rows",
        type=int,
        help="Parquet files hold one row group of at most this many rows (Petastorm shards by row group)",
    )
    p.option(
        "--min-row-groups-per-day",
        key="min_row_groups_per_day",
        type=int,
        help="lower the row group size so that every day has at least this many row groups",
    )
    p.option(
        "--day-cache",
        key="day_cache",
        help="folder (path or URI) keeping each day's validation and value counts between runs, so a "
        "daily run (whose window shares all but one day with yesterday's) validates and counts only "
        "its new days; a day's entry is recomputed when its files change; empty string: off",
    )
    p.option(
        "--categorical-transform",
        key="features.defaults.categorical.transform",
        choices=("vocab", "hash"),
        help="transform of the categorical fields (per-field overrides still apply)",
    )
    p.option(
        "--min-count",
        key="features.defaults.categorical.min_count",
        type=int,
        help="vocab frequency threshold of the categorical fields",
    )
    p.option(
        "--max-vocabulary-size",
        key="features.defaults.categorical.max_size",
        type=int,
        help="vocab: keep only this many most frequent values per categorical field (0: no cap)",
    )
    p.option(
        "--oov-buckets",
        key="features.defaults.categorical.oov_buckets",
        type=int,
        help="vocab: hash values out of a vocabulary into this many extra indexes instead of one (hybrid)",
    )
    p.option(
        "--hash-buckets",
        key="features.defaults.categorical.hash_buckets",
        type=int,
        help="hash buckets per categorical field",
    )
    return p


def options(end_date: dt.date, values: Mapping[str, Any]) -> preprocess.Options:
    return preprocess.Options(
        input=str(values["input"]),
        output=str(values["output"]).format(end_date=end_date.isoformat()),
        end_date=end_date,
        features=FeatureConfig.from_dict(values["features"], load_schema(str(values["schema"]))),
        train_days=int(values["train_days"]),
        validation_days=int(values["validation_days"]),
        test_days=int(values["test_days"]),
        validation_fraction=float(values["validation_fraction"]),
        validation_seed=int(values["validation_seed"]),
        layout=values["layout"],
        day0_date=dt.date.fromisoformat(str(values["day0_date"])),
        skip_missing_days=bool(values["skip_missing_days"]),
        row_group_rows=int(values["row_group_rows"]),
        min_row_groups_per_day=int(values["min_row_groups_per_day"]),
        day_cache=values["day_cache"] or None,
        late_days=int(values["late_days"]),
    )


def main(argv: Sequence[str] | None = None) -> int:
    args, values = parser().parse(argv)
    setup_logging()
    opts = options(args.end_date, values)
    try:
        summary = preprocess.run(get_spark("preprocess", spark_conf(values)), opts)
    except rawlogs.InputDayError as error:
        log.error("%s (use --skip-missing-days to skip it)", error)
        return 2
    print(json.dumps(summary, indent=2))
    return 0
