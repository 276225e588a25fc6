"""``deepfm generate-logs`` as a file, for launchers that take one: see ``deepfm generate-logs --help``."""

import sys

from deepfm.cli import main

if __name__ == "__main__":
    sys.exit(main(["generate-logs", *sys.argv[1:]]))
