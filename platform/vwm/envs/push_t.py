"""Push-T through the ``gym-pusht`` package (the Push-T of Diffusion Policy and LeRobot, pymunk physics),
behind the interface TwoRooms has: pixels at a configurable size, ``get_state`` / ``set_state``, a goal
image from any state, and DINO-WM's success test.

This is an adapter, not a rewrite: physics, initial-state sampling and drawing are the package's. It uses
three private members of ``gym_pusht.envs.PushTEnv`` (``_setup``, ``_set_state``, ``_render``), which is why
the ``pusht`` extra pins the package exactly.

State (7 numbers, as DINO-WM's): agent x, y, block x, y, block angle (radians, in [0, 2 pi)), agent vx, vy,
in the package's 512 x 512 pixel frame (y down). The package's block is quasi-static (space damping 0), so
the agent's velocity is the only hidden dynamic quantity worth carrying.

Actions are relative, as in DINO-WM: each axis in [-1, 1] moves the PD controller's target to
``agent position + action * action_scale`` (clipped to the walls' inside, so the kinematic agent, which
the package lets pass through walls, stays in view); the package then runs 10 physics
substeps of 10 ms. ``terminated`` stays False (success is scored at every step by the planner).
"""

from __future__ import annotations

import os

import gymnasium as gym
import numpy as np
from gymnasium import spaces

ARENA = 512.0
# the package's agent is kinematic and passes through the arena walls (segments at 5 and 506, radius 2);
# keeping its PD target this far inside keeps the whole disc (radius 15) in view
TARGET_MARGIN = 22.0
OBS_TYPES = ("pixels_state", "pixels", "state")
INSTALL_HINT = "Push-T needs the gym-pusht package: pip install -e '.[pusht]'"


def _package():
    # pygame prints a banner on import unless told not to; only ever set when Push-T is used
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    try:
        from gym_pusht.envs.pusht import PushTEnv as _PushT
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} ({e})") from None
    return _PushT


def available() -> bool:
    try:
        _package()
    except ImportError:
        return False
    return True


class PushTEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    action_names = ("target_dx", "target_dy")
    state_names = ("agent_x", "agent_y", "block_x", "block_y", "block_angle", "agent_vx", "agent_vy")

    def __init__(self, image_size: int = 64, obs_type: str = "pixels_state", render_mode: str | None = "rgb_array",
                 action_scale: float = 50.0, position_tolerance: float = 20.0,
                 angle_tolerance: float = float(np.pi / 9)):
        if obs_type not in OBS_TYPES:
            raise ValueError(f"PushT obs_type={obs_type!r}; allowed: {', '.join(OBS_TYPES)}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"PushT render_mode={render_mode!r}; only 'rgb_array' (or None) renders")
        package_env = _package()
        self.image_size, self.obs_type, self.render_mode = int(image_size), obs_type, render_mode
        self.action_scale = float(action_scale)
        self.position_tolerance, self.angle_tolerance = float(position_tolerance), float(angle_tolerance)
        kw = dict(obs_type="state", render_mode="rgb_array", observation_width=self.image_size,
                  observation_height=self.image_size)
        self.sim = package_env(**kw)
        # a second simulator draws goal images, so rendering a goal never disturbs the running episode
        self._goal_sim = package_env(**kw)
        self._goal_sim.reset(seed=0)

        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        # finite bounds with room to spare: the kinematic agent can overshoot the arena edge a little, and
        # its PD speed stays below (k_p / k_v) x ARENA = 5 x ARENA per second
        lo = np.array([-ARENA] * 4 + [0.0] + [-10 * ARENA] * 2, dtype=np.float32)
        hi = np.array([2 * ARENA] * 4 + [2 * np.pi] + [10 * ARENA] * 2, dtype=np.float32)
        state_space = spaces.Box(lo, hi, dtype=np.float32)
        pixel_space = spaces.Box(0, 255, shape=(self.image_size, self.image_size, 3), dtype=np.uint8)
        self.observation_space = {
            "pixels_state": spaces.Dict({"pixels": pixel_space, "state": state_space}),
            "pixels": pixel_space, "state": state_space}[obs_type]
        self._goal = np.zeros(7)

    # ------------------------------------------------------------------------------------- gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """``options``: ``state`` (5 or 7 numbers) and/or ``goal`` (a state); unset ones come from the
        package's own initial-state sampler, seeded from this env's generator."""
        super().reset(seed=seed)
        options = options or {}
        self.sim.reset(seed=int(self.np_random.integers(2**31)))
        start = self.get_state()
        self._goal_sim.reset(seed=int(self.np_random.integers(2**31)))
        self._goal = _read_state(self._goal_sim)
        if options.get("goal") is not None:
            self._goal = self._checked(options["goal"], "options['goal']")
        self.set_state(start if options.get("state") is None else options["state"])
        return self._obs(), self._info()

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        target = np.clip(np.asarray(self.sim.agent.position) + action * self.action_scale, TARGET_MARGIN,
                         ARENA - TARGET_MARGIN)
        self.sim.step(target)
        state = self.get_state()
        reward = -float(np.linalg.norm(state[:4] - self._goal[:4]))
        return self._obs(state), reward, False, False, self._info(state)

    def render(self):
        return self.sim._render()

    # ------------------------------------------------------------------------ state, goals, success
    def get_state(self) -> np.ndarray:
        return _read_state(self.sim)

    def set_state(self, state) -> None:
        """Through the package's state setter, on a fresh pymunk space so no contact cache of the previous
        episode carries over; the setter runs one 10 ms physics step, as the package's reset does."""
        _write_state(self.sim, self._checked(state, "state"))

    @property
    def goal(self) -> np.ndarray:
        return self._goal.copy()

    def success(self, state, goal) -> np.ndarray | bool:
        """DINO-WM's test: agent+block position error (one norm over 4 numbers) < 20 and block angle
        error < pi/9; broadcasts over leading axes."""
        state, goal = np.asarray(state, dtype=np.float64), np.asarray(goal, dtype=np.float64)
        pos = np.linalg.norm(state[..., :4] - goal[..., :4], axis=-1)
        angle = np.abs(state[..., 4] - goal[..., 4]) % (2 * np.pi)
        angle = np.minimum(angle, 2 * np.pi - angle)
        out = (pos < self.position_tolerance) & (angle < self.angle_tolerance)
        return bool(out) if out.ndim == 0 else out

    def goal_image(self, goal) -> np.ndarray:
        _write_state(self._goal_sim, self._checked(goal, "goal"))
        return self._goal_sim._render()

    def _checked(self, state, what: str) -> np.ndarray:
        s = np.asarray(state, dtype=np.float64).reshape(-1)
        if s.shape not in ((5,), (7,)) or not np.all(np.isfinite(s)):
            raise ValueError(f"PushT {what} must be 5 or 7 finite numbers (agent x, y, block x, y, angle"
                             f"[, agent vx, vy]); got {np.asarray(state).tolist()}")
        if s.shape == (5,):
            s = np.concatenate([s, [0.0, 0.0]])
        s[4] %= 2 * np.pi
        return s

    def _obs(self, state: np.ndarray | None = None):
        state = (self.get_state() if state is None else state).astype(np.float32)
        if self.obs_type == "state":
            return state
        pixels = self.render()
        return pixels if self.obs_type == "pixels" else {"pixels": pixels, "state": state}

    def _info(self, state: np.ndarray | None = None) -> dict:
        state = self.get_state() if state is None else state
        return {"goal": self._goal.copy(), "is_success": bool(self.success(state, self._goal))}


def _read_state(sim) -> np.ndarray:
    a, b, v = sim.agent.position, sim.block.position, sim.agent.velocity
    return np.array([a[0], a[1], b[0], b[1], sim.block.angle % (2 * np.pi), v[0], v[1]], dtype=np.float64)


def _write_state(sim, state: np.ndarray) -> None:
    sim._setup()
    # The package's setter assigns the block's position before its angle, and pymunk turns a body about its
    # centre of gravity, so the position read back would be off by (I - R(angle)) cog. Handing the setter the
    # pre-image makes get_state() return what was set (exactly, unless the agent overlaps the block).
    cog, angle = np.asarray(sim.block.center_of_gravity), float(state[4])
    c, s = np.cos(angle), np.sin(angle)
    shift = cog - np.array([c * cog[0] - s * cog[1], s * cog[0] + c * cog[1]])
    sim._set_state(np.concatenate([state[:2], state[2:4] - shift, [angle]]))
    sim.agent.velocity = (float(state[5]), float(state[6]))
