"""Trajectory collection job: ``python jobs/collect.py --config configs/data/collect_two_rooms.yaml``."""

from __future__ import annotations

from vwm.cli import collect_and_describe, run_job
from vwm.config import CollectConfig


def main(cfg: CollectConfig) -> int:
    return collect_and_describe(cfg)


if __name__ == "__main__":
    run_job(main, CollectConfig, __doc__)
