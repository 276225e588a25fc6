"""Write synthetic click logs in Criteo's raw layout, with a planted signal and malformed rows.

    python jobs/generate_logs.py --days 8 --rows-per-day 20000    (or: spark-submit jobs/generate_logs.py ...)

Defaults come from conf/preprocess.yaml: it writes where preprocessing reads. The logic is
deepfm.synthetic (numpy in the driver; no Spark needed).
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

from deepfm.config import DefaultsHelpFormatter, load_conf
from deepfm.synthetic import write_logs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    conf = load_conf("preprocess")
    gen = conf["generator"]
    parser = argparse.ArgumentParser(
        description="Write DAYS days of synthetic click logs (label, I1..I13, C1..C26, tab-separated) "
        "with order-1, pairwise, higher-order and numeric effects, Zipf-skewed categories, missing "
        "values and malformed rows; deterministic from the seed. Also writes OUTPUT/generator.json "
        "(per day: rows, CTR, the true model's AUC, malformed rows by kind).",
        epilog="Defaults are read from conf/preprocess.yaml (input, day0_date and the generator section).",
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("--output", default=conf["input"], help="root folder to write the days into")
    parser.add_argument("--days", type=int, default=gen["days"], help="number of days")
    parser.add_argument("--rows-per-day", type=int, default=gen["rows_per_day"], help="lines per day, malformed ones included")
    parser.add_argument(
        "--start-date", type=dt.date.fromisoformat, default=dt.date.fromisoformat(str(conf["day0_date"])),
        help="first day, YYYY-MM-DD (in the criteo layout, the date of day_0)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=gen["seed"], help="random seed: same seed, same files")
    parser.add_argument(
        "--layout", choices=("date", "criteo"), default=gen["layout"],
        help="date: OUTPUT/date=YYYY-MM-DD/part-00000.tsv[.gz]; criteo: OUTPUT/day_N[.gz]",
    )  # fmt: skip
    parser.add_argument("--gzip", action=argparse.BooleanOptionalAction, default=gen["gzip"], help="gzip the files")
    parser.add_argument(
        "--malformed-fraction", type=float, default=gen["malformed_fraction"],
        help="fraction of lines given one defect (wrong field count, bad label, non-integer numeric, bad categorical)",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    manifest = write_logs(
        args.output, args.days, args.rows_per_day, args.start_date,
        seed=args.seed, layout=args.layout, gz=args.gzip, malformed_fraction=args.malformed_fraction,
    )  # fmt: skip
    print(json.dumps({day: {k: v[k] for k in ("rows", "ctr", "oracle_auc")} for day, v in manifest["days"].items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
