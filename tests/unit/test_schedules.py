import math

import pytest
import torch

from vwm.config import EMAConfig, LRConfig, WeightDecayConfig
from vwm.train.ema import checksum, ema_update
from vwm.train.schedules import ema_at, lr_at, wd_at


def test_warmup_cosine():
    cfg = LRConfig(start=1e-4, peak=1e-3, final=1e-5, warmup_steps=10)
    assert lr_at(0, cfg, 100) == pytest.approx(1e-4)
    assert lr_at(5, cfg, 100) == pytest.approx(5.5e-4)
    assert lr_at(10, cfg, 100) == pytest.approx(1e-3)
    assert lr_at(55, cfg, 100) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)
    assert lr_at(100, cfg, 100) == pytest.approx(1e-5)
    values = [lr_at(s, cfg, 100) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_warmup_constant_decay_vjepa2():
    cfg = LRConfig(schedule="warmup_constant_decay", start=0.0, peak=5.25e-4, final=0.0,
                   warmup_steps=10, decay_steps=20)
    assert lr_at(5, cfg, 100) == pytest.approx(2.625e-4)
    assert lr_at(10, cfg, 100) == lr_at(79, cfg, 100) == pytest.approx(5.25e-4)
    assert lr_at(90, cfg, 100) == pytest.approx(5.25e-4 / 2)
    assert lr_at(100, cfg, 100) == pytest.approx(0.0)


def test_weight_decay_cosine_and_ema_linear():
    wd = WeightDecayConfig(start=0.04, end=0.4)
    assert wd_at(0, wd, 100) == pytest.approx(0.04)
    assert wd_at(50, wd, 100) == pytest.approx(0.22)
    assert wd_at(100, wd, 100) == pytest.approx(0.4)
    ema = EMAConfig(start=0.998, end=1.0)
    assert ema_at(0, ema, 100) == pytest.approx(0.998)
    assert ema_at(25, ema, 100) == pytest.approx(0.9985)
    assert ema_at(100, ema, 100) == pytest.approx(1.0)
    assert ema_at(50, EMAConfig(start=0.99, end=1.0, ramp_steps=10), 100) == pytest.approx(1.0)
    assert ema_at(7, EMAConfig(start=0.99925, end=0.99925), 100) == pytest.approx(0.99925)


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
