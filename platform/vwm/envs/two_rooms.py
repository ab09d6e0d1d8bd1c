"""TwoRooms: a point agent in a square arena split by a wall with one door (DINO-WM's "Wall", PLDM's
"Two-Rooms"), in numpy only.

World coordinates run over ``[0, arena]`` on both axes with ``y`` pointing down, as image rows do, so a
state maps onto pixels by one scale factor. The agent moves by ``action * action_scale`` per step (each axis
in ``[-1, 1]``); a move that would enter a wall or leave the arena stops at the contact point (no sliding).
For collisions the agent is its bounding square of half-side ``agent_radius``; it is drawn as an
anti-aliased disc of that radius, so sub-pixel positions stay visible at 64x64.

The state is the agent position ``(x, y)``; ``terminated`` stays False because the planning protocol scores
success at any step and at the last (``info["is_success"]``); episodes end by the registered time limit.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
from gymnasium import spaces

FLOOR = np.array([235, 235, 228], dtype=np.float32)
WALL = np.array([40, 44, 52], dtype=np.float32)
AGENT = np.array([220, 40, 40], dtype=np.float32)
OBS_TYPES = ("pixels_state", "pixels", "state")


class TwoRoomsEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}
    action_names = ("dx", "dy")
    state_names = ("x", "y")

    def __init__(self, image_size: int = 64, obs_type: str = "pixels_state", render_mode: str | None = "rgb_array",
                 arena: float = 64.0, wall_x: float = 32.0, wall_width: float = 4.0, door_y: float = 40.0,
                 door_width: float = 12.0, agent_radius: float = 2.0, action_scale: float = 2.5,
                 success_radius: float = 4.0):
        if obs_type not in OBS_TYPES:
            raise ValueError(f"TwoRooms obs_type={obs_type!r}; allowed: {', '.join(OBS_TYPES)}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"TwoRooms render_mode={render_mode!r}; only 'rgb_array' (or None) renders")
        if door_width <= 2 * agent_radius:
            raise ValueError(f"TwoRooms door_width={door_width} must exceed 2 x agent_radius={agent_radius}, "
                             "or the agent cannot pass")
        half = wall_width / 2
        if not (agent_radius < wall_x - half and wall_x + half < arena - agent_radius):
            raise ValueError(f"TwoRooms wall_x={wall_x} +- {half} leaves no room on one side of the arena {arena}")
        if not (door_width / 2 <= door_y <= arena - door_width / 2):
            raise ValueError(f"TwoRooms door_y={door_y} puts the door (width {door_width}) outside the arena")
        self.image_size, self.obs_type, self.render_mode = int(image_size), obs_type, render_mode
        self.arena, self.wall_x, self.wall_width = float(arena), float(wall_x), float(wall_width)
        self.door_y, self.door_width = float(door_y), float(door_width)
        self.agent_radius, self.action_scale = float(agent_radius), float(action_scale)
        self.success_radius = float(success_radius)
        # wall pieces as (x0, y0, x1, y1); the agent collides with them grown by its radius
        self.walls = ((wall_x - half, 0.0, wall_x + half, door_y - door_width / 2),
                      (wall_x - half, door_y + door_width / 2, wall_x + half, arena))
        r = self.agent_radius
        self._blocked = tuple((x0 - r, y0 - r, x1 + r, y1 + r) for x0, y0, x1, y1 in self.walls)
        self._scale = self.image_size / self.arena
        self._background_HWC = self._draw_background()

        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        state_space = spaces.Box(0.0, self.arena, shape=(2,), dtype=np.float32)
        pixel_space = spaces.Box(0, 255, shape=(self.image_size, self.image_size, 3), dtype=np.uint8)
        self.observation_space = {
            "pixels_state": spaces.Dict({"pixels": pixel_space, "state": state_space}),
            "pixels": pixel_space, "state": state_space}[obs_type]
        self._pos = np.array([wall_x / 2, arena / 2])
        self._goal = np.array([(wall_x + arena) / 2, arena / 2])

    # ------------------------------------------------------------------------------------- gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """``options``: ``state`` (agent x, y) and/or ``goal`` (a state); unset ones are drawn from the
        seeded generator: the start anywhere free, the goal in the other room."""
        super().reset(seed=seed)
        options = options or {}
        start = self.sample_free(self.np_random)
        goal = self.sample_free(self.np_random, room=1 - self.room(start))
        if options.get("state") is not None:
            start = self._checked(options["state"], "options['state']")
        if options.get("goal") is not None:
            goal = self._checked(options["goal"], "options['goal']")
        self._pos, self._goal = start, goal
        return self._obs(), self._info()

    def step(self, action):
        action = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        self._pos = self.move(self._pos, action * self.action_scale)
        dist = float(np.linalg.norm(self._pos - self._goal))
        return self._obs(), -dist, False, False, self._info()

    def render(self):
        return self.draw(self._pos)

    # ------------------------------------------------------------------------ state, goals, success
    def get_state(self) -> np.ndarray:
        return self._pos.copy()

    def set_state(self, state) -> None:
        self._pos = self._checked(state, "state")

    @property
    def goal(self) -> np.ndarray:
        return self._goal.copy()

    def success(self, state, goal) -> np.ndarray | bool:
        """Agent within ``success_radius`` of the goal position; broadcasts over leading axes."""
        d = np.linalg.norm(np.asarray(state, dtype=np.float64)[..., :2] - np.asarray(goal, dtype=np.float64)[..., :2],
                           axis=-1)
        out = d < self.success_radius
        return bool(out) if out.ndim == 0 else out

    def goal_image(self, goal) -> np.ndarray:
        """What the camera sees with the agent at ``goal``: the image a planner compares against."""
        return self.draw(self._checked(goal, "goal"))

    def room(self, state) -> int:
        """0 left of the wall, 1 right of it."""
        return int(np.asarray(state)[0] > self.wall_x)

    def free(self, state) -> bool:
        x, y = (float(v) for v in np.asarray(state, dtype=np.float64)[:2])
        r = self.agent_radius
        if not (r <= x <= self.arena - r and r <= y <= self.arena - r):
            return False
        return not any(x0 < x < x1 and y0 < y < y1 for x0, y0, x1, y1 in self._blocked)

    def sample_free(self, rng: np.random.Generator, room: int | None = None) -> np.ndarray:
        """A uniformly drawn free position, in one room if given."""
        r, half = self.agent_radius, self.wall_width / 2
        lo_x, hi_x = r, self.arena - r
        if room == 0:
            hi_x = self.wall_x - half - r
        elif room == 1:
            lo_x = self.wall_x + half + r
        while True:
            p = np.array([rng.uniform(lo_x, hi_x), rng.uniform(r, self.arena - r)])
            if self.free(p):
                return p

    def _checked(self, state, what: str) -> np.ndarray:
        p = np.asarray(state, dtype=np.float64).reshape(-1)
        if p.shape != (2,) or not np.all(np.isfinite(p)):
            raise ValueError(f"TwoRooms {what} must be 2 finite numbers (x, y); got {np.asarray(state).tolist()}")
        if not self.free(p):
            raise ValueError(f"TwoRooms {what}={p.tolist()} is inside a wall or outside the arena "
                             f"[{self.agent_radius}, {self.arena - self.agent_radius}]^2")
        return p

    # ----------------------------------------------------------------------------------- dynamics
    def move(self, pos: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """``pos + delta``, stopped at the first wall or arena edge on the way. The coordinate that made
        contact is set to the face exactly, so the agent never ends up inside a wall through rounding."""
        px, py = float(pos[0]), float(pos[1])
        dx, dy = float(delta[0]), float(delta[1])
        r, a = self.agent_radius, self.arena
        t_stop, face = 1.0, None
        for d, p, axis in ((dx, px, 0), (dy, py, 1)):  # leaving the arena
            if d > 0 and p + d > a - r:
                t, value = (a - r - p) / d, a - r
            elif d < 0 and p + d < r:
                t, value = (r - p) / d, r
            else:
                continue
            if t < t_stop:
                t_stop, face = t, (axis, value)
        for x0, y0, x1, y1 in self._blocked:  # entering a wall (open boxes: touching a face is allowed)
            hit = _entry(px, py, dx, dy, x0, y0, x1, y1)
            if hit is not None and hit[0] <= t_stop:  # <=: a move ending on a face snaps to it
                t_stop, face = hit
        new = np.array([px + dx * t_stop, py + dy * t_stop])
        if face is not None:
            new[face[0]] = face[1]
        return new

    def step_states(self, states_BS: np.ndarray, actions_BA: np.ndarray) -> np.ndarray:
        """``step`` of B agents at once, from states to states (no rendering): what a planner on the true
        simulator rolls its candidates through. Same arithmetic as ``move``, so the same result."""
        p_B2 = np.asarray(states_BS, dtype=np.float64)
        d_B2 = np.clip(np.asarray(actions_BA, dtype=np.float64), -1.0, 1.0) * self.action_scale
        r, a = self.agent_radius, self.arena
        B = len(p_B2)
        t_stop = np.ones(B)
        face_axis, face_value = np.full(B, -1), np.zeros(B)
        with np.errstate(divide="ignore", invalid="ignore"):
            for axis in (0, 1):  # leaving the arena
                p, d = p_B2[:, axis], d_B2[:, axis]
                hi, lo = (d > 0) & (p + d > a - r), (d < 0) & (p + d < r)
                t = np.where(hi, (a - r - p) / d, np.where(lo, (r - p) / d, np.inf))
                take = (hi | lo) & (t < t_stop)
                t_stop = np.where(take, t, t_stop)
                face_axis = np.where(take, axis, face_axis)
                face_value = np.where(take, np.where(hi, a - r, r), face_value)
            for box in self._blocked:  # entering a wall
                t_in, axis, value, hit = _entry_batch(p_B2, d_B2, box)
                take = hit & (t_in <= t_stop)
                t_stop = np.where(take, t_in, t_stop)
                face_axis = np.where(take, axis, face_axis)
                face_value = np.where(take, value, face_value)
        new_B2 = p_B2 + d_B2 * t_stop[:, None]
        for axis in (0, 1):
            new_B2[:, axis] = np.where(face_axis == axis, face_value, new_B2[:, axis])
        return new_B2

    # ---------------------------------------------------------------------------------- rendering
    def _draw_background(self) -> np.ndarray:
        n, s = self.image_size, self._scale
        centres = (np.arange(n) + 0.5) / s  # pixel centres in world units
        img = np.broadcast_to(FLOOR, (n, n, 3)).copy()
        for x0, y0, x1, y1 in self.walls:
            rows = (centres >= y0) & (centres < y1)
            cols = (centres >= x0) & (centres < x1)
            img[np.ix_(rows, cols)] = WALL
        return img

    def draw(self, pos: np.ndarray) -> np.ndarray:
        """The frame with the agent at ``pos``: the precomputed background plus one anti-aliased disc
        drawn on a small patch (tens of microseconds at 64x64)."""
        n, s = self.image_size, self._scale
        cx, cy, rad = float(pos[0]) * s, float(pos[1]) * s, max(self.agent_radius * s, 1.0)
        img = self._background_HWC.copy()
        x0, x1 = max(int(cx - rad - 1), 0), min(int(math.ceil(cx + rad + 1)), n)
        y0, y1 = max(int(cy - rad - 1), 0), min(int(math.ceil(cy + rad + 1)), n)
        xs = np.arange(x0, x1) + 0.5 - cx
        ys = np.arange(y0, y1) + 0.5 - cy
        alpha = np.clip(rad + 0.5 - np.sqrt(ys[:, None] ** 2 + xs[None, :] ** 2), 0.0, 1.0)[..., None]
        img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1.0 - alpha) + AGENT * alpha
        return (img + 0.5).astype(np.uint8)

    def _obs(self):
        state = self._pos.astype(np.float32)
        if self.obs_type == "state":
            return state
        pixels = self.draw(self._pos)
        return pixels if self.obs_type == "pixels" else {"pixels": pixels, "state": state}

    def _info(self) -> dict:
        return {"goal": self._goal.copy(), "is_success": bool(self.success(self._pos, self._goal))}


def _entry(px, py, dx, dy, x0, y0, x1, y1):
    """(t, (axis, face value)) where the segment ``p + t d``, t in [0, 1], enters the open box; None if not."""
    t_in, t_out, face = 0.0, 1.0, None
    for p, d, lo, hi, axis in ((px, dx, x0, x1, 0), (py, dy, y0, y1, 1)):
        if d == 0.0:
            if not lo < p < hi:
                return None
            continue
        ta, tb = (lo - p) / d, (hi - p) / d
        near, far, near_face = (ta, tb, lo) if d > 0 else (tb, ta, hi)
        if near > t_in:
            t_in, face = near, (axis, near_face)
        t_out = min(t_out, far)
        if t_in >= t_out:
            return None
    if face is None:  # starts inside: cannot happen from a free state; stay put
        return 0.0, (0, px)
    return t_in, face


def _entry_batch(p_B2: np.ndarray, d_B2: np.ndarray, box) -> tuple[np.ndarray, ...]:
    """``_entry`` for B segments at once: (t_in, face axis, face value, entered)."""
    B = len(p_B2)
    t_in, t_out = np.zeros(B), np.ones(B)
    axis_out, value_out = np.full(B, -1), np.zeros(B)
    missed = np.zeros(B, dtype=bool)
    for axis, (lo, hi) in enumerate(((box[0], box[2]), (box[1], box[3]))):
        p, d = p_B2[:, axis], d_B2[:, axis]
        still = d == 0.0
        missed |= still & ~((lo < p) & (p < hi))
        ta, tb = (lo - p) / d, (hi - p) / d
        near, far = np.where(d > 0, ta, tb), np.where(d > 0, tb, ta)
        better = ~still & (near > t_in)
        t_in = np.where(better, near, t_in)
        axis_out = np.where(better, axis, axis_out)
        value_out = np.where(better, np.where(d > 0, lo, hi), value_out)
        t_out = np.where(still, t_out, np.minimum(t_out, far))
    # no face: starts inside (impossible from a free state); the scalar version stays put on x
    value_out = np.where(axis_out < 0, p_B2[:, 0], value_out)
    axis_out = np.where(axis_out < 0, 0, axis_out)
    return t_in, axis_out, value_out, ~missed & (t_in < t_out)

