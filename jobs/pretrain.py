"""Pretraining job, runnable as it is on a laptop or through ``ray job submit``:
``python jobs/pretrain.py --config configs/pretrain/debug_cpu.yaml [--local] [--resume] [--set k=v ...]``."""

from __future__ import annotations

from vwm.cli import run_job, train_and_describe
from vwm.config import PretrainConfig
from vwm.tasks.jepa import run_pretrain


def main(cfg: PretrainConfig, *, local: bool = False, resume: bool = False) -> int:
    return train_and_describe(run_pretrain, cfg, local=local, resume=resume)


if __name__ == "__main__":
    run_job(main, PretrainConfig, __doc__, training=True)
