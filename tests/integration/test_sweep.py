"""The debug sweep end to end against a real mlflow server: nested runs, ASHA early stopping, best config."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from vwm.config import ConfigError, load_config
from vwm.tune.space import SweepConfig
from tests.conftest import REPO

pytestmark = pytest.mark.slow
SWEEP = REPO / "configs" / "sweep" / "mask_ema_debug.yaml"


def test_unknown_space_key_fails_before_any_trial():
    from vwm.tune.sweep import run_sweep

    cfg = load_config(SWEEP, [f"base={REPO}/configs/pretrain/debug_cpu.yaml"], SweepConfig)
    bad = cfg.model_copy(update={"space": {**cfg.space, "model.dpeth": cfg.space["mask.sets.0.num_blocks"]}})
    with pytest.raises(ConfigError, match=r"space key 'model.dpeth' is not in the base config .*did you mean model.depth"):
        run_sweep(bad)


def test_debug_sweep_nested_runs_asha_and_best_config(tmp_path, ray_cluster, mlflow_server):
    from vwm.train.loop import run_local
    from vwm.tune.sweep import run_sweep

    cfg = load_config(SWEEP, [f"base={REPO}/configs/pretrain/debug_cpu.yaml", f"output_dir={tmp_path}/sweeps"],
                      SweepConfig)
    cfg = cfg.model_copy(update={"overrides": [*cfg.overrides, f"tracking.tracking_uri={mlflow_server}",
                                               f"train.output_dir={tmp_path}/out",
                                               f"dist.storage_path={tmp_path}/ray", "train.device=cpu"]})
    result = run_sweep(cfg)
    assert result.trials == 4 and result.errored == 0
    assert min(result.iterations) < max(result.iterations) == 4, f"ASHA stopped no trial: {result.iterations}"

    client = MlflowClient(mlflow_server)
    parent = client.get_run(result.parent["run_id"])
    assert parent.info.status == "FINISHED" and "sweep.space" in parent.data.params
    assert "best.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 4 and all(c.info.status in ("FINISHED", "KILLED") for c in children)
    assert all("mask.sets.0.num_blocks" in c.data.params for c in children)
    assert all(client.get_metric_history(c.info.run_id, "eval/rankme") for c in children)

    best = load_config(result.best_config_path, ["train.steps=2", f"train.output_dir={tmp_path}/best",
                                                 "tracking.backend=jsonl"])
    assert best.mask.sets[0].num_blocks == result.best_overrides["mask.sets.0.num_blocks"]
    assert run_local(best, progress=False).final_step == 2
