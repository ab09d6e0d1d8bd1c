"""Planning episodes: a start state and the state ``goal_offset`` env steps later on a held-out trajectory.

Episode i is drawn from a generator keyed by (seed, i) over the same list of (trajectory, start) pairs, so
it does not depend on how many episodes are asked for or who asks: every planner, actor and re-run sees
the same episodes. Only the trajectories' npz arrays are read (no video decoding).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from vwm.config import EpisodesConfig
from vwm.data.shards import Skip, iter_samples, list_sources
from vwm.data.trajectories import is_trajectory, read_arrays

_EPISODE_STREAM = 0x45504953
_MAX_DRAWS = 100


class EpisodeError(ValueError):
    pass


@dataclass(frozen=True)
class Episode:
    index: int
    start_state: np.ndarray
    goal_state: np.ndarray
    source: str  # trajectory key
    start_step: int  # env step of the start along that trajectory


def _held_out(cfg: EpisodesConfig):
    """(key, states_NS, meta) of every trajectory under ``cfg.paths``, in listing order."""
    if not cfg.paths:
        raise EpisodeError("episodes.paths is empty: point it at held-out trajectory shards (vwm data collect's "
                           "held_out/)")
    for uri in list_sources(cfg.paths, cfg.endpoint_url):
        for sample in iter_samples(uri, cfg.endpoint_url):
            if isinstance(sample, Skip) or not is_trajectory(sample):
                continue
            _, states_NS, meta = read_arrays(sample)
            yield sample.key, states_NS.astype(np.float64), meta


def load_trajectory_states(cfg: EpisodesConfig) -> list[tuple[str, np.ndarray]]:
    """(key, states_NS) of every trajectory under ``cfg.paths``, in listing order."""
    return [(key, states) for key, states, _ in _held_out(cfg)]


def held_out_env(cfg: EpisodesConfig) -> tuple[str, dict]:
    """(env name, constructor kwargs) the held-out trajectories were collected in: the env to plan in."""
    envs = {(meta["env"], json.dumps(meta["env_kwargs"], sort_keys=True)) for _, _, meta in _held_out(cfg)}
    if not envs:
        raise EpisodeError(f"no trajectory episodes under episodes.paths={cfg.paths}; point it at held-out "
                           "trajectory shards (vwm data collect's held_out/)")
    if len(envs) > 1:
        raise EpisodeError(f"episodes.paths={cfg.paths} mixes trajectories of {len(envs)} env settings "
                           f"({', '.join(sorted(name for name, _ in envs))}); evaluate one env at a time")
    name, kwargs = envs.pop()
    return name, json.loads(kwargs)


def draw_episodes(cfg: EpisodesConfig, trajectories: list[tuple[str, np.ndarray]], env=None,
                  indices: range | list[int] | None = None) -> list[Episode]:
    """Episodes ``indices`` (default ``range(cfg.count)``). With ``env``, pairs whose start already
    succeeds are drawn again (a goal 25 steps ahead can coincide with the start when the agent waits)."""
    pairs = [(k, t) for k, (_, states) in enumerate(trajectories) for t in range(len(states) - cfg.goal_offset)]
    if not pairs:
        longest = max((len(s) for _, s in trajectories), default=0)
        raise EpisodeError(f"no held-out trajectory is longer than episodes.goal_offset={cfg.goal_offset} env "
                           f"steps ({len(trajectories)} trajectories, the longest has {longest} frames)")
    episodes = []
    for i in (range(cfg.count) if indices is None else indices):
        rng = np.random.default_rng([cfg.seed, i, _EPISODE_STREAM])
        for _ in range(_MAX_DRAWS):
            k, t = pairs[int(rng.integers(len(pairs)))]
            key, states = trajectories[k]
            start, goal = states[t], states[t + cfg.goal_offset]
            if env is None or not env.success(start, goal):
                break
        else:
            raise EpisodeError(f"episode {i}: {_MAX_DRAWS} draws all started at the goal; the held-out "
                               "trajectories barely move over episodes.goal_offset steps")
        episodes.append(Episode(i, start.copy(), goal.copy(), key, t))
    return episodes


def load_episodes(cfg: EpisodesConfig, env=None, indices: range | list[int] | None = None) -> list[Episode]:
    return draw_episodes(cfg, load_trajectory_states(cfg), env, indices)
