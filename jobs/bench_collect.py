"""Collection benchmark job: ``python jobs/bench_collect.py --config configs/bench/collect.yaml``."""

from __future__ import annotations

from vwm.cli import run_job
from vwm.config import BenchCollectConfig
from vwm.data.bench_collect import run_bench_collect


def main(cfg: BenchCollectConfig) -> int:
    run_bench_collect(cfg)
    return 0


if __name__ == "__main__":
    run_job(main, BenchCollectConfig, __doc__)
