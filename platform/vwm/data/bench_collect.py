"""Collection benchmark: env steps/s of one process (policy + physics + rendering), the same loop in bare
parallel processes (the machine's ceiling), and ``run_collect`` through Ray at 1..N workers (adding H.264,
npz and tar writing), for each env."""

from __future__ import annotations

import multiprocessing
import os
import platform
import time
from datetime import date

import numpy as np

from vwm.benchreport import write_block
from vwm.config import BenchCollectConfig, CollectConfig, EnvConfig


def env_loop(name: str, image_size: int, steps: int, episode_steps: int) -> float:
    """Seconds for ``steps`` random-walk env steps with rendering, resetting every ``episode_steps``."""
    from vwm.envs import make_env
    from vwm.envs.policies import RandomWalk

    env = make_env(name, obs_type="pixels", image_size=image_size)
    policy, rng = RandomWalk(), np.random.default_rng(0)
    t0 = time.perf_counter()
    for t in range(steps):
        if t % episode_steps == 0:
            env.reset(seed=t)
            policy.reset(env, rng)
        env.step(policy.act(env, rng).astype(np.float32))
    return time.perf_counter() - t0


def run_bench_collect(cfg: BenchCollectConfig) -> list[dict]:
    from vwm.data.collect import run_collect
    from vwm.raycluster import connect

    load = os.getloadavg()[0]  # the VM is shared: other work running beside the benchmark shows here
    connect(num_cpus=max(cfg.workers))
    rows = []
    ctx = multiprocessing.get_context("spawn")
    for name in cfg.envs:
        seconds = env_loop(name, cfg.image_size, cfg.loop_steps, cfg.steps)
        rows.append({"env": name, "kind": "loop", "what": "one process: policy + env step + render", "cpus": 1,
                     "episodes": cfg.loop_steps // cfg.steps, "steps": cfg.loop_steps, "s": seconds})
        for n in (w for w in cfg.workers if w > 1):
            with ctx.Pool(n) as pool:
                pool.starmap(env_loop, [(name, cfg.image_size, 10, cfg.steps)] * n)  # warm-up: imports
                t0 = time.perf_counter()
                pool.starmap(env_loop, [(name, cfg.image_size, cfg.loop_steps, cfg.steps)] * n)
                rows.append({"env": name, "kind": "loop", "what": "bare processes, same loop, no Ray (ceiling)",
                             "cpus": n,
                             "episodes": n * cfg.loop_steps // cfg.steps, "steps": n * cfg.loop_steps,
                             "s": time.perf_counter() - t0})
        episodes = cfg.episodes.get(name, 24)
        collect = CollectConfig(out=f"{cfg.out}/{name}", env=EnvConfig(name=name, image_size=cfg.image_size),
                                episodes=episodes, steps=cfg.steps, held_out_fraction=0.0,
                                episodes_per_shard=max(1, episodes // (4 * max(cfg.workers))))
        run_collect(collect.model_copy(update={"episodes": max(cfg.workers), "episodes_per_shard": 1}),
                    progress=False)  # warm-up: worker processes and imports
        for n in cfg.workers:
            result = run_collect(collect.model_copy(update={"workers": n}), progress=False)
            rows.append({"env": name, "kind": "collect", "what": "vwm data collect: Ray tasks, + H.264, npz, tar",
                         "cpus": n,
                         "episodes": episodes, "steps": episodes * cfg.steps, "s": result.seconds})
    for r in rows:
        r["steps_per_s"] = r["steps"] / r["s"]
        r["per_cpu"] = r["steps_per_s"] / r["cpus"]
        one = next(x for x in rows if (x["env"], x["kind"], x["cpus"]) == (r["env"], r["kind"], 1))
        r["speedup"] = r["steps_per_s"] / (one["steps"] / one["s"])
    table = format_table(cfg, rows, load)
    print(table)
    if cfg.report:
        write_block(cfg.report, "bench_collect", table)
    return rows


def format_table(cfg: BenchCollectConfig, rows: list[dict], load: float) -> str:
    head = (f"{date.today().isoformat()}, {platform.node() or 'this machine'} ({platform.machine()}, "
            f"{os.cpu_count()} CPUs, 1-min load average {load:.1f} at the start): episodes of {cfg.steps} steps at "
            f"{cfg.image_size}x{cfg.image_size}; loop rows run the random walk, collect rows the configured mix. "
            "Speed-up: against the same kind of row at 1 CPU.\n\n")
    lines = ["| env | what | CPUs | episodes | env steps | seconds | env steps/s | per CPU | speed-up |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['env']} | {r['what']} | {r['cpus']} | {r['episodes']} | {r['steps']} | {r['s']:.2f} | "
              f"{r['steps_per_s']:.0f} | {r['per_cpu']:.0f} | {r['speedup']:.2f}x |" for r in rows]
    return head + "\n".join(lines)
