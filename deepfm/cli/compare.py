"""Compare the DeepFM paper's models on preprocessed logs (its Table 2, Figure 6 and, with
--study, Figures 7-11), through the production trainer, and write a static report.

    deepfm compare --data DATA --output OUT                      # all ten models, 5 seeds
    deepfm compare --data DATA --output OUT --models lr,deepfm --seeds 2 --epochs 1
    deepfm compare --data DATA --output OUT --set train.batch_size=4096 --set train.loader=arrow
    deepfm compare --data DATA --output OUT --study --set study.grids.layers=[1,3]
    deepfm compare --output OUT --report-only                     # re-render OUT/results.json

DATA is any output of ``deepfm preprocess`` (train/, test/, feature_spec.json). OUT gets runs/
(one trainer output per run; finished runs are reused by a rerun), results.json (every number),
table.csv, report.html and its PNGs (open report.html offline). The last stdout line is a JSON
summary: {"report", "results", "table", "ranking", "auc", "note"}. Defaults:
deepfm/conf/compare.yaml; every run's training settings are deepfm/conf/train.yaml's with the
``train`` section on top. DATA and OUT may be URIs (s3a://bucket/...; the S3 endpoint from
spark.yaml or a --config file's spark section, as for `deepfm train`).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from deepfm.cli.config import JobParser, deep_update, load_defaults, spark_conf
from deepfm.cli.logs import setup_logging
from deepfm.core import fs
from deepfm.evaluation.compare import Settings, compare
from deepfm.evaluation.compare_report import render
from deepfm.models import ModelDefaults


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def parser() -> JobParser:
    p = JobParser("compare", __doc__ or "", load_defaults("compare"))
    p.add_argument(
        "--data",
        help="preprocessed data directory, a path or URI (train/, test/, feature_spec.json); required unless "
        "--report-only",
    )
    p.add_argument("--output", required=True, help="output directory, a path or URI (runs/, results.json, report.html)")
    p.option("--models", key="models", type=_names, help="comma-separated models of the registry")
    p.option("--seeds", key="seeds", type=int, help="runs per model, seeds base-seed..")
    p.option("--base-seed", key="base_seed", type=int, help="first seed; a seed gives every model the same data order")
    p.option("--epochs", key="epochs", type=int, help="maximum epochs per run (the trainer's early stopping applies)")
    p.option("--np", key="np", type=int, help="ranks per training: 1 trains in this process, N > 1 through horovodrun")
    p.option("--hosts", key="hosts", help="horovodrun -H (default localhost:<np>)")
    p.option("--baseline", key="baseline", help="model the gains and the time chart are relative to")
    p.add_argument(
        "--study",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also run the paper's hyper-parameter sweeps (Figures 7-11; grids under study.grids)",
    )
    p.option("--study-models", key="study.models", type=_names, help="models of the sweeps")
    p.option("--study-epochs", key="study.epochs", type=int, help="epochs per sweep run")
    p.add_argument(
        "--note",
        default="",
        help="text appended to the report's closing note (with --report-only: replaces the stored one)",
    )
    p.add_argument(
        "--report-only", action="store_true", help="only re-render the report from OUTPUT/results.json (no training)"
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    p = parser()
    args, values = p.parse(argv)
    setup_logging()
    # A ``spark`` section (its fs.s3a.* keys: how to reach S3, as in spark.yaml) is the storage's.
    fs.use_s3(fs.S3Settings.from_hadoop(spark_conf(values)))
    values.pop("spark", None)
    if args.report_only:
        results = fs.read_json(fs.join(args.output, "results.json"))
        results["settings"]["note"] = args.note or results["settings"]["note"]
        print(json.dumps(render(results, args.output)), flush=True)
        return 0
    if args.data is None:
        p.parser.error("--data is required unless --report-only")
    settings = Settings.from_dict(
        {**values, "data": args.data, "output": args.output, "note": args.note,
         "study": values["study"] if args.study else None},
        train=deep_update(load_defaults("train"), values["train"]),
        model_defaults=ModelDefaults(load_defaults("models")),
    )  # fmt: skip
    print(json.dumps(compare(settings)), flush=True)
    return 0
