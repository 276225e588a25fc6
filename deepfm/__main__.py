"""``python -m deepfm <command>``: small operational commands of the library."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deepfm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    doctor = sub.add_parser("doctor", help="print component versions; exit 1 if any is missing or mis-built")
    doctor.add_argument("--brief", action="store_true", help="print only the verdict")
    args = parser.parse_args(argv)
    if args.command == "doctor":
        from deepfm.doctor import main as doctor_main

        return doctor_main(brief=args.brief)
    return 2


if __name__ == "__main__":
    sys.exit(main())
