"""Pretraining job, runnable as it is on a laptop or through ``ray job submit``:
``python jobs/pretrain.py --config configs/pretrain/debug_cpu.yaml [--local] [--resume] [--set k=v ...]``."""

from __future__ import annotations

import argparse
import logging
import sys

from vwm.cli import add_config_args, describe_result, load_or_exit
from vwm.config import PretrainConfig
from vwm.tasks.jepa import run_pretrain


def main(cfg: PretrainConfig, *, local: bool = False, resume: bool = False) -> int:
    print(describe_result(run_pretrain(cfg, local=local, resume=resume)))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_args(parser)
    parser.add_argument("--local", action="store_true", help="train in this process; default: Ray Train workers")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    sys.exit(main(load_or_exit(args), local=args.local, resume=args.resume))
