"""``deepfm compare`` as a file, for launchers that take one: see ``deepfm compare --help``."""

import sys

from deepfm.cli import main

if __name__ == "__main__":
    sys.exit(main(["compare", *sys.argv[1:]]))
