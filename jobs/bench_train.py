"""Training benchmark job: ``python jobs/bench_train.py --config configs/bench/train.yaml``."""

from __future__ import annotations

from vwm.cli import run_job
from vwm.config import BenchTrainConfig
from vwm.tasks.jepa_bench import run_bench_train


def main(cfg: BenchTrainConfig) -> int:
    run_bench_train(cfg)
    return 0


if __name__ == "__main__":
    run_job(main, BenchTrainConfig, __doc__)
