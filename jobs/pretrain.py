"""Pretraining job, runnable as it is on a laptop or through ``ray job submit``:
``python jobs/pretrain.py --config configs/pretrain/debug_cpu.yaml [--local] [--resume] [--set k=v ...]``."""

from __future__ import annotations

import argparse
import logging
import sys

from vwm.cli import add_config_args, describe_result, load_or_exit
from vwm.config import RunConfig
from vwm.train.launch import run_pretrain
from vwm.train.loop import run_local


def main(cfg: RunConfig, *, local: bool = False, resume: bool = False) -> int:
    if local:
        summary = run_local(cfg, resume=resume)
        print(f"final loss {summary.losses[-1]:.4f} at step {summary.final_step}; outputs in {summary.run_dir}")
    else:
        print(describe_result(run_pretrain(cfg, resume=resume)))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_args(parser)
    parser.add_argument("--local", action="store_true", help="one process, no Ray")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    sys.exit(main(load_or_exit(args), local=args.local, resume=args.resume))
