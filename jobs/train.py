"""``deepfm train`` as a file, for launchers that take one: see ``deepfm train --help``."""

import sys

from deepfm.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
