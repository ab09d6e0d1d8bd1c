"""End-to-end planning benchmark: ``python jobs/bench_plan.py --config configs/bench/plan_two_rooms.yaml``."""

from __future__ import annotations

from vwm.cli import run_job
from vwm.config import BenchPlanConfig
from vwm.eval.plan_bench import run_bench_plan


def main(cfg: BenchPlanConfig) -> int:
    run_bench_plan(cfg)
    return 0


if __name__ == "__main__":
    run_job(main, BenchPlanConfig, __doc__)
