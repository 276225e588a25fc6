"""``deepfm submit-args``: what goes between ``spark-submit`` and a job's name.

    spark-submit $(deepfm submit-args) preprocess --end-date 2026-11-19

It prints the driver JVM's options from the Spark settings (``-XX:-DontCompileHugeMethods``: the
JIT compiles the jobs' wide generated code), Delta's jars (cached by the set-up, else Maven
coordinates), and the file spark-submit runs (the package's ``__main__.py``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from deepfm import ENTRY_POINT
from deepfm.cli.config import load_defaults
from deepfm.ops.spark import spark_submit_args


def main(argv: Sequence[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="deepfm submit-args", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args(argv)
    print(*spark_submit_args({k: str(v) for k, v in load_defaults("spark").items()}), ENTRY_POINT)
    return 0
