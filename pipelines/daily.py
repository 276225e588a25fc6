"""``deepfm pipeline`` as a file (what the Airflow DAG calls): see ``deepfm pipeline --help``."""

import sys

from deepfm.cli import main

if __name__ == "__main__":
    sys.exit(main(["pipeline", *sys.argv[1:]]))
