"""Data benchmark job: ``python jobs/bench_data.py --config configs/bench/data.yaml [--set cpus=[1,2]]``."""

from __future__ import annotations

import argparse
import sys

from vwm.cli import add_config_args, load_or_exit
from vwm.config import BenchDataConfig
from vwm.data.bench import run_bench_data


def main(cfg: BenchDataConfig) -> int:
    run_bench_data(cfg)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_args(parser)
    sys.exit(main(load_or_exit(parser.parse_args(), BenchDataConfig)))
