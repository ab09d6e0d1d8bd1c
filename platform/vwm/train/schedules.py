"""Schedules as pure functions of the step: resuming at step N needs no replay of steps 0..N-1.

``step`` is the 0-based optimizer step. V-JEPA's schedulers (``src/utils/schedulers.py``) advance their
counter before each update, so update k runs with the value their formulas give for k + 1: ``lr_at`` and
``wd_at`` do the same. The reference's EMA generator yields before it advances, so ``ema_at`` uses k.

``scale`` is ``optim.schedule_scale``, the reference's ``ipe_scale``: schedules are laid over
``round(scale * run_steps)`` steps, and a run of ``run_steps`` stops part way (at 80% for 1.25).
"""

from __future__ import annotations

import math

from vwm.config import EMAConfig, LRConfig, WeightDecayConfig


def _cosine(first: float, last: float, progress: float) -> float:
    return last + (first - last) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def schedule_steps(run_steps: int, scale: float = 1.0) -> int:
    """The length schedules are laid over."""
    return max(1, round(scale * run_steps))


def lr_at(step: int, cfg: LRConfig, run_steps: int, scale: float = 1.0) -> float:
    """V-JEPA: linear warmup then cosine to ``final``. V-JEPA 2: warmup, constant, then linear cooldown.

    The warmup is not scaled (the reference's is ``warmup * ipe``). The cooldown is the last ``decay_steps``
    of the run, its ramp laid over ``scale * decay_steps``: V-JEPA 2 cools down in a separate run whose
    LinearDecaySchedule also spans ``ipe_scale`` times that run, so it stops at 80% of the way to ``final``.
    """
    tick = step + 1
    if tick < cfg.warmup_steps:
        return cfg.start + (cfg.peak - cfg.start) * tick / cfg.warmup_steps
    if cfg.schedule == "warmup_cosine":
        total = schedule_steps(run_steps, scale)
        return _cosine(cfg.peak, cfg.final, (tick - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    decay_start = run_steps - cfg.decay_steps
    if step < decay_start:
        return cfg.peak
    progress = min(1.0, (tick - decay_start) / schedule_steps(cfg.decay_steps, scale))
    return cfg.peak + (cfg.final - cfg.peak) * progress


def wd_at(step: int, cfg: WeightDecayConfig, run_steps: int, scale: float = 1.0) -> float:
    """Cosine from ``start`` to ``end`` over the schedule (V-JEPA: 0.04 -> 0.4)."""
    return _cosine(cfg.start, cfg.end, (step + 1) / schedule_steps(run_steps, scale))


def ema_at(step: int, cfg: EMAConfig, run_steps: int, scale: float = 1.0) -> float:
    """Linear from ``start`` to ``end`` over ``ramp_steps`` (default: the schedule's length), then constant."""
    ramp = cfg.ramp_steps or schedule_steps(run_steps, scale)
    return cfg.start + (cfg.end - cfg.start) * min(1.0, step / ramp)
