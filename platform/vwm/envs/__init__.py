"""Environments for trajectory data and planning: TwoRooms (ours, numpy) and Push-T (over ``gym-pusht``).

Both share one interface beyond gymnasium's: ``get_state`` / ``set_state``, ``success(state, goal)``,
``goal_image(goal)``, ``reset(options={"state": ..., "goal": ...})``, actions in [-1, 1]. Importing this
package registers nothing; ``register_envs()`` adds ``vwm/TwoRooms-v0`` and ``vwm/PushT-v0`` to gymnasium.
"""

from __future__ import annotations

ENV_IDS = {"two_rooms": "vwm/TwoRooms-v0", "push_t": "vwm/PushT-v0"}
_ENTRY_POINTS = {"two_rooms": "vwm.envs.two_rooms:TwoRoomsEnv", "push_t": "vwm.envs.push_t:PushTEnv"}


def register_envs(max_episode_steps: int = 100) -> None:
    """Make ``gymnasium.make("vwm/TwoRooms-v0")`` and ``"vwm/PushT-v0"`` work; safe to call again."""
    import gymnasium as gym

    for name, env_id in ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=_ENTRY_POINTS[name], max_episode_steps=max_episode_steps)


def make_env(name: str, **kwargs):
    """The bare env (no gymnasium wrappers) by config name: ``two_rooms`` or ``push_t``."""
    if name == "two_rooms":
        from vwm.envs.two_rooms import TwoRoomsEnv

        return TwoRoomsEnv(**kwargs)
    if name == "push_t":
        from vwm.envs.push_t import PushTEnv

        return PushTEnv(**kwargs)
    raise ValueError(f"unknown env {name!r}; allowed: {', '.join(ENV_IDS)}")
