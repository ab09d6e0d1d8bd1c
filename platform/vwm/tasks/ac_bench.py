"""Post-training benchmark: what one planning rollout costs per pooling, and what the debug recipe reaches.

1. The planner's budget: one batched rollout of ``candidates`` action sequences over ``horizon`` model steps
   (one predictor call per step over every candidate), for each ``ac.pool``, with the debug recipe's
   encoder width and predictor; then whole CEM plans of ``candidates`` x ``cem_iterations`` through the
   planner's ``LearnedDynamics``; eager, compiled and compiled under bf16 autocast, interleaved over rounds.
2. Learning, end to end in this process: TwoRooms episodes collected, a debug encoder pretrained, then
   ``train_steps`` of post-training; it reports steps/s and the held-out rollout L1 against copying the
   last frame (``eval/rollout_vs_copy@k``: below 1 beats the copy).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch

from vwm.benchreport import ratio_over_rounds, round_order, write_block
from vwm.config import (BenchPosttrainConfig, CollectConfig, EnvConfig, ModelConfig, PosttrainConfig, PretrainConfig,
                        with_overrides)
from vwm.configfile import load_config
from vwm.models.ac_predictor import ACPredictor


ARMS = (("eager", False, None), ("compiled", True, None), ("compiled bf16", True, torch.bfloat16))


def rollout_cost(cfg: PosttrainConfig, bench: BenchPosttrainConfig, pool: int | None) -> list[dict]:
    """Per arm (eager, compiled, compiled under bf16 autocast), interleaved over ``rounds``: one rollout of
    ``candidates`` x ``horizon`` through the planner's ``ACWorldModel.rollout`` (median of ``repeats`` per
    round) and one whole CEM plan (encoding the observation and the goal included) through ``LearnedDynamics``,
    at the debug encoder's width; speed-ups over eager with bootstrap intervals over rounds."""
    from vwm.config import CEMConfig
    from vwm.models.ac_world_model import ACWorldModel, FrameEncoder
    from vwm.planning.cem import cem, keyed_generator
    from vwm.planning.dynamics import LearnedDynamics

    model = ModelConfig(preset="debug")
    grid = 64 // model.patch_size
    torch.manual_seed(0)
    predictor = ACPredictor(enc_dim=model.dim, dim=cfg.ac.predictor.dim, depth=cfg.ac.predictor.depth,
                            heads=cfg.ac.predictor.heads, mlp_ratio=cfg.ac.predictor.mlp_ratio,
                            grid_hw=(pool, pool) if pool else (grid, grid), max_frames=bench.horizon + 1,
                            action_dim=10, state_dim=2, residual=True).eval()
    encoder = FrameEncoder(model, 64, pool, [0.5] * 3, [0.25] * 3)
    manifest = {"kind": "vjepa-ac", "frameskip": 5, "action_dim": 10, "normalisation": {
        "action_mean": [0.0] * 10, "action_std": [1.0] * 10, "state_mean": [32.0] * 2, "state_std": [16.0] * 2}}
    tokens = (pool or grid) ** 2
    z0_1ND = torch.randn(1, tokens, model.dim)
    actions_BHA = torch.rand(bench.candidates, bench.horizon, 10) * 2 - 1
    frame = {"pixels": torch.randint(0, 256, (64, 64, 3), dtype=torch.uint8).numpy()}
    plan_cfg = CEMConfig(samples=bench.candidates, iterations=bench.cem_iterations, topk=min(30, bench.candidates))
    arms = {}
    for name, compiled, dtype in ARMS:
        wm = ACWorldModel(manifest, encoder, predictor).accelerate(compile=compiled, dtype=dtype)
        t0 = time.perf_counter()
        with torch.no_grad():
            wm.rollout(z0_1ND, actions_BHA, torch.zeros(1, 2))  # compiles where compiled
        arms[name] = {"wm": wm, "first_s": time.perf_counter() - t0, "rollout_s": [], "plan_s": []}

    def plan(dynamics: LearnedDynamics, i: int) -> float:
        t0 = time.perf_counter()
        z0, goal = dynamics.encode(frame), dynamics.encode(frame)
        cem(dynamics, z0, torch.zeros(1, 2), goal, horizon=bench.horizon, cfg=plan_cfg,
            generator=keyed_generator(0, 0, i))
        return time.perf_counter() - t0

    for arm in arms.values():
        plan(LearnedDynamics(arm["wm"]), 0)  # CEM's own shapes, compiled outside the timing
    names = list(arms)
    for r in range(bench.rounds):
        for name in round_order(names, r):
            arm = arms[name]
            times = []
            with torch.no_grad():
                for _ in range(bench.repeats):
                    t0 = time.perf_counter()
                    arm["wm"].rollout(z0_1ND, actions_BHA, torch.zeros(1, 2))
                    times.append(time.perf_counter() - t0)
            arm["rollout_s"].append(statistics.median(times))
            arm["plan_s"].append(plan(LearnedDynamics(arm["wm"]), r + 1))
    base = arms[names[0]]
    return [{"pool": f"{pool}x{pool}" if pool else f"full ({grid}x{grid})", "tokens": tokens, "arm": name,
             "first_s": a["first_s"], "s": statistics.median(a["rollout_s"]), "plan_s": statistics.median(a["plan_s"]),
             "rollout_speedup": ratio_over_rounds(base["rollout_s"], a["rollout_s"]),
             "plan_speedup": ratio_over_rounds(base["plan_s"], a["plan_s"])}
            for name, a in arms.items()]


def learning_configs(bench: BenchPosttrainConfig) -> tuple[PretrainConfig, PosttrainConfig]:
    """The learning run's encoder pretraining and post-training configs, validated before anything runs."""
    out = Path(bench.out).resolve()
    pre = load_config("configs/pretrain/debug_cpu.yaml", [
        f"train.steps={bench.pretrain_steps}", f"train.output_dir={out}/pretrain", "tracking.backend=none",
        *(o.replace("{traj}", str(out / "traj")) for o in bench.pretrain_overrides)])
    post = load_config(bench.base, [f"ac.encoder_uri={out}/unused", *bench.posttrain_overrides], PosttrainConfig)
    return pre, post


def learning_run(pre_cfg: PretrainConfig, cfg: PosttrainConfig, bench: BenchPosttrainConfig) -> dict:
    from vwm.data.collect import run_collect
    from vwm.raycluster import connect
    from vwm.tasks.ac import run_posttrain
    from vwm.tasks.jepa import run_pretrain

    out = Path(bench.out).resolve()
    connect()
    run_collect(CollectConfig(out=str(out / "traj"), env=EnvConfig(name="two_rooms", image_size=64),
                              episodes=bench.episodes, steps=100, seed=0, episodes_per_shard=25), progress=False)
    pre = run_pretrain(pre_cfg, local=True, progress=False)
    run_cfg = with_overrides(cfg, {
        "ac.encoder_uri": str(Path(pre.checkpoint_path) / "world_model"), "data.paths": [str(out / "traj/train")],
        "data.stats": str(out / "traj/dataset.json"), "monitor.heldout_paths": [str(out / "traj/held_out")],
        "train.steps": bench.train_steps, "train.eval_every": bench.train_steps, "train.output_dir": str(out / "post"),
        "tracking.backend": "jsonl"})
    t0 = time.perf_counter()
    result = run_posttrain(run_cfg, local=True, progress=False)
    seconds = time.perf_counter() - t0
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    step_s = statistics.median(r["perf/step_s"] + r["perf/data_wait_s"] for r in rows if "perf/step_s" in r)
    evals = [r for r in rows if "eval/rollout_vs_copy@1" in r][-1]
    return {"steps": bench.train_steps, "seconds": seconds, "steps_per_s": 1.0 / step_s,
            **{k: v for k, v in evals.items() if k.startswith("eval/")}}


def _ci(median_lo_hi: tuple[float, float, float]) -> str:
    return "{:.2f} [{:.2f}, {:.2f}]".format(*median_lo_hi)


def _emit(bench: BenchPosttrainConfig, block: str, lines: list[str]) -> None:
    table = "\n".join(lines)
    print(table)
    if bench.report:
        write_block(bench.report, block, table)


def run_bench_posttrain(bench: BenchPosttrainConfig) -> dict:
    cfg = load_config(bench.base, [f"ac.encoder_uri={bench.out}/unused"], PosttrainConfig)
    learning = learning_configs(bench) if bench.train_steps else None
    costs = [row for pool in bench.pools for row in rollout_cost(cfg, bench, pool)]
    if costs:  # a learning-only run (pools: []) keeps the last speed figures
        _emit(bench, "bench_posttrain", speed_lines(cfg, bench, costs))
    learned = learning_run(*learning, bench) if learning else None
    if learned:  # its own block: a speed-only run (train_steps: 0) keeps the last learning figures
        ks = sorted({k.rsplit("@", 1)[1] for k in learned if "@" in k}, key=int)
        pretrained = " ".join(bench.pretrain_overrides) or "synthetic videos"
        lines = [f"{date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} CPUs. "
                 f"Learning ({bench.episodes} TwoRooms episodes, debug encoder pretrained {bench.pretrain_steps} "
                 f"steps ({pretrained}), {learned['steps']} post-training steps of {bench.base} "
                 f"({' '.join(bench.posttrain_overrides) or 'as it is'}) in one process, "
                 f"{learned['seconds']:.0f} s, {learned['steps_per_s']:.2f} steps/s): held-out rollout L1 and its "
                 "ratio to copying the last frame (below 1 beats the copy).", "",
                 "| steps ahead | rollout L1 | vs copy |", "|---|---|---|"]
        lines += [f"| {k} | {learned[f'eval/rollout_l1@{k}']:.4f} | {learned[f'eval/rollout_vs_copy@{k}']:.3f} |"
                  for k in ks]
        _emit(bench, "bench_posttrain_learning", lines)
    return {"rollouts": costs, "learning": learned}


def speed_lines(cfg: PosttrainConfig, bench: BenchPosttrainConfig, costs: list[dict]) -> list[str]:
    p = cfg.ac.predictor
    lines = [f"{date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} "
             f"threads, torch {torch.__version__}: one rollout of {bench.candidates} candidates x {bench.horizon} "
             "steps through the planner's `ACWorldModel.rollout` (one predictor call per step over all candidates, "
             f"earlier frames cached), predictor {p.dim}x{p.depth}, debug encoder width; a CEM plan: "
             f"{bench.candidates} x {bench.cem_iterations} at horizon {bench.horizon}, the observation and goal "
             f"encoded. Arms interleaved over {bench.rounds} rounds (a round: {bench.repeats} rollouts and one plan "
             "per arm); medians over rounds, speed-ups over eager with 95% bootstrap intervals; first call: the "
             "compile included.", "",
             "| pooling | tokens per frame | arm | s per rollout | speed-up | s per CEM plan | speed-up "
             "| first call s |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {c['pool']} | {c['tokens']} | {c['arm']} | {c['s']:.4f} | {_ci(c['rollout_speedup'])} | "
              f"{c['plan_s']:.2f} | {_ci(c['plan_speedup'])} | {c['first_s']:.1f} |" for c in costs]
    return lines
