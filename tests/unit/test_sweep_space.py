"""Sweep files: what each scheduler and searcher accepts, checked before any cluster work."""

from __future__ import annotations

import pytest

from tests.conftest import REPO
from vwm.config import ConfigError
from vwm.configfile import load_config
from vwm.tune.space import SweepConfig, decode_sample, param_space
from vwm.tune.sweep import run_sweep

SWEEPS = REPO / "configs" / "sweep"
BASE = f"base={REPO}/configs/pretrain/debug_cpu.yaml"


def test_pbt_space_holds_only_keys_that_keep_parameter_shapes():
    raw = load_config(SWEEPS / "pbt_debug.yaml", [BASE], SweepConfig).model_dump()
    raw["space"]["model.depth"] = {"kind": "choice", "values": [2, 4]}
    with pytest.raises(ValueError, match=r"space key 'model.depth': PBT .* only optim.\* and mask.sets.N.\*"):
        SweepConfig.model_validate(raw)
    with pytest.raises(ConfigError, match="scheduler pbt .* use search: random"):
        load_config(SWEEPS / "pbt_debug.yaml", [BASE, "search=optuna"], SweepConfig)


def test_pbt_needs_a_checkpoint_at_every_report_before_any_cluster_work():
    cfg = load_config(SWEEPS / "pbt_debug.yaml", [BASE], SweepConfig)
    cfg = cfg.model_copy(update={"overrides": [*cfg.overrides, "train.checkpoint_every=6"]})
    with pytest.raises(ConfigError, match=r"train.checkpoint_every == train.eval_every \(now 6 and 3\)"):
        run_sweep(cfg)  # fails before connecting to Ray: no cluster runs in unit tests


def test_optuna_gets_list_choices_as_text_and_trials_get_them_back():
    cfg = load_config(SWEEPS / "mask_ema_debug.yaml", [BASE, "search=optuna"], SweepConfig)
    domain = param_space(cfg)["space"]["mask.sets.1.spatial_scale"]
    assert domain.categories == ["[0.5, 0.5]", "[0.7, 0.7]"]
    sampled = {"mask.sets.1.spatial_scale": "[0.7, 0.7]", "optim.ema.start": 0.99}
    assert decode_sample(cfg, sampled) == {"mask.sets.1.spatial_scale": [0.7, 0.7], "optim.ema.start": 0.99}
    random = load_config(SWEEPS / "mask_ema_debug.yaml", [BASE], SweepConfig)
    assert param_space(random)["space"]["mask.sets.1.spatial_scale"].categories == [[0.5, 0.5], [0.7, 0.7]]
