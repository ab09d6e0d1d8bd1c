"""Data benchmark job: ``python jobs/bench_data.py --config configs/bench/data.yaml [--set cpus=[1,2]]``."""

from __future__ import annotations

from vwm.cli import run_job
from vwm.config import BenchDataConfig
from vwm.data.bench import run_bench_data


def main(cfg: BenchDataConfig) -> int:
    run_bench_data(cfg)
    return 0


if __name__ == "__main__":
    run_job(main, BenchDataConfig, __doc__)
