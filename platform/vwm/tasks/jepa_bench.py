"""Training benchmark, its arms interleaved over rounds so that a ratio holds on a noisy machine.

Two comparisons, each reported as the median over rounds of a per-round ratio with a bootstrap interval:

* the platform's training step in process (``Trainer.micro_step``: the task's loss, backward, the engine's
  update, the EMA), by arm (eager with per-tensor loops, fused optimizer, compiled, bf16 autocast ...) for
  each model; every arm starts from the same weights and reads the same batches, so their losses compare;
* the platform end to end (Ray Train + DeepSpeed, 1 worker) beside a bare single-process PyTorch loop of
  the same model, batch and optimizer.
"""

from __future__ import annotations

import itertools
import json
import platform
import statistics
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch

from vwm.benchreport import ratio_over_rounds, round_order, write_block
from vwm.config import BenchTrainConfig, PretrainConfig, with_overrides
from vwm.configfile import load_config
from vwm.masks.collate import MaskCollator
from vwm.models.jepa import build_models, target_features
from vwm.models.preprocess import normalize_clips
from vwm.models.vit import token_grid
from vwm.tasks.jepa import JepaTask, jepa_loss, synthetic_batches
from vwm.tracking.tracker import NoopTracker
from vwm.train.engine import LocalEngine
from vwm.train.trainer import RunEnv, Trainer, resolve_device, seed_everything


def step_runner(cfg: PretrainConfig) -> Callable[[], tuple[float, float]]:
    """The in-process trainer of ``cfg`` as a function running its next step: (seconds, loss)."""
    device, autocast_dtype = resolve_device(cfg.train)
    seed_everything(cfg.train.seed)
    task = JepaTask(cfg, rank=0, device=device, run_name="bench", provenance={})
    engine = LocalEngine(task.build(), cfg.optim, device)
    env = RunEnv(rank=0, device=device, autocast_dtype=autocast_dtype, tracker=NoopTracker(), sink=None,
                 progress="off")
    trainer = Trainer(cfg, task, engine, env)
    batches, _ = task.batches(0, None, None)
    counter = itertools.count()

    def run() -> tuple[float, float]:
        batch, step = next(batches), next(counter) // cfg.optim.grad_accumulation
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = trainer.micro_step(batch, step)
        loss = float(out.loss)
        if device.type == "cuda":  # the update too, not only the loss read back above
            torch.cuda.synchronize()
        return time.perf_counter() - t0, loss

    return run


def compare_arms(configs: dict[str, PretrainConfig], rounds: int, steps: int, warmup: int) -> dict[str, dict]:
    """Each arm's step time by round (median of its ``steps``), first-step time and losses, interleaved."""
    runners = {name: step_runner(cfg) for name, cfg in configs.items()}
    out = {name: {"round_s": [], "losses": []} for name in runners}
    for name, run in runners.items():
        for i in range(warmup):
            seconds, loss = run()
            out[name]["losses"].append(loss)
            if i == 0:
                out[name]["first_step_s"] = seconds
    names = list(runners)
    for r in range(rounds):
        for name in round_order(names, r):
            timed = [runners[name]() for _ in range(steps)]
            out[name]["round_s"].append(statistics.median(t for t, _ in timed))
            out[name]["losses"] += [loss for _, loss in timed]
    return out


def bare_loop(cfg: PretrainConfig, steps: int, warmup: int) -> list[float]:
    """The reference: plain PyTorch AdamW + EMA, no engine, no Ray; batches made before the clock starts."""
    seed_everything(cfg.train.seed)
    jepa, target = build_models(cfg.model, cfg.data.frames, cfg.data.crop, len(cfg.mask.sets))
    opt = torch.optim.AdamW(jepa.parameters(), lr=1e-4, weight_decay=0.04, fused=cfg.optim.fused or None)
    collate = MaskCollator(cfg.mask, token_grid(cfg.model, cfg.data.frames, cfg.data.crop), seed=0, rank=0,
                           steps_per_epoch=cfg.train.steps_per_epoch)
    batches = [b for _, b in zip(range(steps), synthetic_batches(cfg, collate, 0, rank=0))]
    times = []
    for batch in batches:
        t0 = time.perf_counter()
        clips = normalize_clips(batch.clips_BTHWC)
        loss = jepa_loss(jepa(clips, batch.masks), target_features(target, clips), batch.masks)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(jepa.parameters(), cfg.optim.grad_clip, foreach=cfg.optim.fused)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(target.parameters()), list(jepa.encoder.parameters()), 0.002)
        times.append(time.perf_counter() - t0)
    return times[warmup:-1]  # as the platform's: its last step checkpoints


def ours(cfg: PretrainConfig, stage: int, bench: BenchTrainConfig, out: Path, name: str) -> list[float]:
    from vwm.tasks.jepa import run_pretrain

    steps = bench.platform_steps
    run = with_overrides(cfg, {
        "dist.num_workers": 1, "dist.zero_stage": stage, "dist.storage_path": str(out / "ray"),
        "dist.cpus_per_worker": bench.cpus_per_worker, "dist.checksum_every": steps,
        "train.steps": steps, "train.log_every": 1, "train.checkpoint_every": steps,
        "monitor.every": steps, "train.output_dir": str(out), "train.run_name": name, "tracking.backend": "jsonl"})
    result = run_pretrain(run)
    rows = [json.loads(line) for line in (out / result.name / "metrics.jsonl").read_text().splitlines()]
    return [r["perf/step_s"] for r in rows if "perf/step_s" in r][bench.platform_warmup:-1]


def _machine() -> str:
    return f"{date.today().isoformat()}, {platform.machine()}, {torch.get_num_threads()} CPU threads"


def step_table(bench: BenchTrainConfig, models: dict[str, dict[str, PretrainConfig]]) -> tuple[str, list[dict]]:
    rows = []
    for label, configs in models.items():
        res = compare_arms(configs, bench.rounds, bench.steps, bench.warmup)
        base_name = next(iter(configs))
        base = res[base_name]
        for name, r in res.items():
            n = min(20, len(r["losses"]))
            rows.append({"model": label, "arm": name, "step_s": statistics.median(r["round_s"]),
                         "speedup": ratio_over_rounds(base["round_s"], r["round_s"]), "first_step_s": r["first_step_s"],
                         "loss_diff": max(abs(a - b) for a, b in zip(r["losses"][:n], base["losses"][:n]))})
    m = next(iter(next(iter(models.values())).values()))
    table = (f"{_machine()}: batch {m.data.batch_size}; {bench.rounds} rounds, each running every arm for "
             f"{bench.steps} steps in turn, after {bench.warmup} warm-up steps per arm. Speed-up: the first arm's "
             "time over the arm's, median over rounds [95% bootstrap interval]; first step: compile included; "
             "loss diff: largest |loss - first arm's loss| over the first 20 steps (same weights, same batches).\n\n"
             "| model | arm | s/step | speed-up | first step s | loss diff |\n|---|---|---|---|---|---|\n"
             + "\n".join(f"| {r['model']} | {r['arm']} | {r['step_s']:.4f} | {r['speedup'][0]:.3f} "
                         f"[{r['speedup'][1]:.3f}, {r['speedup'][2]:.3f}] | {r['first_step_s']:.1f} | "
                         f"{r['loss_diff']:.1e} |" for r in rows))
    return table, rows


def platform_table(bench: BenchTrainConfig, cfg: PretrainConfig, out: Path) -> tuple[str, list[dict]]:
    bare, platform_runs = [], {s: [] for s in bench.zero_stages}
    for r in range(bench.rounds):
        bare.append(statistics.median(bare_loop(cfg, bench.platform_steps, bench.platform_warmup)))
        for stage in bench.zero_stages:
            platform_runs[stage].append(statistics.median(ours(cfg, stage, bench, out, f"bench-zero{stage}-r{r}")))
    rows = [{"what": "bare PyTorch loop (1 process)", "step_s": statistics.median(bare), "ratio": (1.0, 1.0, 1.0)}]
    for stage, times in platform_runs.items():
        rows.append({"what": f"Ray Train + DeepSpeed ZeRO-{stage}, 1 worker", "step_s": statistics.median(times),
                     "ratio": ratio_over_rounds(times, bare)})
    for row in rows:
        row["clips_per_s"] = cfg.data.batch_size / row["step_s"]
    m = cfg.model
    table = (f"{_machine()}: encoder {m.dim}x{m.depth}, predictor {m.predictor.dim}x{m.predictor.depth}, "
             f"{cfg.data.frames}x{cfg.data.crop}x{cfg.data.crop} clips, batch {cfg.data.batch_size}; {bench.rounds} "
             f"rounds, each a bare run then a platform run per stage of {bench.platform_steps} steps, steps "
             f"{bench.platform_warmup}..{bench.platform_steps - 2} timed. Ratio: platform over bare loop, median over "
             "rounds [95% bootstrap interval] (goal: at most 1.05).\n\n"
             "| loop | s/step | clips/s | ratio to bare loop |\n|---|---|---|---|\n"
             + "\n".join(f"| {r['what']} | {r['step_s']:.4f} | {r['clips_per_s']:.1f} | {r['ratio'][0]:.3f} "
                         f"[{r['ratio'][1]:.3f}, {r['ratio'][2]:.3f}] |" for r in rows))
    return table, rows


def run_bench_train(bench: BenchTrainConfig, out: str | Path = "outputs/bench_train") -> dict[str, list[dict]]:
    torch.set_num_threads(max(1, int(bench.cpus_per_worker)))  # as many threads as the Ray worker gets
    # every config is loaded (and validated) before any work starts
    base = load_config(bench.base, bench.overrides)
    models = {label: {arm: load_config(bench.base, bench.overrides + over + arm_over)
                      for arm, arm_over in bench.arms.items()} for label, over in bench.models.items()}
    result = {}
    table, result["steps"] = step_table(bench, models)
    print(table)
    if bench.report:
        write_block(bench.report, "bench_train_step", table)
    if bench.zero_stages:
        from vwm.raycluster import connect

        connect()
        table, result["platform"] = platform_table(bench, base, Path(out))
        print(table)
        if bench.report:
            write_block(bench.report, "bench_train", table)
    return result
