"""Learning benchmark: ``python jobs/bench_learning.py --config configs/bench/learning.yaml``."""

from __future__ import annotations

from vwm.cli import run_job
from vwm.config import BenchLearningConfig
from vwm.eval.learning_bench import run_bench_learning


def main(cfg: BenchLearningConfig) -> int:
    result = run_bench_learning(cfg)
    return 0 if all(ok for _, ok in result["verdicts"]) else 1


if __name__ == "__main__":
    run_job(main, BenchLearningConfig, __doc__)
