"""The planning evaluator's pieces that need no cluster: Wilson intervals, the baselines it adds, the
checks that reject a model or protocol before any actor starts, the batched simulator the oracle uses,
and the config's defaults and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vwm.config import ConfigError, EpisodesConfig, EvalConfig, ModelConfig, PlanConfig
from vwm.configfile import load_config
from vwm.envs import make_env
from vwm.eval.planning import EvalError, check_model, model_manifest, planners, summarize
from vwm.eval.stats import wilson
from vwm.planning.episodes import held_out_env
from vwm.planning.mpc import EpisodeRecord
from tests.conftest import REPO, write_held_out, write_tiny_ac_model


def test_wilson_interval_matches_known_values_and_holds_at_the_edges():
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson(8, 10)
    assert (lo, hi) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
    lo, hi = wilson(200, 200)
    assert hi == 1.0 and lo == pytest.approx(0.9812, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)


def test_baselines_are_added_under_the_first_planners_protocol():
    cfg = EvalConfig(model_uri="x", planners=[PlanConfig(planner="cem", horizon=3, budget=30, seed=7, label="cem-h3"),
                                              PlanConfig(planner="gradient")])
    plans = planners(cfg)
    assert [(p.planner, p.label) for p in plans] == [("cem", "cem-h3"), ("gradient", None), ("random", None),
                                                     ("oracle-cem", None)]
    assert all((p.horizon, p.budget, p.seed) == (3, 30, 7) for p in plans[2:])
    assert len(planners(cfg.model_copy(update={"baselines": False}))) == 2
    with_random = EvalConfig(model_uri="x", planners=[PlanConfig(), PlanConfig(planner="random", horizon=2)])
    assert [p.planner for p in planners(with_random)] == ["cem", "random", "oracle-cem"]


def test_a_pretraining_model_or_an_impossible_horizon_fails_before_any_actor(tmp_path):
    env = make_env("two_rooms")
    folder = write_tiny_ac_model(tmp_path / "ac", max_frames=4)
    manifest = model_manifest(str(folder), None)
    cfg = EvalConfig(model_uri=str(folder), planners=[PlanConfig(horizon=3)])
    check_model(cfg, manifest, env)  # 3 steps ahead of 4 frames: fine
    with pytest.raises(EvalError, match=r"planner cem: plan.horizon=5 exceeds .* \(4 frames"):
        check_model(cfg.model_copy(update={"planners": [PlanConfig()]}), manifest, env)
    with pytest.raises(EvalError, match="plan.action_block=4"):
        check_model(cfg.model_copy(update={"planners": [PlanConfig(horizon=3, action_block=4)]}), manifest, env)
    pretrain = {**manifest, "kind": "vjepa"}
    with pytest.raises(EvalError,
                       match=r"is a 'vjepa' world model, which cannot plan .* model_uri=models:/vwm-ac@candidate"):
        check_model(cfg, pretrain, env)
    with pytest.raises(EvalError, match="no manifest.json"):
        model_manifest(str(tmp_path / "nothing"), None)


def test_summary_metrics_of_records():
    def record(i, success, last, steps, plans):
        return EpisodeRecord(index=i, planner="cem", success=success, success_last=last, final_distance=float(i),
                             steps=steps, plans=plans, s_per_plan=0.5, seconds=2.0)

    m = summarize([record(0, True, True, 10, 2), record(1, True, False, 50, 10), record(2, False, False, 50, 10),
                   record(3, False, False, 50, 10)], wall_s=4.0)
    assert m["plan/success_rate"] == 0.5 and m["plan/success_rate_last"] == 0.25
    assert (m["plan/ci_low"], m["plan/ci_high"]) == pytest.approx(wilson(2, 4))
    assert m["plan/final_distance"] == 1.5 and m["plan/s_per_plan"] == 0.5
    assert m["plan/s_per_env_step"] == pytest.approx(8.0 / 160) and m["plan/episodes_per_s"] == 1.0


def test_held_out_env_is_read_from_the_trajectories(tmp_path):
    folder = write_held_out(tmp_path / "h", episodes=2, steps=30, seed=0, image=32)
    name, kwargs = held_out_env(EpisodesConfig(paths=[folder]))
    assert name == "two_rooms" and kwargs["image_size"] == 32 and kwargs["success_radius"] == 4.0
    assert make_env(name, **kwargs).image_size == 32


def test_two_rooms_batched_step_is_the_step_of_each_agent():
    """The oracle rolls every CEM candidate through ``step_states``: it must equal ``step`` exactly, walls,
    door and arena edges included."""
    env = make_env("two_rooms", obs_type="state")
    rng = np.random.default_rng(0)
    states = np.stack([env.sample_free(rng) for _ in range(500)])
    for _ in range(10):
        actions = rng.uniform(-1.3, 1.3, size=(500, 2))
        actions[::7, 0] = 0.0
        batched = env.step_states(states, actions)
        one_by_one = []
        for s, a in zip(states, actions):
            env.set_state(s)
            env.step(a)
            one_by_one.append(env.get_state())
        np.testing.assert_array_equal(batched, np.stack(one_by_one))
        states = batched
    assert all(env.free(s) for s in states)


def test_eval_config_defaults_and_errors():
    cfg = load_config(REPO / "configs" / "eval" / "debug_cpu.yaml", model=EvalConfig)
    assert cfg.model_uri == "models:/vwm-ac@candidate" and cfg.tracking.experiment == "vwm-eval"
    assert cfg.tracking.register_as is None and cfg.tracking.backend == "mlflow" and cfg.actors.num_actors == 2
    with pytest.raises(ConfigError, match="planners share a label"):
        load_config(REPO / "configs" / "eval" / "debug_cpu.yaml", ["planners=[{planner: cem}, {planner: cem}]"],
                    EvalConfig)
    with pytest.raises(ConfigError, match="actors.gpus"):
        load_config(REPO / "configs" / "eval" / "debug_cpu.yaml", ["actors.gpus=1"], EvalConfig)
    assert json.loads(json.dumps(cfg.model_dump(mode="json")))["episodes"]["goal_offset"] == 25


def test_vwm_evaluate_refuses_a_pretraining_model_with_exit_2(tmp_path):
    import subprocess
    import sys

    from vwm.models.artifact import write_artifact

    held_out = write_held_out(tmp_path / "h", episodes=1, steps=30, seed=0)
    pre = write_artifact(tmp_path / "pre", kind="vjepa", model_config=ModelConfig(preset="debug"), frames=2, crop=64,
                         weights={}, extras={"num_mask_sets": 2})
    base = [sys.executable, "-m", "vwm.cli", "evaluate", "-c", str(REPO / "configs" / "eval" / "debug_cpu.yaml"),
            "--set", f"episodes.paths=[{held_out}]", "--set", f"output_dir={tmp_path}/eval"]
    proc = subprocess.run([*base, "--set", f"model_uri={pre}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "which cannot plan" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "eval").exists()  # nothing started, nothing written
    proc = subprocess.run([*base, "--set", "episodes.goal=3"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "episodes.goal" in proc.stderr, proc.stderr[-2000:]


def test_plan_benchmark_configs_validate_every_stage():
    """The benchmark validates all its stages' configs before collecting anything; so must these files."""
    from vwm.config import BenchPlanConfig, CollectConfig, PosttrainConfig
    from vwm.eval.plan_bench import _post_cfg, _stage

    for files in (["plan_two_rooms.yaml"], ["plan_two_rooms.yaml", "plan_push_t.yaml"]):
        bench = load_config([REPO / "configs" / "bench" / f for f in files], model=BenchPlanConfig)
        fields = {"out": "/o", "data": "/d", "encoder": "/e"}
        collect = _stage(bench.collect, CollectConfig, fields, ["out={data}"])
        assert collect.out == "/d"
        post = _post_cfg(bench, bench.models[0], fields, "/e")
        assert isinstance(post, PosttrainConfig) and post.data.paths == ["/d/train"] and post.ac.encoder_uri == "/e"
        assert post.data.frames - 1 >= 5  # the protocol's horizon fits the predictor
        ev = _stage(bench.evaluate, EvalConfig, fields)
        assert ev.episodes.paths == ["/d/held_out"] and ev.planners[0].horizon == 5
    assert collect.env.name == "push_t" and bench.report_block == "bench_plan_push_t"


def test_cost_rank_correlation_tells_a_plannable_representation_from_noise():
    """Features that encode the position (here: a smooth map of it) order states; random features do not."""
    import torch

    from vwm.eval.geometry import cost_rank_correlation, rank_correlation

    assert rank_correlation(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 20.0, 35.0])) == pytest.approx(1.0)
    assert rank_correlation(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 2.0, 1.0])) == pytest.approx(-1.0)
    g = torch.Generator().manual_seed(0)
    states_FS = torch.rand(200, 2, generator=g) * 64
    centres_N2 = torch.rand(16, 2, generator=g) * 64  # a bump of activity per token around a centre
    z_FND = torch.exp(-((states_FS[:, None] - centres_N2[None]) ** 2).sum(-1) / 400)[..., None].expand(-1, -1, 4)
    good = cost_rank_correlation(z_FND, states_FS)
    noise = cost_rank_correlation(torch.randn(200, 16, 4, generator=g), states_FS)
    assert good["all"] > 0.6 and good["near"] > 0.6, good  # far apart, every bump is off: distances saturate
    assert abs(noise["all"]) < 0.3 and abs(noise["near"]) < 0.4, noise
