"""What a planner optimises through: the ``Dynamics`` protocol, its two adapters, and the planning cost.

A planner sees only ``encode``, ``rollout`` and ``cost``, batched over B candidate action sequences of H
model steps; one model step is ``frameskip`` env actions concatenated (``action_dim = env_action_dim x
frameskip``), in env units ([-1, 1]). Observations and goals are the env's ``pixels_state`` dicts
(``{"pixels": HxWx3 uint8, "state": S}``), so the learned model and the true simulator take the same input.

- ``LearnedDynamics``: the ``vjepa-ac`` world model; rollouts are one predictor call per step over all
  candidates, differentiable in the actions; cost = L1 (or L2) between the predicted final features and
  the goal image's features.
- ``SimulatorDynamics``: the true env through ``get_state`` / ``set_state`` (the oracle baseline); a
  simulator without a batched ``step_states`` steps one candidate at a time; cost = Euclidean distance of
  the reached env state to the goal state (the quantity success thresholds, rather than pixels).
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

import numpy as np
import torch


class Dynamics(Protocol):
    action_dim: int  # numbers per model step: env_action_dim x frameskip
    frameskip: int  # env steps per model step

    def encode(self, obs: dict) -> torch.Tensor:
        """The planning representation of one observation (or goal), with a leading batch axis of 1."""

    def rollout(self, z0: torch.Tensor, actions_BHA: torch.Tensor, state0: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Representations (B, H, ...) of the H steps after ``z0`` under each candidate, and their states."""

    def cost(self, z_BH: torch.Tensor, goal: torch.Tensor, actions_BHA: torch.Tensor) -> torch.Tensor:
        """(B,) cost of each candidate: its final step against the encoded goal; lower is better."""


def latent_cost(z_BHND: torch.Tensor, goal_1ND: torch.Tensor, actions_BHA: torch.Tensor,
                kind: Literal["l1", "l2"] = "l1", action_penalty: float = 0.0,
                steps: Literal["last", "all"] = "last") -> torch.Tensor:
    """Mean L1 (or mean squared) distance of the final predicted features to the goal's (``steps="all"``:
    averaged over every step of the horizon, which rewards arriving early), plus ``action_penalty`` x mean
    squared action (a preference for short moves among equally good plans)."""
    z_BKND = z_BHND[:, -1:] if steps == "last" else z_BHND
    diff_BKND = z_BKND - goal_1ND[:, None]
    dist_B = diff_BKND.abs().mean((1, 2, 3)) if kind == "l1" else diff_BKND.pow(2).mean((1, 2, 3))
    if action_penalty:
        dist_B = dist_B + action_penalty * actions_BHA.pow(2).mean((1, 2))
    return dist_B


class LearnedDynamics:
    """A ``vjepa-ac`` world model (``vwm.models.ac_world_model.ACWorldModel``) as planning dynamics."""

    def __init__(self, model, cost: Literal["l1", "l2"] = "l1", action_penalty: float = 0.0,
                 cost_steps: Literal["last", "all"] = "last"):
        if cost not in ("l1", "l2"):
            raise ValueError(f"cost={cost!r}; allowed: l1, l2")
        self.model, self.cost_kind, self.action_penalty = model, cost, float(action_penalty)
        self.cost_steps = cost_steps
        self.frameskip = int(model.manifest["frameskip"])
        self.action_dim = int(model.action_dim)
        # a rollout of H steps feeds H frames to the predictor, which was built for max_frames of them
        self.max_horizon = int(model.predictor.max_frames)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def encode(self, obs: dict) -> torch.Tensor:
        return self.model.encode(np.asarray(obs["pixels"]))  # (1, N, D)

    def rollout(self, z0_1ND: torch.Tensor, actions_BHA: torch.Tensor,
                state0_1S: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.rollout(z0_1ND, actions_BHA.to(self.device), state0_1S)

    def cost(self, z_BHND: torch.Tensor, goal_1ND: torch.Tensor, actions_BHA: torch.Tensor) -> torch.Tensor:
        return latent_cost(z_BHND, goal_1ND, actions_BHA.to(z_BHND.device), self.cost_kind, self.action_penalty,
                           self.cost_steps)


class SimulatorDynamics:
    """The true env as planning dynamics (oracle CEM). ``env`` is the adapter's own instance, never the one
    being acted in: rollouts move it freely. ``obs_type="state"`` spares rendering every imagined step."""

    def __init__(self, env, frameskip: int, action_penalty: float = 0.0, cost_steps: Literal["last", "all"] = "last"):
        self.env, self.frameskip, self.action_penalty = env, int(frameskip), float(action_penalty)
        self.cost_steps = cost_steps
        self.env_action_dim = int(env.action_space.shape[0])
        self.action_dim = self.env_action_dim * self.frameskip
        env.reset(seed=0)

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def encode(self, obs: dict) -> torch.Tensor:
        return torch.as_tensor(np.asarray(obs["state"], dtype=np.float64))[None]  # (1, S)

    def rollout(self, z0_1S: torch.Tensor, actions_BHA: torch.Tensor,
                state0_1S: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        B, H, _ = actions_BHA.shape
        start_S = z0_1S[0].numpy()
        actions_BHKa = actions_BHA.detach().cpu().double().numpy().reshape(B, H, self.frameskip, self.env_action_dim)
        states_BHS = np.empty((B, H, start_S.shape[0]))
        if hasattr(self.env, "step_states"):  # a simulator that steps many states at once (TwoRooms)
            s_BS = np.broadcast_to(start_S, (B, start_S.shape[0]))
            for h in range(H):
                for k in range(self.frameskip):
                    s_BS = self.env.step_states(s_BS, actions_BHKa[:, h, k])
                states_BHS[:, h] = s_BS
            z_BHS = torch.from_numpy(states_BHS)
            return z_BHS, z_BHS
        for b in range(B):  # otherwise one candidate at a time
            self.env.set_state(start_S)
            for h in range(H):
                for a in actions_BHKa[b, h]:
                    self.env.step(a)
                states_BHS[b, h] = self.env.get_state()
        z_BHS = torch.from_numpy(states_BHS)
        return z_BHS, z_BHS

    def cost(self, z_BHS: torch.Tensor, goal_1S: torch.Tensor, actions_BHA: torch.Tensor) -> torch.Tensor:
        z_BKS = z_BHS[:, -1:] if self.cost_steps == "last" else z_BHS
        dist_B = (z_BKS - goal_1S[:, None]).norm(dim=-1).mean(1)
        if self.action_penalty:
            dist_B = dist_B + self.action_penalty * actions_BHA.double().pow(2).mean((1, 2))
        return dist_B
