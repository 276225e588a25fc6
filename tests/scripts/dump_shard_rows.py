"""Run under ``horovodrun -np N``: each rank reads one epoch of its train shard, as the trainer does.

Writes the rows each rank received, as float64 ``[cat..., num..., label]`` (exact for the
int32 and float32 columns), to ``<out>/rank<r>.npy``. Usage: ``dump_shard_rows.py DATA OUT``.
"""

import sys
from pathlib import Path

import numpy as np

from deepfm.cli.config import load_defaults
from deepfm.core.features import FeatureSpec
from deepfm.training.collectives import backend_of_environment, connect
from deepfm.training.feed import make_loader


def main(data: str, out: str) -> None:
    comm = connect(backend_of_environment())
    conf, spec = load_defaults("train"), FeatureSpec.load(data)
    loader = make_loader(
        conf["loader"],
        Path(data) / "train",
        spec,
        conf["batch_size"],
        shard=comm.rank,
        shard_count=comm.size,
        shuffle_buffer=conf["shuffle_buffer"],
        seed=conf["seed"],
        pool_type=conf["petastorm_pool"],
        workers=conf["petastorm_workers"],
    )
    rows = [
        np.column_stack([b.cat.numpy(), b.num.numpy(), b.label.numpy()]).astype(np.float64) for b in loader.epoch(0)
    ]
    np.save(Path(out) / f"rank{comm.rank}.npy", np.concatenate(rows))


if __name__ == "__main__":
    main(*sys.argv[1:])
