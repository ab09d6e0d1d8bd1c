"""Pretraining job: ``python jobs/pretrain.py --config configs/pretrain/debug_cpu.yaml --local``."""

from __future__ import annotations

import argparse
import logging
import sys

from vwm.cli import add_config_args, load_or_exit
from vwm.config import RunConfig
from vwm.train.loop import run_local


def main(cfg: RunConfig, resume: bool = False) -> int:
    summary = run_local(cfg, resume=resume)
    print(f"final loss {summary.losses[-1]:.4f} at step {summary.final_step}; outputs in {summary.run_dir}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_args(parser)
    parser.add_argument("--local", action="store_true", help="single process (the only mode in this build)")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    sys.exit(main(load_or_exit(args), resume=args.resume))
