"""Post-training benchmark job: ``python jobs/bench_posttrain.py --config configs/bench/posttrain.yaml``."""

from __future__ import annotations

from vwm.cli import run_job
from vwm.config import BenchPosttrainConfig
from vwm.tasks.ac_bench import run_bench_posttrain


def main(cfg: BenchPosttrainConfig) -> int:
    run_bench_posttrain(cfg)
    return 0


if __name__ == "__main__":
    run_job(main, BenchPosttrainConfig, __doc__)
