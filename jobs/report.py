"""The daily pipeline's model report: one static HTML page with its PNGs, viewable offline.

    python jobs/report.py --bundle RUN/bundle --data PROCESSED --metrics-table DELTA --output REPORT_DIR

It holds the model's ROC curve and calibration plot on the test split of PROCESSED (the
preprocessing output the model was trained on), and the scoring metrics of every day in the
Delta metrics table written by jobs/score.py (newest run per day, --date highlighted;
default: the newest day). The last stdout line is a JSON summary:
{"report", "date", "model", "model_version", "test_auc", "test_logloss", "test_calibration",
 "day_auc", "day_logloss", "days"}.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deepfm.bundle import load_bundle  # noqa: E402
from deepfm.report import daily_report, read_metrics_table  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, required=True, help="model bundle directory (jobs/train.py's RUN/bundle)")
    p.add_argument("--data", type=Path, required=True,
                   help="preprocessed data directory; its test/ split is scored for the ROC and calibration plots")
    p.add_argument("--metrics-table", required=True,
                   help="Delta metrics table of jobs/score.py (a path, or a metastore table name); "
                        "missing: the report says no day was scored yet")
    p.add_argument("--output", type=Path, required=True, help="report directory (report.html and its PNGs)")
    p.add_argument("--date", default=None, help="YYYY-MM-DD to highlight in the daily metrics (default: newest)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    summary = daily_report(load_bundle(args.bundle), args.data, read_metrics_table(args.metrics_table),
                           args.output, date=args.date)
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
