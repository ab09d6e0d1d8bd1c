"""Action-conditioned post-training job, runnable as it is or through ``ray job submit``:
``python jobs/posttrain.py --config configs/posttrain/debug_cpu.yaml [--local] [--resume] [--set k=v ...]``."""

from __future__ import annotations

from vwm.cli import run_job, train_and_describe
from vwm.config import PosttrainConfig
from vwm.tasks.ac import run_posttrain


def main(cfg: PosttrainConfig, *, local: bool = False, resume: bool = False) -> int:
    return train_and_describe(run_posttrain, cfg, local=local, resume=resume)


if __name__ == "__main__":
    run_job(main, PosttrainConfig, __doc__, training=True)
