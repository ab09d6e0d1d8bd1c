"""Training benchmark: step time of our Ray Train + DeepSpeed loop (1 worker) beside a bare single-process
PyTorch loop of the same model, batch size and step count; the ratio shows what the machinery costs."""

from __future__ import annotations

import json
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch

from vwm.benchreport import write_block
from vwm.config import BenchTrainConfig, PretrainConfig, with_overrides
from vwm.configfile import load_config
from vwm.masks.collate import MaskCollator
from vwm.models.jepa import build_models, target_features
from vwm.models.preprocess import normalize_clips
from vwm.models.vit import token_grid
from vwm.tasks.jepa import jepa_loss, synthetic_batches
from vwm.train.trainer import seed_everything


def bare_loop(cfg: PretrainConfig, steps: int, warmup: int) -> list[float]:
    """The reference: plain PyTorch AdamW + EMA, no engine, no Ray; batches made before the clock starts."""
    seed_everything(cfg.train.seed)
    jepa, target = build_models(cfg.model, cfg.data.frames, cfg.data.crop, len(cfg.mask.sets))
    opt = torch.optim.AdamW(jepa.parameters(), lr=1e-4, weight_decay=0.04)
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
        torch.nn.utils.clip_grad_norm_(jepa.parameters(), cfg.optim.grad_clip)
        opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(target.parameters()), list(jepa.encoder.parameters()), 0.002)
        times.append(time.perf_counter() - t0)
    return times[warmup:]


def ours(cfg: PretrainConfig, stage: int, bench: BenchTrainConfig, out: Path) -> list[float]:
    from vwm.tasks.jepa import run_pretrain

    run = with_overrides(cfg, {
        "dist.num_workers": 1, "dist.zero_stage": stage, "dist.storage_path": str(out / "ray"),
        "dist.cpus_per_worker": bench.cpus_per_worker, "dist.checksum_every": bench.steps,
        "train.steps": bench.steps, "train.log_every": 1, "train.checkpoint_every": bench.steps,
        "monitor.every": bench.steps, "train.output_dir": str(out), "train.run_name": f"bench-zero{stage}",
        "tracking.backend": "jsonl"})
    result = run_pretrain(run)
    rows = [json.loads(line) for line in (out / result.name / "metrics.jsonl").read_text().splitlines()]
    return [r["perf/step_s"] for r in rows if "perf/step_s" in r][bench.warmup:-1]  # the last step checkpoints


def run_bench_train(bench: BenchTrainConfig, out: str | Path = "outputs/bench_train") -> list[dict]:
    from vwm.raycluster import connect

    cfg = load_config(bench.base, bench.overrides)
    torch.set_num_threads(max(1, int(bench.cpus_per_worker)))  # as many threads as the Ray worker gets
    connect()
    ref = statistics.median(bare_loop(cfg, bench.steps, bench.warmup))
    rows = [{"what": "bare PyTorch loop (1 process)", "step_s": ref}]
    for stage in bench.zero_stages:
        rows.append({"what": f"Ray Train + DeepSpeed ZeRO-{stage}, 1 worker",
                     "step_s": statistics.median(ours(cfg, stage, bench, Path(out)))})
    for r in rows:
        r["clips_per_s"] = cfg.data.batch_size / r["step_s"]
        r["ratio"] = r["step_s"] / ref
    m = cfg.model
    table = (f"{date.today().isoformat()}, {platform.machine()}, {bench.cpus_per_worker:g} CPU threads: "
             f"encoder {m.dim}x{m.depth}, predictor {m.predictor.dim}x{m.predictor.depth}, {cfg.data.frames}x"
             f"{cfg.data.crop}x{cfg.data.crop} clips, batch {cfg.data.batch_size}; median of steps "
             f"{bench.warmup}..{bench.steps - 2} (goal: ratio at most 1.15).\n\n"
             "| loop | s/step | clips/s | ratio to bare loop |\n|---|---|---|---|\n"
             + "\n".join(f"| {r['what']} | {r['step_s']:.4f} | {r['clips_per_s']:.1f} | {r['ratio']:.3f} |"
                         for r in rows))
    print(table)
    if bench.report:
        write_block(bench.report, "bench_train", table)
    return rows
