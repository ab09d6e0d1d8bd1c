"""Trajectory collection job: ``python jobs/collect.py --config configs/data/collect_two_rooms.yaml``."""

from __future__ import annotations

import sys

from vwm.cli import run_job
from vwm.config import CollectConfig
from vwm.data.collect import check_output, run_collect
from vwm.data.shards import DataSourceError
from vwm.raycluster import connect


def main(cfg: CollectConfig) -> int:
    try:
        check_output(cfg)
        connect()
        result = run_collect(cfg)
    except DataSourceError as e:
        print(f"collect: {e}", file=sys.stderr)
        return 2
    print(f"wrote {result.episodes} episodes in {result.seconds:.1f} s under {result.out}")
    return 0


if __name__ == "__main__":
    run_job(main, CollectConfig, __doc__)
