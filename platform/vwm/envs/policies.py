"""Scripted data policies: random walks (DINO-WM's data) and noisy experts that make the transitions a
planner needs (crossing the door, pushing the block). All randomness comes from the generator passed in,
so an episode is a pure function of (seed, episode index).

A policy sees the bare env (its geometry and state), never pixels: ``reset(env, rng)`` once per episode,
then ``act(env, rng)`` per step, returning an action in [-1, 1]^2.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

POLICY_KINDS = ("random_walk", "expert")


class Policy(Protocol):
    name: str

    def reset(self, env, rng: np.random.Generator) -> None: ...

    def act(self, env, rng: np.random.Generator) -> np.ndarray: ...


class RandomWalk:
    """A heading that persists (kept with probability ``persistence`` each step, else redrawn uniformly in
    [-1, 1]^2) plus Gaussian jitter: it wanders across a room where i.i.d. actions would jiggle in place.
    A heading that left the agent (nearly) still, against a wall or the arena's edge, is reversed, so
    episodes do not spend tens of frames pressed into a wall."""

    name = "random_walk"

    def __init__(self, persistence: float = 0.9, noise_std: float = 0.2):
        self.persistence, self.noise_std = persistence, noise_std
        self._heading, self._last = np.zeros(2), None

    def reset(self, env, rng: np.random.Generator) -> None:
        self._heading, self._last = rng.uniform(-1.0, 1.0, size=2), None

    def act(self, env, rng: np.random.Generator) -> np.ndarray:
        pos = env.get_state()[:2]
        stuck = self._last is not None and np.linalg.norm(pos - self._last) < 0.01 * env.action_scale
        self._last = pos
        if stuck:  # bounce back
            self._heading = -self._heading
        elif rng.random() >= self.persistence:
            self._heading = rng.uniform(-1.0, 1.0, size=2)
        return np.clip(self._heading + self.noise_std * rng.normal(size=2), -1.0, 1.0)


def _toward(env, point: np.ndarray, origin: np.ndarray) -> np.ndarray:
    return np.clip((point - origin) / env.action_scale, -1.0, 1.0)


class TwoRoomsExpert:
    """Heads for a target in the other room through the door: to an approach point level with the door,
    through it once the agent is inside the door's band, then to the target; a new target in the other
    room once reached. Gaussian noise on every action (``noise_std``)."""

    name = "expert"

    def __init__(self, noise_std: float = 0.3):
        self.noise_std = noise_std
        self._target = np.zeros(2)

    def reset(self, env, rng: np.random.Generator) -> None:
        self._target = env.sample_free(rng, room=1 - env.room(env.get_state()))

    def waypoint(self, env, pos: np.ndarray) -> np.ndarray:
        clearance = env.wall_width / 2 + env.agent_radius
        # inside the doorway the agent must leave it straight: a diagonal move would hit the door frame,
        # and collisions do not slide
        in_doorway = abs(pos[0] - env.wall_x) < clearance
        target_room = env.room(self._target)
        if not in_doorway and env.room(pos) == target_room:
            return self._target
        toward = 1.0 if target_room == 1 else -1.0
        band = env.door_width / 2 - env.agent_radius - 0.5
        if in_doorway or abs(pos[1] - env.door_y) <= band:  # lined up with the door: straight through
            return np.array([env.wall_x + toward * (clearance + env.action_scale), env.door_y])
        return np.array([env.wall_x - toward * (clearance + 1.5 * env.action_scale), env.door_y])

    def act(self, env, rng: np.random.Generator) -> np.ndarray:
        pos = env.get_state()
        if env.success(pos, self._target):
            self._target = env.sample_free(rng, room=1 - env.room(pos))
        action = _toward(env, self.waypoint(env, pos), pos)
        return np.clip(action + self.noise_std * rng.normal(size=2), -1.0, 1.0)


class PushTExpert:
    """Pushes the block: picks a side (a random direction around the block), moves the agent to a point
    ``standoff`` pixels out on that side, then drives through the block's centre for a random number of
    steps; repeats. Gaussian noise on every action (``noise_std``)."""

    name = "expert"

    def __init__(self, noise_std: float = 0.3, standoff: float = 120.0, push_steps: tuple[int, int] = (6, 16)):
        self.noise_std, self.standoff, self.push_steps = noise_std, standoff, push_steps
        self._phase, self._point, self._left = "approach", np.zeros(2), 0

    def reset(self, env, rng: np.random.Generator) -> None:
        self._new_side(env, rng)

    def _new_side(self, env, rng: np.random.Generator) -> None:
        block = env.get_state()[2:4]
        angle = rng.uniform(0.0, 2 * np.pi)
        self._point = np.clip(block + self.standoff * np.array([np.cos(angle), np.sin(angle)]), 30.0, 482.0)
        self._phase = "approach"

    def act(self, env, rng: np.random.Generator) -> np.ndarray:
        state = env.get_state()
        agent, block = state[:2], state[2:4]
        if self._phase == "approach" and np.linalg.norm(agent - self._point) < 20.0:
            through = block - agent
            self._point = block + 60.0 * through / max(np.linalg.norm(through), 1e-6)
            self._phase, self._left = "push", int(rng.integers(*self.push_steps, endpoint=True))
        elif self._phase == "push":
            self._left -= 1
            if self._left <= 0:
                self._new_side(env, rng)
        action = _toward(env, self._point, agent)
        return np.clip(action + self.noise_std * rng.normal(size=2), -1.0, 1.0)


def make_policy(env_name: str, kind: str, *, persistence: float = 0.9, walk_noise_std: float = 0.2,
                expert_noise_std: float = 0.3) -> Policy:
    if kind == "random_walk":
        return RandomWalk(persistence, walk_noise_std)
    if kind != "expert":
        raise ValueError(f"unknown policy {kind!r}; allowed: {', '.join(POLICY_KINDS)}")
    if env_name == "two_rooms":
        return TwoRoomsExpert(expert_noise_std)
    if env_name == "push_t":
        return PushTExpert(expert_noise_std)
    raise ValueError(f"no expert policy for env {env_name!r}")


def choose_kind(expert_fraction: float, rng: np.random.Generator) -> str:
    """The mixing ratio, applied per episode."""
    return "expert" if rng.random() < expert_fraction else "random_walk"
