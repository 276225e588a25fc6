"""Train a CTR model on preprocessed Parquet, data-parallel with Horovod.

    horovodrun -np 2 -H localhost:2 --gloo python jobs/train.py --data DATA --output RUN --model deepfm
    python jobs/train.py --data DATA --output RUN          # one process, no Horovod needed

DATA is the preprocessing output (train/ and test/ Parquet, feature_spec.json). RUN gets
bundle/, metrics.json, checkpoints/latest.pt and train.log; rerunning the same command
resumes from the checkpoint. Rank 0 prints a one-line JSON summary as its last stdout line
(horovodrun prefixes it with "[0]<stdout>:"). Defaults come from conf/train.yaml.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from deepfm import distributed as dist  # noqa: E402
from deepfm.config import load_conf  # noqa: E402
from deepfm.data import LOADERS  # noqa: E402
from deepfm.models import model_names  # noqa: E402
from deepfm.train import TrainConfig, apply_overrides, setup_logging, train  # noqa: E402


def build_parser(conf: dict) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="preprocessed data directory (train/, test/, feature_spec.json)")
    p.add_argument("--output", type=Path, required=True, help="run directory; an existing checkpoint there is resumed")
    p.add_argument("--model", choices=model_names(), default=conf["model"],
                   help="model of the library (fnn first trains an FM to initialise its embeddings) [%(default)s]")
    p.add_argument("--epochs", type=int, default=conf["epochs"], help="maximum epochs [%(default)s]")
    p.add_argument("--batch-size", type=int, default=conf["batch_size"], help="rows per step per rank [%(default)s]")
    p.add_argument("--lr", dest="learning_rate", type=float, default=conf["learning_rate"],
                   help="base learning rate before --lr-scaling (default: the model's, conf/models.yaml)")
    p.add_argument("--lr-scaling", choices=("linear", "none"), default=conf["lr_scaling"],
                   help="linear: multiply the learning rate by the number of ranks [%(default)s]")
    p.add_argument("--loader", choices=LOADERS, default=conf["loader"],
                   help="petastorm: make_batch_reader; arrow: pyarrow directly (same shards) [%(default)s]")
    p.add_argument("--shuffle-buffer", type=int, default=conf["shuffle_buffer"],
                   help="rows shuffled together in memory per rank, after the row-group shuffle [%(default)s]")
    p.add_argument("--prefetch", type=int, default=conf["prefetch"],
                   help="batches read ahead on a background thread (0: inline) [%(default)s]")
    p.add_argument("--warm-start", type=Path, default=None,
                   help="bundle to start from (same fields; new vocabulary rows start fresh, old ones are kept)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=conf["device"],
                   help="auto: cuda:<local rank> when a GPU is present, else cpu [%(default)s]")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=conf["amp"],
                   help="bfloat16 autocast for the forward pass [%(default)s]")
    p.add_argument("--seed", type=int, default=conf["seed"],
                   help="seed of init, data order and dropout: same seed, same run [%(default)s]")
    p.add_argument("--checkpoint-every", type=int, default=conf["checkpoint_every"],
                   help="steps between checkpoints, besides each epoch end (0: epoch ends only) [%(default)s]")
    p.add_argument("--validate-every", type=int, default=conf["validate_every"],
                   help="steps between validations, besides each epoch end (0: epoch ends only) [%(default)s]")
    p.add_argument("--early-stopping-patience", type=int, default=conf["early_stopping_patience"],
                   help="validations without a validation-AUC gain before stopping (0: never) [%(default)s]")
    p.add_argument("--log-every", type=int, default=conf["log_every"],
                   help="steps between progress lines (steps, samples/s, ETA) [%(default)s]")
    p.add_argument("--config-override", action="append", default=[], metavar="KEY=VALUE",
                   help="set any conf/train.yaml key, dotted for nested ones (YAML value), e.g. "
                        "model_config.hidden_units=[200,200] or petastorm_pool=process; repeatable")
    return p


def main(argv: list[str] | None = None) -> int:
    conf = load_conf("train")
    # Overrides first, so that they become the defaults an explicit flag still beats.
    conf = apply_overrides(conf, build_parser(conf).parse_known_args(argv)[0].config_override)
    args = vars(build_parser(conf).parse_args(argv))
    del args["config_override"]
    cfg = TrainConfig.from_dict({**conf, **args})
    dist.init()
    setup_logging(cfg.output)
    summary = train(cfg)
    if dist.is_primary():
        print(json.dumps(summary), flush=True)
    dist.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
