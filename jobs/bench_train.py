"""Training benchmark job: ``python jobs/bench_train.py --config configs/bench/train.yaml``."""

from __future__ import annotations

import argparse
import sys

from vwm.cli import add_config_args, load_or_exit
from vwm.config import BenchTrainConfig
from vwm.train.bench import run_bench_train


def main(cfg: BenchTrainConfig) -> int:
    run_bench_train(cfg)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_args(parser)
    sys.exit(main(load_or_exit(parser.parse_args(), BenchTrainConfig)))
