"""Schedules as pure functions of the step: resuming at step N needs no replay of steps 0..N-1.

``step`` is the 0-based optimizer step. V-JEPA's schedulers (``src/utils/schedulers.py``) advance their
counter before each update, so update k runs with the value their formulas give for k + 1: ``lr_at`` and
``wd_at`` do the same. The reference's EMA generator yields before it advances, so ``ema_at`` uses k.
"""

from __future__ import annotations

import math

from vwm.config import EMAConfig, LRConfig, WeightDecayConfig


def _cosine(first: float, last: float, progress: float) -> float:
    return last + (first - last) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def lr_at(step: int, cfg: LRConfig, total_steps: int) -> float:
    """V-JEPA: linear warmup then cosine to ``final``. V-JEPA 2: warmup, constant, then linear cooldown."""
    tick = step + 1
    if tick < cfg.warmup_steps:
        return cfg.start + (cfg.peak - cfg.start) * tick / cfg.warmup_steps
    if cfg.schedule == "warmup_cosine":
        return _cosine(cfg.peak, cfg.final, (tick - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
    decay_start = total_steps - cfg.decay_steps
    if step < decay_start:
        return cfg.peak
    # the run's last step takes the last value of the ramp, as the reference's LinearDecaySchedule does
    progress = min(1.0, (tick - decay_start) / max(1, cfg.decay_steps))
    return cfg.peak + (cfg.final - cfg.peak) * progress


def wd_at(step: int, cfg: WeightDecayConfig, total_steps: int) -> float:
    """Cosine from ``start`` to ``end`` over the run (V-JEPA: 0.04 -> 0.4)."""
    return _cosine(cfg.start, cfg.end, (step + 1) / max(1, total_steps))


def ema_at(step: int, cfg: EMAConfig, total_steps: int) -> float:
    """Linear from ``start`` to ``end`` over ``ramp_steps`` (default: the whole run), then constant."""
    ramp = cfg.ramp_steps or total_steps
    return cfg.start + (cfg.end - cfg.start) * min(1.0, step / max(1, ramp))
