"""Planning evaluation job: ``python jobs/evaluate.py --config configs/eval/debug_cpu.yaml``."""

from __future__ import annotations

from vwm.cli import evaluate_and_describe, run_job
from vwm.config import EvalConfig


def main(cfg: EvalConfig) -> int:
    return evaluate_and_describe(cfg)


if __name__ == "__main__":
    run_job(main, EvalConfig, __doc__)
