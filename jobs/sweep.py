"""Sweep job: ``python jobs/sweep.py --config configs/sweep/mask_ema_debug.yaml``."""

from __future__ import annotations

from vwm.cli import run_job
from vwm.tune.space import SweepConfig
from vwm.tune.sweep import run_sweep


def main(cfg: SweepConfig) -> int:
    run_sweep(cfg)
    return 0


if __name__ == "__main__":
    run_job(main, SweepConfig, __doc__)
