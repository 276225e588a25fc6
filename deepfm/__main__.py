"""``python -m deepfm <command>``, and the file ``spark-submit`` runs: ``spark-submit <this file> <command>``."""

import sys
from pathlib import Path

from deepfm.cli import main

if __name__ == "__main__":
    # Run as a file (spark-submit), Python put this package's own folder first on the path: its
    # subpackages (core, models, ...) would be importable as top-level modules of those names.
    if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)
    sys.exit(main())
