"""Model-predictive control in a real env: encode the observation, plan ``horizon`` model steps, execute
the first block of ``frameskip`` env actions, re-plan, until success or the env-step budget.

``run_episode`` is what an evaluator calls once per (episode, planner); it returns an ``EpisodeRecord``
of plain numbers (and optionally frames for a video). The planner's random stream for re-plan j of
episode i is keyed by (plan.seed, i, j), so a record depends on nothing but its inputs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from vwm.config import PlanConfig
from vwm.planning.cem import Plan, cem, keyed_generator
from vwm.planning.dynamics import Dynamics
from vwm.planning.episodes import Episode
from vwm.planning.gradient import gradient_plan, random_plan


@dataclass
class EpisodeRecord:
    index: int
    planner: str
    success: bool  # at any env step
    success_last: bool  # at the last env step taken
    final_distance: float  # Euclidean distance of the final env state to the goal state
    steps: int  # env steps taken
    plans: int
    s_per_plan: float  # mean wall seconds of one plan (encoding included)
    seconds: float  # wall seconds of the whole episode
    frames_THWC: np.ndarray | None = field(default=None, repr=False)  # observation frames, start included
    goal_image_HWC: np.ndarray | None = field(default=None, repr=False)

    def row(self) -> dict:
        """The record without frames: a row of a per-episode table."""
        return {k: v for k, v in self.__dict__.items() if k not in ("frames_THWC", "goal_image_HWC")}


def make_plan(cfg: PlanConfig, dynamics: Dynamics, z0, state0, goal, generator: torch.Generator) -> Plan:
    """One plan of ``cfg.horizon`` model steps by ``cfg.planner`` (oracle-cem is CEM; what makes it the
    oracle is the ``SimulatorDynamics`` it is given)."""
    if cfg.planner in ("cem", "oracle-cem"):
        return cem(dynamics, z0, state0, goal, horizon=cfg.horizon, cfg=cfg.cem, generator=generator)
    if cfg.planner == "gradient":
        return gradient_plan(dynamics, z0, state0, goal, horizon=cfg.horizon, cfg=cfg.gradient,
                             generator=generator, cem_cfg=cfg.cem)
    if cfg.planner == "random":
        return random_plan(dynamics.action_dim, horizon=cfg.horizon, generator=generator)
    raise ValueError(f"unknown planner {cfg.planner!r}")


def check_protocol(cfg: PlanConfig, *, frameskip: int, action_dim: int, env_action_dim: int,
                   max_horizon: int | None = None) -> None:
    """The plan's block and horizon against what the dynamics take (a model's manifest says it too, so an
    evaluator checks before any actor loads the model)."""
    if frameskip != cfg.action_block:
        raise ValueError(f"plan.action_block={cfg.action_block} but the dynamics step {frameskip} env "
                         "actions per model step (the model's frameskip); set plan.action_block to match")
    if max_horizon is not None and cfg.horizon > max_horizon:
        raise ValueError(f"plan.horizon={cfg.horizon} exceeds what the model's predictor takes ({max_horizon} "
                         "frames, its post-training data.frames); lower plan.horizon or post-train with more frames")
    if action_dim != env_action_dim * frameskip:
        raise ValueError(f"the dynamics take {action_dim} numbers per model step; the env has "
                         f"{env_action_dim}-dim actions x frameskip {frameskip}")


def check_dynamics(cfg: PlanConfig, dynamics: Dynamics, env) -> None:
    check_protocol(cfg, frameskip=dynamics.frameskip, action_dim=dynamics.action_dim,
                   env_action_dim=int(env.action_space.shape[0]), max_horizon=getattr(dynamics, "max_horizon", None))


def run_episode(env, dynamics: Dynamics, episode: Episode, cfg: PlanConfig, record_frames: bool = False,
                ) -> EpisodeRecord:
    """One MPC episode in ``env`` (a ``pixels_state`` env, reset here to the episode's start and goal)."""
    check_dynamics(cfg, dynamics, env)
    t_episode = time.perf_counter()
    env_action_dim = int(env.action_space.shape[0])
    obs, _ = env.reset(seed=0, options={"state": episode.start_state, "goal": episode.goal_state})
    goal_image = env.goal_image(episode.goal_state)
    goal = dynamics.encode({"pixels": goal_image, "state": episode.goal_state})
    frames = [obs["pixels"]] if record_frames else []
    steps, plans, plan_seconds = 0, 0, 0.0
    success_any = success_now = bool(env.success(env.get_state(), episode.goal_state))
    while steps < cfg.budget and not (success_any and cfg.stop_on_success):
        t0 = time.perf_counter()
        z0 = dynamics.encode(obs)
        state0 = torch.as_tensor(np.asarray(obs["state"], dtype=np.float32))[None]
        plan = make_plan(cfg, dynamics, z0, state0, goal, keyed_generator(cfg.seed, episode.index, plans))
        plan_seconds += time.perf_counter() - t0
        plans += 1
        block_KA = plan.actions_HA[0].detach().cpu().numpy().reshape(dynamics.frameskip, env_action_dim)
        for action_A in block_KA[: cfg.budget - steps]:
            obs, *_ = env.step(action_A)
            steps += 1
            success_now = bool(env.success(env.get_state(), episode.goal_state))
            success_any |= success_now
            if record_frames:
                frames.append(obs["pixels"])
            if success_now and cfg.stop_on_success:
                break
    final = env.get_state()
    return EpisodeRecord(
        index=episode.index, planner=cfg.label or cfg.planner, success=success_any, success_last=success_now,
        final_distance=float(np.linalg.norm(np.asarray(final, dtype=np.float64) - episode.goal_state)),
        steps=steps, plans=plans, s_per_plan=plan_seconds / max(plans, 1),
        seconds=time.perf_counter() - t_episode,
        frames_THWC=np.stack(frames) if record_frames else None,
        goal_image_HWC=goal_image if record_frames else None)
