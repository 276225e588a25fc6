"""Compare the DeepFM paper's models on preprocessed logs (its Table 2, Figure 6 and, with
--study, Figures 7-11), through the production trainer, and write a static report.

    python jobs/compare.py --data DATA --output OUT                      # all ten models, 5 seeds
    python jobs/compare.py --data DATA --output OUT --models lr,deepfm --seeds 2 --epochs 1
    python jobs/compare.py --data DATA --output OUT --study               # plus the sweeps
    python jobs/compare.py --output OUT --report-only                     # re-render OUT/results.json

DATA is any output of jobs/preprocess.py (train/, test/, feature_spec.json). OUT gets
runs/ (one trainer output per run; finished runs are reused by a rerun), results.json (every
number), table.csv, report.html and its PNGs (open report.html offline). The last stdout
line is a JSON summary: {"report", "results", "table", "ranking", "auc", "note"}.
Defaults come from conf/compare.yaml.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deepfm.compare import compare, render, settings_from  # noqa: E402
from deepfm.config import load_conf  # noqa: E402
from deepfm.train import apply_overrides  # noqa: E402


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def build_parser(conf: dict) -> argparse.ArgumentParser:
    study = conf["study"]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, help="preprocessed data directory (train/, test/, feature_spec.json); "
                                              "required unless --report-only")
    p.add_argument("--output", type=Path, required=True, help="output directory (runs/, results.json, report.html)")
    p.add_argument("--models", type=_names, default=",".join(conf["models"]),
                   help="comma-separated models of the registry [%(default)s]")
    p.add_argument("--seeds", type=int, default=conf["seeds"], help="runs per model, seeds base-seed.. [%(default)s]")
    p.add_argument("--base-seed", type=int, default=conf["base_seed"],
                   help="first seed; a seed gives every model the same data order [%(default)s]")
    p.add_argument("--epochs", type=int, default=conf["epochs"],
                   help="maximum epochs per run (the trainer's early stopping applies) [%(default)s]")
    p.add_argument("--np", type=int, default=conf["np"],
                   help="ranks per training: 1 trains in this process, N > 1 through horovodrun [%(default)s]")
    p.add_argument("--hosts", default=conf["hosts"], help="horovodrun -H (default localhost:<np>)")
    p.add_argument("--baseline", default=conf["baseline"],
                   help="model the gains and the time chart are relative to [%(default)s]")
    p.add_argument("--train", dest="train_overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a conf/train.yaml setting for every run (YAML value, dotted keys nest), e.g. "
                        "batch_size=4096 or loader=arrow; repeatable")
    p.add_argument("--study", action=argparse.BooleanOptionalAction, default=False,
                   help="also run the paper's hyper-parameter sweeps (Figures 7-11) [%(default)s]")
    p.add_argument("--study-models", type=_names, default=",".join(study["models"]),
                   help="models of the sweeps [%(default)s]")
    p.add_argument("--study-epochs", type=int, default=study["epochs"], help="epochs per sweep run [%(default)s]")
    p.add_argument("--study-grid", action="append", default=[], metavar="STUDY=VALUES",
                   help="replace one sweep's values, e.g. dropout=[1.0,0.5] or layers=[1,3]; "
                        f"studies: {', '.join(study['grids'])} (defaults in conf/compare.yaml); repeatable")
    p.add_argument("--note", default="", help="text appended to the report's closing note (with --report-only: "
                                              "replaces the stored one)")
    p.add_argument("--report-only", action="store_true",
                   help="only re-render the report from OUTPUT/results.json (no training)")
    return p


def main(argv: list[str] | None = None) -> int:
    conf = load_conf("compare")
    args = build_parser(conf).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("petastorm").setLevel(logging.WARNING)  # its per-epoch "no Unischema" lines
    if args.report_only:
        results = json.loads((args.output / "results.json").read_text())
        results["settings"]["note"] = args.note or results["settings"]["note"]
    else:
        if args.data is None:
            build_parser(conf).error("--data is required unless --report-only")
        study = {**conf["study"], "models": args.study_models, "epochs": args.study_epochs,
                 "grids": apply_overrides(conf["study"]["grids"], args.study_grid)}
        results = compare(settings_from({
            "data": args.data, "output": args.output, "models": args.models, "seeds": args.seeds,
            "base_seed": args.base_seed, "epochs": args.epochs, "np": args.np, "hosts": args.hosts,
            "baseline": args.baseline, "roc_points": conf["roc_points"],
            "calibration_groups": conf["calibration_groups"], "note": args.note,
            "train": apply_overrides(conf["train"], args.train_overrides),
            "study": study if args.study else None,
        }))
    print(json.dumps(render(results, args.output)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
