"""The cross-entropy method over action sequences, after V-JEPA 2's ``notebooks/utils/mpc_utils.py::cem``.

Each iteration draws ``samples`` sequences of H model steps from a diagonal Gaussian, clips them to the
action bounds, scores all of them with ONE ``dynamics.rollout`` call, and moves the mean and std toward
those of the ``topk`` cheapest with momentum (``new = (1 - m) x elites + m x old``). The plan is the final
mean, as the reference's. Randomness comes only from the generator passed in, keyed by (seed, episode,
step) through ``keyed_generator``, so the same seed gives the same plan.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vwm.config import CEMConfig
from vwm.planning.dynamics import Dynamics

ACTION_LOW, ACTION_HIGH = -1.0, 1.0
_PLAN_STREAM = 0x504C414E  # separates planning draws from other streams keyed by the same numbers


@dataclass(frozen=True)
class Plan:
    actions_HA: torch.Tensor  # the planned sequence, env units, inside the bounds
    cost: float  # the dynamics' predicted cost: of ``actions_HA``, or for CEM of its last iteration's best
    # candidate (scoring the mean would take one more rollout per plan)
    rollouts: int  # dynamics.rollout calls spent


def keyed_generator(seed: int, episode: int, step: int) -> torch.Generator:
    """A CPU generator that depends only on (seed, episode, step): plans do not depend on what ran before."""
    state = np.random.SeedSequence([seed, episode, step, _PLAN_STREAM]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def evaluate(dynamics: Dynamics, z0, state0, goal, actions_BHA: torch.Tensor) -> torch.Tensor:
    """(B,) cost of every candidate through one batched rollout."""
    z_BH, _ = dynamics.rollout(z0, actions_BHA, state0)
    return dynamics.cost(z_BH, goal, actions_BHA)


@torch.no_grad()
def cem(dynamics: Dynamics, z0, state0, goal, *, horizon: int, cfg: CEMConfig, generator: torch.Generator,
        init_mean_HA: torch.Tensor | None = None) -> Plan:
    """Plan ``horizon`` model steps toward ``goal`` (an encoded goal) from ``z0`` / ``state0``."""
    A = dynamics.action_dim
    mean_HA = torch.zeros(horizon, A, dtype=torch.float32) if init_mean_HA is None else init_mean_HA.float().cpu()
    std_HA = torch.full((horizon, A), cfg.init_std)
    for _ in range(cfg.iterations):
        # drawn on the CPU generator, so a plan is the same on any device
        noise_BHA = torch.randn(cfg.samples, horizon, A, generator=generator)
        actions_BHA = (mean_HA + std_HA * noise_BHA).clamp(ACTION_LOW, ACTION_HIGH)
        cost_B = evaluate(dynamics, z0, state0, goal, actions_BHA).float().cpu()
        elites_KHA = actions_BHA[cost_B.topk(cfg.topk, largest=False).indices]
        mean_HA = (1 - cfg.momentum_mean) * elites_KHA.mean(0) + cfg.momentum_mean * mean_HA
        std_HA = (1 - cfg.momentum_std) * elites_KHA.std(0, correction=0) + cfg.momentum_std * std_HA
    return Plan(mean_HA.clamp(ACTION_LOW, ACTION_HIGH), float(cost_B.min()), cfg.iterations)
