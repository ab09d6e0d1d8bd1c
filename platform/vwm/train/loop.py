"""The single-process pretraining loop (``vwm pretrain --local``): build, restore, loop, checkpoint."""

from __future__ import annotations

import itertools
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vwm.config import RunConfig, TrainConfig, flatten, to_yaml
from vwm.data.synthetic import SyntheticClips
from vwm.eval.rankme import feature_std, rankme, token_sample
from vwm.masks.collate import MaskCollator
from vwm.models.jepa import build_models
from vwm.models.vit import token_grid
from vwm.tracking.tracker import make_tracker
from vwm.train import checkpoint as ckpt
from vwm.train.engine import LocalEngine
from vwm.train.step import train_step

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    run_dir: Path
    start_step: int
    final_step: int
    losses: list[float] = field(default_factory=list)
    monitors: list[dict] = field(default_factory=list)
    skipped_steps: int = 0
    last_checkpoint: Path | None = None


def resolve_device(cfg: TrainConfig) -> tuple[torch.device, torch.dtype | None]:
    """The device and autocast dtype: bf16 autocast on CUDA unless fp32 is asked for, fp32 on CPU."""
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is visible; use train.device=auto or cpu")
    device = torch.device("cuda" if use_cuda else "cpu")
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and use_cuda)
    return device, (torch.bfloat16 if bf16 else None)


def _batches(cfg: RunConfig, collate: MaskCollator, start_step: int, position, run_name: str):
    """The batch stream and a function counting skipped videos: in-process synthetic clips, or shards
    through the Ray Data pipeline on a local (or RAY_ADDRESS) Ray cluster."""
    if cfg.data.source == "synthetic":
        d = cfg.data
        source = SyntheticClips(d.synthetic, frames=d.frames, frame_step=d.frame_step, crop=d.crop,
                                batch_size=d.batch_size, seed=cfg.train.seed,
                                steps_per_epoch=cfg.train.steps_per_epoch)
        return (collate(source.batch(step, rank=0)) for step in itertools.count(start_step)), lambda: 0
    import ray

    from vwm.data.pipeline import local_batches, skip_ledger
    from vwm.raycluster import connect

    connect()
    ledger = skip_ledger(f"skips-{run_name}")
    stream = local_batches(cfg.data, collate, seed=cfg.train.seed, ledger=ledger, position=position)
    return iter(stream), lambda: ray.get(ledger.count.remote())


def resolve_run_dir(cfg: TrainConfig, resume: bool) -> Path:
    """``output_dir/run_name``; a fresh run never writes into an earlier run's folder, it takes ``-1``, ``-2``..."""
    base = Path(cfg.output_dir).resolve() / cfg.run_name
    run_dir, n = base, 0
    while not resume and run_dir.exists() and any(run_dir.iterdir()):
        n += 1
        run_dir = base.with_name(f"{cfg.run_name}-{n}")
    if run_dir != base:
        log.info("%s holds an earlier run; this fresh run writes to %s (pass --resume to continue the other)",
                 base, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_local(cfg: RunConfig, *, resume: bool = False, progress: bool = True,
              stop_at: int | None = None) -> RunSummary:
    """Train in this process. ``stop_at`` ends this invocation early (as a preemption would) with the
    schedules still laid out over ``train.steps``; a later ``resume=True`` call continues the run."""
    t = cfg.train
    run_dir = resolve_run_dir(t, resume)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    device, autocast_dtype = resolve_device(t)
    seed_everything(t.seed)

    jepa, target = build_models(cfg.model, cfg.data.frames, cfg.data.crop, len(cfg.mask.sets))
    engine = LocalEngine(jepa, cfg.optim, device)
    target.to(device)

    start_step, data_position = 0, None
    latest = ckpt.latest_checkpoint(run_dir / "checkpoints") if resume else None
    if latest is not None:
        state = ckpt.load_checkpoint(latest)
        engine.load_state_dict(state["engine"])
        target.load_state_dict(state["target"])
        ckpt.set_rng_state(state["rng"])
        start_step = state["step"]
        data_position = state["data_position"].get("position")
        log.info("resumed from %s at step %d", latest, start_step)
    elif resume:
        log.warning("--resume: no checkpoint under %s, starting from step 0", run_dir / "checkpoints")

    grid = token_grid(cfg.model, cfg.data.frames, cfg.data.crop)
    collate = MaskCollator(cfg.mask, grid, seed=t.seed, rank=0, steps_per_epoch=t.steps_per_epoch,
                           start_step=start_step)
    batches, skipped_videos = _batches(cfg, collate, start_step, data_position, run_dir.name)
    tracker = make_tracker(cfg.tracking, run_dir)
    tracker.log_params(flatten(cfg))
    summary = RunSummary(run_dir=run_dir, start_step=start_step, final_step=start_step)

    end = t.steps if stop_at is None else min(stop_at, t.steps)
    bar = tqdm(range(start_step, end), initial=start_step, total=t.steps, disable=not progress,
               desc=t.run_name, dynamic_ncols=True)
    for step in bar:
        t0 = time.perf_counter()
        batch = next(batches)
        t1 = time.perf_counter()
        out = train_step(engine, target, batch, optim=cfg.optim, total_steps=t.steps, device=device,
                         autocast_dtype=autocast_dtype)
        t2 = time.perf_counter()
        summary.losses.append(out.loss)
        summary.skipped_steps += out.skipped
        metrics = {"train/loss": out.loss, "train/lr": out.lr, "train/wd": out.wd,
                   "train/ema_momentum": out.momentum, "train/grad_norm": out.grad_norm,
                   "perf/step_s": t2 - t1, "perf/data_wait_s": t1 - t0,
                   "perf/clips_per_s": cfg.data.batch_size / max(t2 - t0, 1e-9)}
        if step % t.monitor_every == 0 or step == t.steps - 1:
            rows_ND = token_sample(out.target_BND)
            monitor = {"repr/std": feature_std(rows_ND), "repr/rankme": rankme(rows_ND)}
            summary.monitors.append({"step": step, **monitor})
            metrics.update(monitor)
            bar.set_postfix(loss=f"{out.loss:.4f}", lr=f"{out.lr:.2e}", m=f"{out.momentum:.5f}",
                            std=f"{monitor['repr/std']:.3f}", rankme=f"{monitor['repr/rankme']:.1f}")
        if step % t.log_every == 0 or step == t.steps - 1 or "repr/std" in metrics:
            metrics["data/skipped_videos"] = skipped_videos()
            tracker.log_metrics(metrics, step)
        done = step + 1
        if done % t.checkpoint_every == 0 or done == end:
            state = {"step": done, "engine": engine.state_dict(), "target": target.state_dict(),
                     "rng": ckpt.rng_state(),
                     "data_position": {"next_step": done, "position": batch.position}}
            summary.last_checkpoint = ckpt.save_checkpoint(run_dir / "checkpoints", done, state,
                                                           t.keep_checkpoints)
        summary.final_step = done
    bar.close()
    tracker.close()
    return summary
