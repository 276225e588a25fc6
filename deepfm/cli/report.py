"""The daily pipeline's model report: one static HTML page with its PNGs, viewable offline.

    deepfm report --bundle RUN/bundle --metrics-table DELTA --output REPORT_DIR

It holds the model's ROC curve and calibration plot on the validation that selected it (saved
in the bundle by the trainer), and the scoring metrics of every day in the Delta metrics table
written by ``deepfm score`` (newest run per day, --date highlighted; default: the newest day).
The summary is printed as the last stdout line and written to REPORT_DIR/summary.json:
{"report", "date", "model", "model_version", "validation_auc", "validation_logloss",
"validation_calibration", "day_auc", "day_logloss", "days"}.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from deepfm.cli.config import JobParser, spark_conf
from deepfm.cli.logs import setup_logging
from deepfm.core import fs
from deepfm.evaluation.daily_report import daily_report, read_metrics_table
from deepfm.models.bundle import load_bundle
from deepfm.ops.spark import get_spark


def main(argv: Sequence[str] | None = None) -> int:
    p = JobParser("report", __doc__ or "", {})
    p.add_argument("--bundle", required=True, help="model bundle directory, a path or URI (the training's RUN/bundle)")
    p.add_argument(
        "--metrics-table",
        required=True,
        help="Delta metrics table of `deepfm score` (a path, or a metastore table name); "
        "missing: the report says no day was scored yet",
    )
    p.add_argument("--output", required=True, help="report directory, a path or URI (report.html and its PNGs)")
    p.add_argument("--date", default=None, help="YYYY-MM-DD to highlight in the daily metrics (default: newest)")
    args, values = p.parse(argv)
    setup_logging()
    runs = read_metrics_table(get_spark("deepfm-report", spark_conf(values)), args.metrics_table)
    summary = daily_report(load_bundle(args.bundle), runs, args.output, date=args.date)
    fs.put_json(fs.join(args.output, "summary.json"), summary)
    print(json.dumps(summary), flush=True)
    return 0
