"""Schedules as pure functions of the step: resuming at step N needs no replay of steps 0..N-1."""

from __future__ import annotations

import math

from vwm.config import EMAConfig, LRConfig, WeightDecayConfig


def lr_at(step: int, cfg: LRConfig, total_steps: int) -> float:
    """V-JEPA: linear warmup then cosine to ``final``. V-JEPA 2: warmup, constant, then linear cooldown."""
    if step < cfg.warmup_steps:
        return cfg.start + (cfg.peak - cfg.start) * step / cfg.warmup_steps
    if cfg.schedule == "warmup_cosine":
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        return cfg.final + (cfg.peak - cfg.final) * 0.5 * (1.0 + math.cos(math.pi * progress))
    decay_start = total_steps - cfg.decay_steps
    if step < decay_start:
        return cfg.peak
    progress = min(1.0, (step - decay_start) / max(1, cfg.decay_steps))
    return cfg.peak + (cfg.final - cfg.peak) * progress


def wd_at(step: int, cfg: WeightDecayConfig, total_steps: int) -> float:
    """Cosine from ``start`` to ``end`` over the run (V-JEPA: 0.04 -> 0.4)."""
    progress = min(1.0, step / max(1, total_steps))
    return cfg.end + (cfg.start - cfg.end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def ema_at(step: int, cfg: EMAConfig, total_steps: int) -> float:
    """Linear from ``start`` to ``end`` over ``ramp_steps`` (default: the whole run), then constant."""
    ramp = cfg.ramp_steps or total_steps
    return cfg.start + (cfg.end - cfg.start) * min(1.0, step / max(1, ramp))
