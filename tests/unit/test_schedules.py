import math

import pytest
import torch

from vwm.config import EMAConfig, LRConfig, WeightDecayConfig
from vwm.train.ema import checksum, ema_update
from vwm.train.schedules import ema_at, lr_at, wd_at


def _reference_lr(warmup: int, start: float, peak: float, final: float, t_max: int, steps: int) -> list[float]:
    """V-JEPA's WarmupCosineSchedule (src/utils/schedulers.py): the counter advances before each update."""
    out, tick = [], 0
    for _ in range(steps):
        tick += 1
        if tick < warmup:
            out.append(start + tick / max(1, warmup) * (peak - start))
        else:
            progress = (tick - warmup) / max(1, t_max - warmup)
            out.append(max(final, final + (peak - final) * 0.5 * (1.0 + math.cos(math.pi * progress))))
    return out


def _reference_linear_decay(peak: float, final: float, t_max: int, steps: int) -> list[float]:
    """V-JEPA 2's cooldown run (LinearDecaySchedule)."""
    return [peak + (tick / max(1, t_max)) * (final - peak) for tick in range(1, steps + 1)]


def _reference_wd(ref: float, final: float, t_max: int, steps: int) -> list[float]:
    """CosineWDSchedule: cosine from ``ref`` to ``final``, also stepped before each update."""
    out = []
    for tick in range(1, steps + 1):
        wd = final + (ref - final) * 0.5 * (1.0 + math.cos(math.pi * tick / t_max))
        out.append(max(final, wd) if final <= ref else min(final, wd))
    return out


def test_warmup_cosine_step_k_uses_the_reference_value_for_k_plus_1():
    cfg = LRConfig(start=1e-4, peak=1e-3, final=1e-5, warmup_steps=10)
    ours = [lr_at(k, cfg, 100) for k in range(100)]
    assert ours == pytest.approx(_reference_lr(10, 1e-4, 1e-3, 1e-5, 100, 100), rel=1e-12)
    assert ours[0] == pytest.approx(1e-4 + 0.9e-3 / 10) and ours[9] == pytest.approx(1e-3)
    assert ours[-1] == pytest.approx(1e-5)
    assert all(a >= b for a, b in zip(ours[9:], ours[10:]))


def test_warmup_constant_decay_matches_pretrain_then_cooldown_and_reaches_final():
    cfg = LRConfig(schedule="warmup_constant_decay", start=1e-4, peak=5.25e-4, final=1e-6,
                   warmup_steps=10, decay_steps=20)
    ours = [lr_at(k, cfg, 100) for k in range(100)]
    # V-JEPA 2: a warmup-cosine run whose peak equals its final lr (flat after warmup), then a cooldown run
    reference = _reference_lr(10, 1e-4, 5.25e-4, 5.25e-4, 80, 80) + _reference_linear_decay(5.25e-4, 1e-6, 20, 20)
    assert ours == pytest.approx(reference, rel=1e-12)
    assert ours[79] == pytest.approx(5.25e-4) and ours[-1] == pytest.approx(1e-6)


def test_weight_decay_cosine_and_ema_linear():
    wd = WeightDecayConfig(start=0.04, end=0.4)
    ours = [wd_at(k, wd, 100) for k in range(100)]
    assert ours == pytest.approx(_reference_wd(0.04, 0.4, 100, 100), rel=1e-12)
    assert ours[-1] == pytest.approx(0.4)
    assert wd_at(7, WeightDecayConfig(start=0.04, end=0.04), 100) == pytest.approx(0.04)
    # the reference's momentum generator yields its first value (ema[0]) to the first update
    ema = EMAConfig(start=0.998, end=1.0)
    assert ema_at(0, ema, 100) == pytest.approx(0.998)
    assert ema_at(25, ema, 100) == pytest.approx(0.9985)
    assert ema_at(100, ema, 100) == pytest.approx(1.0)
    assert ema_at(50, EMAConfig(start=0.99, end=1.0, ramp_steps=10), 100) == pytest.approx(1.0)
    assert ema_at(7, EMAConfig(start=0.99925, end=0.99925), 100) == pytest.approx(0.99925)


def test_schedule_scale_stops_a_vjepa_run_at_80_percent_of_its_schedules():
    """configs/train/vitl16 (V-JEPA): 300 epochs x 300 iterations, warmup 40 epochs, ipe_scale 1.25."""
    lr, wd, ema = LRConfig(start=2e-4, peak=6.25e-4, final=1e-6, warmup_steps=12000), WeightDecayConfig(), EMAConfig()
    steps, t_max = 90000, int(1.25 * 90000)
    reference = _reference_lr(12000, 2e-4, 6.25e-4, 1e-6, t_max, steps)
    for k in (0, 11998, 11999, 45000, steps - 1):
        assert lr_at(k, lr, steps, 1.25) == pytest.approx(reference[k], rel=1e-12)
    assert lr_at(steps - 1, lr, steps, 1.25) == pytest.approx(7.5e-5, rel=0.02)
    assert wd_at(steps - 1, wd, steps, 1.25) == pytest.approx(_reference_wd(0.04, 0.4, t_max, steps)[-1], rel=1e-12)
    momentum = [0.998 + i * 0.002 / (300 * 300 * 1.25) for i in range(steps)]  # the reference's generator
    assert [ema_at(k, ema, steps, 1.25) for k in (0, 5000, steps - 1)] == pytest.approx(
        [momentum[0], momentum[5000], momentum[-1]], rel=1e-12)


def test_schedule_scale_stretches_only_the_cooldown_of_warmup_constant_decay():
    """V-JEPA 2's cooldown is a run of its own whose linear decay spans ipe_scale times that run."""
    cfg = LRConfig(schedule="warmup_constant_decay", start=1e-4, peak=5.25e-4, final=1e-6,
                   warmup_steps=10, decay_steps=20)
    ours = [lr_at(k, cfg, 100, 1.25) for k in range(100)]
    reference = _reference_lr(10, 1e-4, 5.25e-4, 5.25e-4, 100, 80) + _reference_linear_decay(5.25e-4, 1e-6, 25, 20)
    assert ours == pytest.approx(reference, rel=1e-12)
    assert ours[-1] == pytest.approx(5.25e-4 + 0.8 * (1e-6 - 5.25e-4))


def test_schedules_are_pure_functions_of_the_step():
    cfg = LRConfig()
    forward = [lr_at(s, cfg, 1000) for s in range(0, 1000, 37)]
    backward = [lr_at(s, cfg, 1000) for s in reversed(range(0, 1000, 37))][::-1]
    assert forward == backward and all(math.isfinite(v) for v in forward)


def test_ema_update_matches_formula():
    torch.manual_seed(0)
    target, online = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    before = [p.clone() for p in target.parameters()]
    ema_update(target, list(online.parameters()), 0.9)
    for t, b, o in zip(target.parameters(), before, online.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o, rtol=0, atol=1e-7)
    ema_update(target, list(online.parameters()), 1.0)
    for t, b, o in zip(target.parameters(), before, online.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * o, rtol=0, atol=1e-7)


def test_checksum_sees_a_swap_and_a_tiny_change():
    m = torch.nn.Linear(4, 4)
    base = checksum(m)
    with torch.no_grad():
        w = m.weight.data
        w[[0, 1]] = w[[1, 0]]
    assert not torch.equal(checksum(m), base)
    with torch.no_grad():
        m.bias[0] += 1e-6
    assert not torch.equal(checksum(m), checksum(torch.nn.Linear(4, 4)))
