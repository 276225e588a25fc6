"""``deepfm doctor``: every component's version and whether it works; exit 1 if one is broken."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from deepfm.ops.doctor import report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deepfm doctor", description=__doc__)
    parser.add_argument("--brief", action="store_true", help="print only the verdict")
    return report(brief=parser.parse_args(argv).brief)
