"""``deepfm report`` as a file, for launchers that take one: see ``deepfm report --help``."""

import sys

from deepfm.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
