"""Write synthetic click logs in a log schema's layout, with a planted signal and malformed rows.

Any schema (--schema: a preset, criteo, avazu or appstore, or a schema file): text lines with its
delimiter (and header), JSON lines or Parquet. Order-1, pairwise, higher-order and numeric
effects, items of multi-valued columns, the hour of the event time; Zipf-skewed categories,
missing values, malformed rows of the schema's reason codes and, with an event time, 1% of rows
written late into the next day's folder; deterministic from the seed (the criteo preset writes
the files it always has). Also writes OUTPUT/generator.json (per day: rows, CTR, the true model's
AUC, malformed rows by reason, late rows). Defaults: deepfm/conf/preprocess.yaml (it writes where
preprocessing reads; the ``generator`` section).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from collections.abc import Sequence

from deepfm.cli.config import JobParser, load_defaults, load_schema
from deepfm.cli.logs import setup_logging
from deepfm.prep.synthetic import write_logs


def main(argv: Sequence[str] | None = None) -> int:
    defaults = load_defaults("preprocess")
    p = JobParser("generate-logs", __doc__ or "", defaults)
    p.option("--output", key="input", help="root folder to write the days into")
    p.option(
        "--schema",
        key="generator.schema",
        metavar="NAME|FILE",
        help="the logs' schema: a preset (deepfm/conf/schemas: criteo, avazu, appstore) or a schema file",
    )
    p.option("--days", key="generator.days", type=int, help="number of days")
    p.option("--rows-per-day", key="generator.rows_per_day", type=int, help="records per day, malformed ones included")
    p.option("--start-date", key="day0_date", help="first day, YYYY-MM-DD (in the criteo layout, the date of day_0)")
    p.option("--seed", key="generator.seed", type=int, help="random seed: same seed, same files")
    p.option(
        "--layout",
        key="generator.layout",
        choices=("date", "criteo"),
        help="date: OUTPUT/date=YYYY-MM-DD/part-00000.<tsv|csv|json|parquet>[.gz]; criteo (text schemas): "
        "OUTPUT/day_N[.gz]",
    )
    p.option(
        "--gzip", key="generator.gzip", action=argparse.BooleanOptionalAction, help="gzip the files (Parquet: inside)"
    )
    p.option(
        "--malformed-fraction",
        key="generator.malformed_fraction",
        type=float,
        help="fraction of records given one defect (a reason code of the schema: wrong field count, bad label, ...)",
    )
    _, values = p.parse(argv)
    setup_logging()
    gen = values["generator"]
    manifest = write_logs(
        values["input"],
        gen["days"],
        gen["rows_per_day"],
        dt.date.fromisoformat(str(values["day0_date"])),
        schema=load_schema(str(gen["schema"])),
        seed=gen["seed"],
        layout=gen["layout"],
        gz=gen["gzip"],
        malformed_fraction=gen["malformed_fraction"],
    )
    print(json.dumps({day: {k: v[k] for k in ("rows", "ctr", "oracle_auc")} for day, v in manifest["days"].items()}))
    return 0
