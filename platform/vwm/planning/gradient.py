"""Gradient-based planning (Adam on the action sequence through the differentiable rollout) and the
random-action baseline.

Gradient planning optimises ``restarts`` sequences side by side (one rollout per Adam step over all of
them) from zero actions or from CEM's mean, projecting onto the action bounds after every step, and
keeps the cheapest. It needs dynamics whose rollout and cost are differentiable in the actions (the
learned world model; not the simulator).
"""

from __future__ import annotations

import torch

from vwm.config import CEMConfig, GradientConfig
from vwm.planning.cem import ACTION_HIGH, ACTION_LOW, Plan, cem, evaluate
from vwm.planning.dynamics import Dynamics


def gradient_plan(dynamics: Dynamics, z0, state0, goal, *, horizon: int, cfg: GradientConfig,
                  generator: torch.Generator, cem_cfg: CEMConfig | None = None) -> Plan:
    A = dynamics.action_dim
    rollouts = 0
    if cfg.init == "cem":
        if cem_cfg is None:
            raise ValueError("gradient planning with init='cem' needs the CEM settings (cem_cfg)")
        warm = cem(dynamics, z0, state0, goal, horizon=horizon, cfg=cem_cfg, generator=generator)
        init_HA, rollouts = warm.actions_HA, warm.rollouts
    else:
        init_HA = torch.zeros(horizon, A)
    # restarts after the first start uniformly inside the bounds, so they explore other basins
    spread_RHA = torch.rand(cfg.restarts - 1, horizon, A, generator=generator) * 2 - 1
    start_RHA = torch.cat((init_HA[None].float(), spread_RHA))
    device = getattr(dynamics, "device", torch.device("cpu"))
    actions_RHA = start_RHA.to(device).requires_grad_(True)
    opt = torch.optim.Adam([actions_RHA], lr=cfg.lr)
    best_cost_R = torch.full((cfg.restarts,), float("inf"))
    best_RHA = start_RHA.clone()
    with torch.enable_grad():
        for _ in range(cfg.steps):
            cost_R = evaluate(dynamics, z0, state0, goal, actions_RHA)
            rollouts += 1
            # the cost is that of the actions before this step: remember the best seen per restart
            with torch.no_grad():
                c = cost_R.detach().float().cpu()
                better = c < best_cost_R
                best_cost_R = torch.where(better, c, best_cost_R)
                best_RHA[better] = actions_RHA.detach().cpu()[better]
            opt.zero_grad(set_to_none=True)
            cost_R.sum().backward()  # restarts are independent: the sum's gradient is each one's own
            opt.step()
            with torch.no_grad():
                actions_RHA.clamp_(ACTION_LOW, ACTION_HIGH)
    with torch.no_grad():
        cost_R = evaluate(dynamics, z0, state0, goal, actions_RHA).float().cpu()
        rollouts += 1
        better = cost_R < best_cost_R
        best_cost_R = torch.where(better, cost_R, best_cost_R)
        best_RHA[better] = actions_RHA.detach().cpu()[better]
    r = int(best_cost_R.argmin())
    return Plan(best_RHA[r], float(best_cost_R[r]), rollouts)


def random_plan(action_dim: int, *, horizon: int, generator: torch.Generator) -> Plan:
    """Actions uniform in the bounds; no model is consulted (cost NaN)."""
    actions_HA = torch.rand(horizon, action_dim, generator=generator) * (ACTION_HIGH - ACTION_LOW) + ACTION_LOW
    return Plan(actions_HA, float("nan"), 0)
