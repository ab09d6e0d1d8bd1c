"""Sweeps end to end against a real mlflow server: the debug sweep (ASHA early stopping, nested runs, best
config), failing trials, and PBT cloning checkpoints between trials."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from vwm.config import ConfigError
from vwm.configfile import load_config
from vwm.tune.space import SweepConfig
from tests.conftest import REPO

pytestmark = pytest.mark.slow
SWEEP = REPO / "configs" / "sweep" / "mask_ema_debug.yaml"
PBT = REPO / "configs" / "sweep" / "pbt_debug.yaml"
DEBUG = REPO / "configs" / "pretrain" / "debug_cpu.yaml"


def _sweep(path, tmp_path, mlflow_server, *changes, overrides=()):
    cfg = load_config(path, [f"base={DEBUG}", f"output_dir={tmp_path}/sweeps", *changes], SweepConfig)
    return cfg.model_copy(update={"overrides": [*cfg.overrides, f"tracking.tracking_uri={mlflow_server}",
                                                f"train.output_dir={tmp_path}/out", f"dist.storage_path={tmp_path}/ray",
                                                "train.device=cpu", *overrides]})


def _children(client, parent_id: str):
    parent = client.get_run(parent_id)
    return parent, client.search_runs([parent.info.experiment_id],
                                      filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")


def test_unknown_space_key_fails_before_any_trial():
    from vwm.tune.sweep import run_sweep

    cfg = load_config(SWEEP, [f"base={REPO}/configs/pretrain/debug_cpu.yaml"], SweepConfig)
    bad = cfg.model_copy(update={"space": {**cfg.space, "model.dpeth": cfg.space["mask.sets.0.num_blocks"]}})
    with pytest.raises(ConfigError,
                       match=r"space key 'model.dpeth' is not in the base config .*did you mean model.depth"):
        run_sweep(bad)


def test_debug_sweep_nested_runs_asha_and_best_config(tmp_path, ray_cluster, mlflow_server):
    from vwm.tasks.jepa import run_pretrain
    from vwm.tune.sweep import run_sweep

    # Optuna TPE as the searcher (random search runs in the PBT test, grid in the failing-trials one); 8 steps
    # with an evaluation every 2 give each trial the sweep file's 4 reports, so ASHA's rungs are the same.
    # Two trials at a time (each holds 1 of the 2 CPUs): ASHA is asynchronous, the first trial to reach a
    # rung always goes on, a later one stops when it is below the rung's cutoff
    result = run_sweep(_sweep(SWEEP, tmp_path, mlflow_server, "search=optuna", "max_concurrent_trials=2",
                              overrides=["train.steps=8", "train.eval_every=2", "train.checkpoint_every=8",
                                         "train.log_every=2"]))
    assert result.trials == 4 and result.errored == 0
    assert min(result.iterations) < max(result.iterations) == 4, f"ASHA stopped no trial: {result.iterations}"

    client = MlflowClient(mlflow_server)
    parent, children = _children(client, result.parent["run_id"])
    assert parent.info.status == "FINISHED" and "sweep.space" in parent.data.params
    assert "best.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert len(children) == 4 and all(c.info.status in ("FINISHED", "KILLED") for c in children)
    assert all("mask.sets.0.num_blocks" in c.data.params for c in children)
    assert {c.data.params["mask.sets.1.spatial_scale"] for c in children} <= {"[0.5, 0.5]", "[0.7, 0.7]"}
    assert all(client.get_metric_history(c.info.run_id, "eval/rankme") for c in children)

    best = load_config(result.best_config_path, ["train.steps=2", f"train.output_dir={tmp_path}/best",
                                                 "tracking.backend=jsonl"])
    assert best.mask.sets[0].num_blocks == result.best_overrides["mask.sets.0.num_blocks"]
    assert run_pretrain(best, local=True, progress=False).summary.final_step == 2


def test_failing_trials_are_marked_failed_and_the_sweep_goes_on(tmp_path, ray_cluster, mlflow_server):
    """A value the config rejects and a NaN loss fail their trials, each with its error in MLflow; the
    healthy trial wins on the labelled objective (linear-probe accuracy)."""
    from vwm.raycompat import orphaned_groups
    from vwm.tune.sweep import run_sweep

    # two trials at a time (each holds 1 of the 2 CPUs): FIFO stops nothing, so the order does not matter
    cfg = _sweep(SWEEP, tmp_path, mlflow_server, "scheduler.kind=fifo", "metric=eval/probe_acc", "num_samples=1",
                 "max_concurrent_trials=2",
                 overrides=["train.steps=4", "train.eval_every=2", "train.checkpoint_every=4",
                            "train.max_nonfinite_steps=2", "optim.lr.warmup_steps=0",
                            "monitor.probe.label=direction", "monitor.probe.clips=32"])
    cfg = SweepConfig.model_validate({**cfg.model_dump(), "search": "grid",
                                      "space": {"optim.lr.peak": {"kind": "grid", "values": [5e-4, 1e30, -1.0]}}})
    result = run_sweep(cfg)
    assert result.trials == 3 and result.errored == 2
    assert result.best_overrides == {"optim.lr.peak": 5e-4} and 0 <= result.best_metric <= 1

    client = MlflowClient(mlflow_server)
    parent, children = _children(client, result.parent["run_id"])
    assert parent.info.status == "FINISHED"
    by_lr = {float(c.data.params["optim.lr.peak"]): c for c in children}
    assert set(by_lr) == {5e-4, 1e30, -1.0}
    assert by_lr[5e-4].info.status == "FINISHED"
    assert client.get_metric_history(by_lr[5e-4].info.run_id, "eval/probe_acc")
    assert by_lr[1e30].info.status == "FAILED" and "non-finite losses" in by_lr[1e30].data.tags["error"]
    assert by_lr[-1.0].info.status == "FAILED" and "optim.lr.peak" in by_lr[-1.0].data.tags["error"]
    assert orphaned_groups() == []


def test_pbt_clones_a_better_trials_checkpoint(tmp_path, ray_cluster, mlflow_server, monkeypatch):
    """Two trials side by side; at each report the worse continues from the better one's checkpoint with
    perturbed schedules: its new run starts at the cloned step, not at 0. Started, as a user would, from a
    folder holding configs/ with relative paths: trials (which Tune runs in its own folders) use them too."""
    from vwm.raycompat import orphaned_groups
    from vwm.tune.sweep import run_sweep

    (tmp_path / "configs").symlink_to(REPO / "configs")
    monkeypatch.chdir(tmp_path)
    cfg = load_config("configs/sweep/pbt_debug.yaml", ["output_dir=sweeps"], SweepConfig)
    # 8 steps, a report and a checkpoint every 2: the sweep file's 4 reports (3 chances to clone) in fewer steps
    result = run_sweep(cfg.model_copy(update={"overrides": [
        *cfg.overrides, f"tracking.tracking_uri={mlflow_server}", "train.output_dir=out", "dist.storage_path=ray",
        "train.device=cpu", "train.steps=8", "train.eval_every=2", "train.checkpoint_every=2", "train.log_every=2"]}))
    assert len(list((tmp_path / "out").iterdir())) >= 2 and len(list((tmp_path / "ray").iterdir())) >= 2
    assert result.trials == 2 and result.errored == 0 and result.best_metric is not None

    client = MlflowClient(mlflow_server)
    parent, children = _children(client, result.parent["run_id"])
    clones = [c for c in children if "init_from" in c.data.tags]
    assert clones, "PBT cloned no checkpoint"
    for clone in clones:
        steps = [m.step for m in client.get_metric_history(clone.info.run_id, "train/loss")]
        assert min(steps) > 0, f"a clone trained from step 0: {steps}"
    assert len({c.data.tags["trial_id"] for c in children}) == 2
    assert all(c.info.status in ("FINISHED", "KILLED") for c in children)  # PBT-paused runs: KILLED
    best = load_config(result.best_config_path)
    assert 0.98 <= best.optim.ema.start <= 0.999  # PBT's perturbations stay inside the sweep file's range
    assert orphaned_groups() == []
