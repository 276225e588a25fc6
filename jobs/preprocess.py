"""``deepfm preprocess`` as a file, for launchers that take one: see ``deepfm preprocess --help``."""

import sys

from deepfm.cli import main

if __name__ == "__main__":
    sys.exit(main(["preprocess", *sys.argv[1:]]))
