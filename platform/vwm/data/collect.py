"""``vwm data collect``: scripted policies roll out episodes in Ray tasks (one per shard) and write trajectory
shards, train and held-out, local or ``s3://`` (schema: ``vwm.data.trajectories``).

Every random stream is keyed by (seed, episode index, purpose): the env's reset, the policy's choice and its
actions, and the split (a permutation keyed by seed). An episode is therefore the same whichever task or
machine rolls it out, and the same config writes byte-identical shards.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
import ray
from tqdm import tqdm

from vwm.config import CollectConfig
from vwm.data.shards import DataSourceError, filesystem, write_shard
from vwm.data.trajectories import FORMAT, episode_sample, merge_stats
from vwm.envs import make_env
from vwm.envs.policies import choose_kind, make_policy

_RESET, _CHOICE, _POLICY, _SPLIT = 0x5E7, 0xC401, 0xAC7, 0x5917
SPLITS = ("train", "held_out")


def split_episodes(cfg: CollectConfig) -> dict[str, list[int]]:
    """Episode indices per split: ``held_out_fraction`` of them, drawn by a permutation keyed by the seed."""
    n_held = int(round(cfg.episodes * cfg.held_out_fraction))
    perm = np.random.default_rng([cfg.seed, _SPLIT]).permutation(cfg.episodes)
    return {"train": sorted(perm[n_held:].tolist()), "held_out": sorted(perm[:n_held].tolist())}


def _mirror(cfg: CollectConfig) -> dict | None:
    """TwoRooms with a centred wall is its own mirror image; Push-T's goal zone and T are not."""
    t = cfg.env.two_rooms
    if cfg.env.name == "two_rooms" and t.wall_x * 2 == t.arena:
        return {"action_negate": [0], "state_reflect": [[0, t.arena]]}
    return None


def rollout(env, cfg: CollectConfig, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """One episode: (frames_NHWC uint8, actions_NA float32 with a NaN last row, states_NS, policy kind)."""
    kind = choose_kind(cfg.policy.expert_fraction, np.random.default_rng([cfg.seed, index, _CHOICE]))
    p = cfg.policy
    policy = make_policy(cfg.env.name, kind, persistence=p.random_walk.persistence,
                         walk_noise_std=p.random_walk.noise_std, expert_noise_std=p.expert.noise_std)
    rng = np.random.default_rng([cfg.seed, index, _POLICY])
    reset_seed = int(np.random.SeedSequence([cfg.seed, index, _RESET]).generate_state(1)[0])
    frame, _ = env.reset(seed=reset_seed)
    policy.reset(env, rng)
    n = cfg.steps + 1
    frames = np.empty((n, *frame.shape), dtype=np.uint8)
    actions = np.full((n, env.action_space.shape[0]), np.nan, dtype=np.float32)
    states = np.empty((n, env.get_state().shape[0]), dtype=np.float32)
    frames[0], states[0] = frame, env.get_state()
    for t in range(cfg.steps):
        # what is recorded is exactly what the env applied: float32, inside the action bounds
        actions[t] = np.clip(policy.act(env, rng), -1.0, 1.0)
        frame, *_ = env.step(actions[t])
        frames[t + 1], states[t + 1] = frame, env.get_state()
    return frames, actions, states, kind


def episode_meta(cfg: CollectConfig, env, index: int, split: str, kind: str) -> dict:
    return {"env": cfg.env.name, "env_kwargs": cfg.env.kwargs(), "image_size": cfg.env.image_size, "seed": cfg.seed,
            "episode": index, "split": split, "policy": kind,
            "policy_config": getattr(cfg.policy, kind).model_dump(), "action_names": list(env.action_names),
            "state_names": list(env.state_names), "mirror": _mirror(cfg)}


@ray.remote(num_cpus=1)
def _collect_shard(cfg: CollectConfig, uri: str, split: str, indices: list[int]) -> dict:
    env = make_env(cfg.env.name, obs_type="pixels", **cfg.env.kwargs())
    samples = []
    for index in indices:
        frames, actions, states, kind = rollout(env, cfg, index)
        samples.append(episode_sample(f"ep-{index:07d}", frames, actions, states,
                                      episode_meta(cfg, env, index, split, kind), fps=cfg.fps, crf=cfg.crf))
    size = write_shard(uri, samples, cfg.endpoint_url)
    stats = [s.meta["stats"] for s in samples]
    return {"uri": uri, "split": split, "episodes": len(indices), "bytes": size,
            "stats": {k: merge_stats([s[k] for s in stats]) for k in ("actions", "states")}}


@dataclass
class CollectResult:
    out: str
    episodes: dict[str, int]
    shards: dict[str, list[str]]
    seconds: float
    bytes: int
    stats: dict


def check_output(cfg: CollectConfig) -> None:
    """Fail before any work: a missing bucket, or an env whose package is not installed."""
    if cfg.out.startswith("s3://"):
        fs, path = filesystem(cfg.out, cfg.endpoint_url)
        bucket = path.split("/", 1)[0]
        if not fs.exists(bucket):
            raise DataSourceError(f"bucket {bucket!r} of out={cfg.out} does not exist; create it first")
    if cfg.env.name == "push_t":
        from vwm.envs.push_t import INSTALL_HINT, available

        if not available():
            raise DataSourceError(f"env.name=push_t: {INSTALL_HINT}")


def run_collect(cfg: CollectConfig, *, progress: bool = True) -> CollectResult:
    """Roll out ``cfg.episodes`` episodes as Ray tasks (``cfg.workers`` in flight) and write the shards and
    ``dataset.json``; the caller has connected to Ray."""
    check_output(cfg)
    out = cfg.out.rstrip("/")
    jobs = []
    for split, indices in split_episodes(cfg).items():
        for k, start in enumerate(range(0, len(indices), cfg.episodes_per_shard)):
            jobs.append((f"{out}/{split}/shard-{k:05d}.tar", split, indices[start:start + cfg.episodes_per_shard]))
    workers = cfg.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    t0 = time.perf_counter()
    results, pending, queue = [], {}, list(jobs)
    with tqdm(total=cfg.episodes, desc=f"collect {cfg.env.name}", unit="episode", disable=not progress) as bar:
        while queue or pending:
            while queue and len(pending) < workers:
                uri, split, indices = queue.pop(0)
                pending[_collect_shard.remote(cfg, uri, split, indices)] = uri
            [done], _ = ray.wait(list(pending), num_returns=1)
            pending.pop(done)
            results.append(ray.get(done))
            bar.update(results[-1]["episodes"])
    seconds = time.perf_counter() - t0
    results.sort(key=lambda r: r["uri"])
    shards = {s: [r["uri"] for r in results if r["split"] == s] for s in SPLITS}
    counts = {s: sum(r["episodes"] for r in results if r["split"] == s) for s in SPLITS}
    train = [r["stats"] for r in results if r["split"] == "train"] or [r["stats"] for r in results]
    stats = {k: merge_stats([s[k] for s in train]) for k in ("actions", "states")}
    summary = {"format": FORMAT, "env": cfg.env.name, "episodes": counts, "steps": cfg.steps, "shards": shards,
               "stats": stats, "stats_split": "train" if counts["train"] else "held_out",
               "config": cfg.model_dump(mode="json")}
    fs, path = filesystem(f"{out}/dataset.json", cfg.endpoint_url)
    with fs.open(path, "w") as f:
        json.dump(summary, f, indent=1, sort_keys=True)
    size = sum(r["bytes"] for r in results)
    return CollectResult(out=out, episodes=counts, shards=shards, seconds=seconds, bytes=size, stats=stats)
