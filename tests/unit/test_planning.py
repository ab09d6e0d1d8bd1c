"""Planners over the Dynamics protocol: CEM and gradient planning reach the known optimum of a toy linear
problem, plans are keyed by seed, the learned adapter scores every CEM candidate in one rollout, the oracle
(CEM on the true simulator) solves TwoRooms episodes, and episodes are a function of (seed, index)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vwm.config import CEMConfig, EpisodesConfig, GradientConfig, PlanConfig
from vwm.envs import make_env
from vwm.models.ac_world_model import ACWorldModel
from vwm.planning.cem import cem, keyed_generator
from vwm.planning.dynamics import LearnedDynamics, SimulatorDynamics, latent_cost
from vwm.planning.episodes import EpisodeError, draw_episodes, load_episodes, load_trajectory_states
from vwm.planning.gradient import gradient_plan, random_plan
from vwm.planning.mpc import run_episode
from tests.conftest import tiny_ac_parts, write_held_out

IMAGE = 32


class ToyLinear:
    """z_{h+1} = z_h + M a_h with cost |z_H - goal|^2 + lam |a|^2: the optimum is a ridge regression."""

    frameskip = 1

    def __init__(self, horizon: int = 3, lam: float = 0.05):
        self.M = torch.tensor([[0.8, -0.3], [0.2, 0.6]])
        self.action_dim, self.horizon, self.lam, self.calls = 2, horizon, lam, []

    def encode(self, obs):
        return torch.as_tensor(obs["state"], dtype=torch.float32)[None]

    def rollout(self, z0_1S, actions_BHA, state0=None):
        self.calls.append(actions_BHA.shape[0])
        z_BHS = z0_1S[:, None] + torch.cumsum(actions_BHA @ self.M.T, dim=1)
        return z_BHS, z_BHS

    def cost(self, z_BHS, goal_1S, actions_BHA):
        return (z_BHS[:, -1] - goal_1S).pow(2).sum(-1) + self.lam * actions_BHA.pow(2).sum((1, 2))

    def optimum(self, z0_S, goal_S) -> torch.Tensor:
        S = self.M.repeat(1, self.horizon)  # z_H - z0 = S @ vec(actions)
        a = torch.linalg.solve(S.T @ S + self.lam * torch.eye(2 * self.horizon), S.T @ (goal_S - z0_S))
        return a.reshape(self.horizon, 2)


TOY_Z0, TOY_GOAL = torch.tensor([0.0, 0.0]), torch.tensor([0.9, 0.7])
TOY_CEM = CEMConfig(samples=200, iterations=25, topk=20, momentum_mean=0.1, momentum_std=0.3, init_std=0.5)


def test_cem_finds_the_optimum_of_a_linear_quadratic_problem():
    toy = ToyLinear()
    best = toy.optimum(TOY_Z0, TOY_GOAL)
    assert best.abs().max() < 1  # inside the bounds, so the clipped problem has the same optimum
    plan = cem(toy, TOY_Z0[None], None, TOY_GOAL[None], horizon=3, cfg=TOY_CEM, generator=keyed_generator(0, 0, 0))
    torch.testing.assert_close(plan.actions_HA, best, atol=0.05, rtol=0)
    assert toy.calls == [200] * 25  # every candidate of an iteration in one rollout call


def test_same_seed_same_plan_and_other_keys_differ():
    def plan(*key):
        return cem(ToyLinear(), TOY_Z0[None], None, TOY_GOAL[None], horizon=3,
                   cfg=TOY_CEM.model_copy(update={"iterations": 3}), generator=keyed_generator(*key)).actions_HA

    assert torch.equal(plan(1, 2, 3), plan(1, 2, 3))
    assert not torch.equal(plan(1, 2, 3), plan(1, 2, 4))
    assert not torch.equal(plan(1, 2, 3), plan(2, 2, 3))


def test_cem_keeps_actions_in_bounds_when_the_goal_is_out_of_reach():
    plan = cem(ToyLinear(), TOY_Z0[None], None, torch.tensor([[50.0, -50.0]]), horizon=3, cfg=TOY_CEM,
               generator=keyed_generator(0, 0, 0))
    assert plan.actions_HA.abs().max() <= 1 and plan.actions_HA.abs().max() > 0.99


@pytest.mark.parametrize("init", ["zero", "cem"])
def test_gradient_planning_lowers_the_cost_to_the_optimum(init):
    toy = ToyLinear()
    best = toy.optimum(TOY_Z0, TOY_GOAL)
    zero_cost = float(toy.cost(*toy.rollout(TOY_Z0[None], torch.zeros(1, 3, 2))[:1], TOY_GOAL[None],
                               torch.zeros(1, 3, 2)))
    plan = gradient_plan(toy, TOY_Z0[None], None, TOY_GOAL[None], horizon=3,
                         cfg=GradientConfig(steps=200, lr=0.05, init=init, restarts=3),
                         generator=keyed_generator(0, 0, 0), cem_cfg=TOY_CEM.model_copy(update={"iterations": 3}))
    assert plan.cost < 0.1 * zero_cost
    torch.testing.assert_close(plan.actions_HA, best, atol=0.02, rtol=0)
    assert toy.calls[-201:] == [3] * 201  # restarts share each rollout


def test_random_plan_is_keyed_and_in_bounds():
    a = random_plan(10, horizon=5, generator=keyed_generator(0, 1, 2)).actions_HA
    assert a.shape == (5, 10) and a.abs().max() <= 1
    assert torch.equal(a, random_plan(10, horizon=5, generator=keyed_generator(0, 1, 2)).actions_HA)


def test_latent_cost_l1_l2_and_action_penalty():
    z_BHND, goal_1ND = torch.zeros(2, 3, 4, 5), torch.full((1, 4, 5), 2.0)
    a_BHA = torch.ones(2, 3, 6)
    assert latent_cost(z_BHND, goal_1ND, a_BHA).tolist() == [2.0, 2.0]
    assert latent_cost(z_BHND, goal_1ND, a_BHA, "l2", action_penalty=0.5).tolist() == [4.5, 4.5]
    z_BHND[:, :2] = 2.0  # reaching the goal early counts only when every step is scored
    assert latent_cost(z_BHND, goal_1ND, a_BHA, steps="all").tolist() == pytest.approx([2 / 3, 2 / 3])
    assert latent_cost(z_BHND, goal_1ND, a_BHA, steps="last").tolist() == [2.0, 2.0]


# ------------------------------------------------------------------------------------ learned model
def tiny_world_model(frameskip: int = 5) -> ACWorldModel:
    _, encoder, predictor, fields = tiny_ac_parts(IMAGE, frameskip)
    return ACWorldModel({"kind": "vjepa-ac", **fields}, encoder, predictor)


class CountingModel:
    def __init__(self, model):
        self.model, self.batches = model, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def rollout(self, z0, actions_BHA, state0):
        self.batches.append(tuple(actions_BHA.shape))
        return self.model.rollout(z0, actions_BHA, state0)


def test_learned_adapter_scores_every_cem_candidate_in_one_rollout_per_iteration():
    model = CountingModel(tiny_world_model())
    dyn = LearnedDynamics(model)
    env = make_env("two_rooms", image_size=IMAGE)
    obs, _ = env.reset(seed=0)
    z0, goal = dyn.encode(obs), dyn.encode({"pixels": env.goal_image(env.goal)})
    assert z0.shape == (1, 4, 32) and dyn.action_dim == 10
    state0 = torch.as_tensor(obs["state"])[None]
    cfg = CEMConfig(samples=40, iterations=3, topk=5)
    plan = cem(dyn, z0, state0, goal, horizon=4, cfg=cfg, generator=keyed_generator(0, 0, 0))
    assert model.batches == [(40, 4, 10)] * 3
    assert plan.actions_HA.shape == (4, 10) and plan.rollouts == 3


def test_gradient_planning_through_the_learned_rollout_lowers_its_cost():
    dyn = LearnedDynamics(tiny_world_model(), cost="l2")
    env = make_env("two_rooms", image_size=IMAGE)
    obs, _ = env.reset(seed=1)
    z0, goal = dyn.encode(obs), dyn.encode({"pixels": env.goal_image(env.goal)})
    state0 = torch.as_tensor(obs["state"])[None]
    zeros = torch.zeros(1, 3, 10)
    with torch.no_grad():
        zero_cost = float(dyn.cost(dyn.rollout(z0, zeros, state0)[0], goal, zeros))
    plan = gradient_plan(dyn, z0, state0, goal, horizon=3, cfg=GradientConfig(steps=15, lr=0.2),
                         generator=keyed_generator(0, 0, 0))
    assert plan.cost < zero_cost


# ------------------------------------------------------------------------------ episodes and oracle
@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    return write_held_out(tmp_path_factory.mktemp("held_out"), episodes=6, steps=60, seed=3, image=IMAGE)


def test_episodes_are_a_function_of_seed_and_index(held_out):
    env = make_env("two_rooms", image_size=IMAGE)
    cfg = EpisodesConfig(paths=[held_out], count=8, goal_offset=25, seed=4)
    a, b = load_episodes(cfg, env), load_episodes(cfg, env)
    assert [(e.source, e.start_step) for e in a] == [(e.source, e.start_step) for e in b]
    assert all(np.array_equal(x.goal_state, y.goal_state) for x, y in zip(a, b))
    trajectories = load_trajectory_states(cfg)
    tail = draw_episodes(cfg, trajectories, env, indices=[5, 6])  # a share of the episodes, as an actor's
    assert [(e.index, e.source, e.start_step) for e in tail] == [(e.index, e.source, e.start_step) for e in a[5:7]]
    other = load_episodes(cfg.model_copy(update={"seed": 5}), env)
    assert [(e.source, e.start_step) for e in other] != [(e.source, e.start_step) for e in a]
    states = dict(trajectories)
    for e in a:  # the goal is the state goal_offset env steps after the start
        np.testing.assert_array_equal(e.goal_state, states[e.source][e.start_step + 25])
        assert not env.success(e.start_state, e.goal_state)
    with pytest.raises(EpisodeError, match="longer than episodes.goal_offset=100"):
        load_episodes(cfg.model_copy(update={"goal_offset": 100}))


def test_oracle_cem_solves_two_rooms_episodes(held_out):
    env = make_env("two_rooms", image_size=IMAGE)
    episodes = load_episodes(EpisodesConfig(paths=[held_out], count=5, seed=0), env)
    sim = SimulatorDynamics(make_env("two_rooms", obs_type="state", image_size=IMAGE), frameskip=5)
    cfg = PlanConfig(planner="oracle-cem", cem=CEMConfig(samples=48, iterations=4, topk=8, momentum_std=0.5))
    records = [run_episode(env, sim, e, cfg, record_frames=(e.index == 0)) for e in episodes]
    assert sum(r.success for r in records) >= 4, [r.row() for r in records]
    for r in records:
        assert r.steps <= cfg.budget and r.plans == -(-r.steps // 5)
        assert r.success_last == (r.final_distance < env.success_radius)
    assert records[0].frames_THWC.shape == (records[0].steps + 1, IMAGE, IMAGE, 3)
    # the same seed replays the same episode exactly
    again = run_episode(env, sim, episodes[1], cfg)
    assert (again.steps, again.final_distance) == (records[1].steps, records[1].final_distance)


def test_random_actions_rarely_solve_what_the_oracle_solves(held_out):
    env = make_env("two_rooms", image_size=IMAGE)
    episodes = load_episodes(EpisodesConfig(paths=[held_out], count=5, seed=0), env)
    sim = SimulatorDynamics(make_env("two_rooms", obs_type="state", image_size=IMAGE), frameskip=5)
    records = [run_episode(env, sim, e, PlanConfig(planner="random")) for e in episodes]
    assert all(r.steps == 50 or r.success for r in records)
    assert sum(r.success for r in records) <= 2


def test_mpc_rejects_a_block_or_horizon_the_model_cannot_take(held_out):
    env = make_env("two_rooms", image_size=IMAGE)
    [episode] = load_episodes(EpisodesConfig(paths=[held_out], count=1), env)
    with pytest.raises(ValueError, match="plan.action_block=4"):
        run_episode(env, LearnedDynamics(tiny_world_model()), episode, PlanConfig(action_block=4))
    with pytest.raises(ValueError, match="plan.horizon=9 exceeds"):
        run_episode(env, LearnedDynamics(tiny_world_model()), episode, PlanConfig(horizon=9))


def test_plan_config_defaults_are_the_protocol_and_errors_name_the_key():
    cfg = PlanConfig()
    assert (cfg.budget, cfg.horizon, cfg.action_block, cfg.cem.samples, cfg.cem.iterations, cfg.cem.topk) == \
        (50, 5, 5, 300, 30, 30)
    assert EpisodesConfig().goal_offset == 25
    with pytest.raises(ValueError, match="plan.cem.topk=400 exceeds plan.cem.samples=300"):
        PlanConfig(cem={"topk": 400})
    with pytest.raises(ValueError):
        PlanConfig(planner="mppi")
