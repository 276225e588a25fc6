"""``deepfm score`` as a file, for launchers that take one: see ``deepfm score --help``."""

import sys

from deepfm.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
