"""Preprocess one end date of raw click logs into encoded train/test Parquet and a feature spec.

    spark-submit <deepfm.spark.spark_submit_args(): --driver-java-options, --jars Delta> \\
        jobs/preprocess.py --end-date 2024-01-08 [options]

(``python jobs/preprocess.py ...`` works too.) The Java option (-XX:-DontCompileHugeMethods, see
conf/spark.yaml) lets the JIT compile the job's wide generated code: faster, not different.

Defaults come from conf/preprocess.yaml and conf/features.yaml; the job's logic is
deepfm.preprocess (see its docstring for the output layout).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from pathlib import Path

try:
    import deepfm  # noqa: F401
except ImportError:  # run from a checkout without the editable install
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml

from deepfm import preprocess, rawlogs
from deepfm.config import DefaultsHelpFormatter, conf_dir, load_conf
from deepfm.spark import get_spark


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    conf = load_conf("preprocess")
    parser = argparse.ArgumentParser(
        description="Parse, validate and encode raw Criteo-layout click logs for one end date: the "
        "TRAIN_DAYS days before the test window are the training days (the feature spec is fitted on "
        "them only), the TEST_DAYS days ending on END_DATE the test days. Writes OUTPUT/{train,test}/"
        "day=YYYY-MM-DD/ Parquet, OUTPUT/quarantine/ (malformed lines with a reason), "
        "OUTPUT/feature_spec.json and OUTPUT/summary.json, replacing any previous OUTPUT whole.",
        epilog="Defaults are read from conf/preprocess.yaml and conf/features.yaml ($DEEPFM_CONF_DIR overrides conf/).",
        formatter_class=DefaultsHelpFormatter,
    )
    date = dt.date.fromisoformat
    parser.add_argument("--end-date", type=date, required=True, help="the (last) test day, YYYY-MM-DD")
    parser.add_argument("--input", default=conf["input"], help="root folder of the raw daily logs (any Hadoop path)")
    parser.add_argument(
        "--output", default=conf["output"],
        help="output directory of this run ({end_date} is replaced by END_DATE); replaced whole on rerun",
    )  # fmt: skip
    parser.add_argument("--train-days", type=int, default=conf["train_days"], help="number of training days")
    parser.add_argument("--test-days", type=int, default=conf["test_days"], help="number of test days, ending on END_DATE")
    parser.add_argument(
        "--layout", choices=("auto", *rawlogs.LAYOUTS), default=conf["layout"],
        help="input layout: date = INPUT/date=YYYY-MM-DD/ folders, criteo = INPUT/day_N[.gz] files "
        "(Criteo Terabyte), auto = detect",
    )  # fmt: skip
    parser.add_argument("--day0-date", type=date, default=date(str(conf["day0_date"])), help="criteo layout: the date of day_0")
    parser.add_argument(
        "--skip-missing-days", action=argparse.BooleanOptionalAction, default=conf["skip_missing_days"],
        help="skip a missing, empty or unreadable input day (reported in the summary) instead of failing",
    )  # fmt: skip
    parser.add_argument(
        "--row-group-rows", type=int, default=conf["row_group_rows"],
        help="Parquet files hold one row group of at most this many rows (Petastorm shards by row group)",
    )  # fmt: skip
    parser.add_argument(
        "--min-row-groups-per-day", type=int, default=conf["min_row_groups_per_day"],
        help="lower the row group size so that every day has at least this many row groups",
    )  # fmt: skip
    parser.add_argument(
        "--day-cache", default=conf["day_cache"],
        help="driver-local folder keeping each day's validation and value counts between runs, so a "
        "daily run (whose window shares all but one day with yesterday's) validates and counts only "
        "its new days; a day's entry is recomputed when its files change; empty string: off",
    )  # fmt: skip
    parser.add_argument(
        "--features", type=Path, default=conf_dir() / "features.yaml",
        help="feature transforms YAML (defaults per kind of field, per-field overrides, hash seed)",
    )  # fmt: skip
    parser.add_argument(
        "--categorical-transform", choices=("vocab", "hash"),
        help="override the default transform of categorical fields (per-field overrides still apply); "
        "default: from --features",
    )  # fmt: skip
    parser.add_argument("--min-count", type=int, help="override the vocab frequency threshold; default: from --features")
    parser.add_argument("--hash-buckets", type=int, help="override the hash buckets per field; default: from --features")
    return parser.parse_args(argv)


def features_conf(args: argparse.Namespace) -> dict:
    features = yaml.safe_load(args.features.read_text())
    overrides = {"transform": args.categorical_transform, "min_count": args.min_count, "hash_buckets": args.hash_buckets}
    features["defaults"]["categorical"].update({k: v for k, v in overrides.items() if v is not None})
    return features


def options(args: argparse.Namespace) -> preprocess.Options:
    return preprocess.Options(
        input=args.input,
        output=args.output.format(end_date=args.end_date.isoformat()),
        end_date=args.end_date,
        features=features_conf(args),
        train_days=args.train_days,
        test_days=args.test_days,
        layout=args.layout,
        day0_date=args.day0_date,
        skip_missing_days=args.skip_missing_days,
        row_group_rows=args.row_group_rows,
        min_row_groups_per_day=args.min_row_groups_per_day,
        day_cache=args.day_cache or None,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    opts = options(args)
    try:
        summary = preprocess.run(get_spark("preprocess", load_conf("preprocess")["spark"]), opts)
    except rawlogs.InputDayError as error:
        logging.getLogger("preprocess").error("%s (use --skip-missing-days to skip it)", error)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
