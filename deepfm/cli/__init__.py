"""The ``deepfm`` command: one subcommand per job, each with its own ``--help``.

    deepfm generate-logs --output data/raw --days 9
    spark-submit $(deepfm submit-args) preprocess --end-date 2026-11-19     (or: deepfm preprocess ...)
    deepfm train --data DATA --output RUN --launcher horovodrun --np 2    (or horovod-spark, torch-distributor)
    spark-submit $(deepfm submit-args) score --date 2026-11-20 --model RUN/bundle --table T
    deepfm report | compare | pipeline | doctor

``spark-submit`` needs a file to run: ``deepfm submit-args`` ends with it (the package's
``__main__.py``); the repository's ``jobs/*.py`` are the same commands as thin files.
Settings: every job reads its defaults from ``deepfm/conf/`` and takes ``--config FILE`` and
``--set key=value`` (``deepfm.cli.config``).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

# Subcommand -> (module with ``main(argv) -> int``, one line of help). Modules are imported only
# when their command runs, so ``deepfm score --help`` answers without loading torch or Spark.
COMMANDS: dict[str, tuple[str, str]] = {
    "generate-logs": ("deepfm.cli.generate_logs", "write synthetic click logs with a planted signal"),
    "preprocess": ("deepfm.cli.preprocess", "validate and encode raw logs into train/test Parquet and a feature spec"),
    "train": (
        "deepfm.cli.train",
        "train a CTR model: one process, or N ranks (horovodrun, horovod.spark, TorchDistributor)",
    ),
    "score": ("deepfm.cli.score", "score one day of raw logs into a Delta table of CTRs"),
    "report": ("deepfm.cli.report", "a model's offline HTML report with the daily scoring metrics"),
    "compare": ("deepfm.cli.compare", "the DeepFM paper's model comparison and sweeps, with a report"),
    "pipeline": ("deepfm.cli.pipeline", "the daily pipeline: run a date, a backfill, or the demo"),
    "doctor": ("deepfm.cli.doctor", "versions of every component; non-zero exit if one is broken"),
    "submit-args": ("deepfm.cli.submit_args", "print spark-submit's arguments for the jobs (JVM options, jars, file)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return "usage: deepfm <command> [options]   (deepfm <command> --help)\n\ncommands:\n" + "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"deepfm: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    return int(importlib.import_module(COMMANDS[command][0]).main(rest))
