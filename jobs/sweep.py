"""Sweep job: ``python jobs/sweep.py --config configs/sweep/mask_ema_debug.yaml``."""

from __future__ import annotations

import argparse
import sys

from vwm.cli import add_config_args, load_or_exit
from vwm.tune.space import SweepConfig
from vwm.tune.sweep import run_sweep


def main(cfg: SweepConfig) -> int:
    run_sweep(cfg)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    add_config_args(parser)
    sys.exit(main(load_or_exit(parser.parse_args(), SweepConfig)))
