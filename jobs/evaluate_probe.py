"""Frozen-encoder probe job: ``python jobs/evaluate_probe.py --config configs/eval/probe_debug.yaml``."""

from __future__ import annotations

from vwm.cli import probe_and_describe, run_job
from vwm.config import ProbeEvalConfig


def main(cfg: ProbeEvalConfig) -> int:
    return probe_and_describe(cfg)


if __name__ == "__main__":
    run_job(main, ProbeEvalConfig, __doc__)
