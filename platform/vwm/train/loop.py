"""The pretraining loop: one core loop (``train_loop``) driven by two thin runners.

``run_local`` trains in this process (``vwm pretrain --local``); ``train_loop_per_worker`` is the Ray
Train worker function of ``run_pretrain`` (DeepSpeed ZeRO, checkpoints reported to Ray). Both call the
same ``train_step``; what differs (rank, tracker, where checkpoints go) is passed in a ``LoopEnv``.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vwm.config import RunConfig, TrainConfig
from vwm.configfile import flatten, to_yaml
from vwm.data.synthetic import SyntheticClips
from vwm.eval.probe import heldout_probe, probe_set
from vwm.eval.rankme import feature_std, heldout_rankme, rankme, token_sample
from vwm.masks.collate import Batch, MaskCollator
from vwm.models.jepa import build_models
from vwm.models.vit import token_grid
from vwm.tracking.tracker import NoopTracker, Tracker, make_tracker
from vwm.train import checkpoint as ckpt
from vwm.train.ema import assert_identical_across_ranks, broadcast_from_rank0
from vwm.train.engine import LocalEngine
from vwm.train.step import train_step

log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    """Too many non-finite losses in a row: the run stops instead of training on garbage."""


@dataclass
class RunSummary:
    run_dir: Path | None
    start_step: int
    final_step: int
    losses: list[float] = field(default_factory=list)
    monitors: list[dict] = field(default_factory=list)
    skipped_steps: int = 0
    last_checkpoint: Path | None = None


@dataclass
class LoopEnv:
    """What differs between a single-process and a distributed run."""

    rank: int
    device: torch.device
    autocast_dtype: torch.dtype | None
    tracker: Tracker
    save_checkpoint: Callable[[int, Batch, dict], Path | None]  # (done steps, last batch, metrics)
    report: Callable[[int, dict], None] = lambda step, metrics: None  # eval metrics to Ray (Tune) if any
    skipped_videos: Callable[[], int] = lambda: 0
    mean_across_ranks: Callable[[float], float] = lambda x: x
    progress: bool = True
    name: str = "pretrain"


def resolve_device(cfg: TrainConfig) -> tuple[torch.device, torch.dtype | None]:
    """The device and autocast dtype: bf16 autocast on CUDA unless fp32 is asked for, fp32 on CPU."""
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is visible; use train.device=auto or cpu")
    device = torch.device("cuda" if use_cuda else "cpu")
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and use_cuda)
    return device, (torch.bfloat16 if bf16 else None)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def synthetic_batches(cfg: RunConfig, collate: MaskCollator, start_micro: int, rank: int) -> Iterator[Batch]:
    """In-process synthetic clips keyed by (seed, step, rank): exact resume, no pipeline needed."""
    d = cfg.data
    source = SyntheticClips(d.synthetic, frames=d.frames, frame_step=d.frame_step, crop=d.crop,
                            batch_size=d.batch_size, seed=cfg.train.seed, steps_per_epoch=cfg.train.steps_per_epoch)
    return (collate(source.batch(step, rank=rank)) for step in itertools.count(start_micro))


def train_loop(cfg: RunConfig, engine, target: torch.nn.Module, batches: Iterator[Batch], *, start_step: int,
               end_step: int, env: LoopEnv) -> RunSummary:
    """Optimizer steps ``start_step`` .. ``end_step``: batch -> step -> monitor/log -> checksum -> checkpoint."""
    t, acc = cfg.train, cfg.optim.grad_accumulation
    summary = RunSummary(run_dir=None, start_step=start_step, final_step=start_step)
    bar = tqdm(total=t.steps, initial=start_step, disable=not (env.progress and env.rank == 0), desc=env.name,
               dynamic_ncols=True)
    nonfinite_in_a_row, t_data, t_step = 0, 0.0, 0.0
    heldout = None
    if t.eval_every:  # videos under another seed: never seen in training
        heldout = torch.from_numpy(SyntheticClips(
            cfg.data.synthetic, frames=cfg.data.frames, frame_step=cfg.data.frame_step, crop=cfg.data.crop,
            batch_size=t.eval_clips, seed=t.seed + 1_000_003, steps_per_epoch=t.steps_per_epoch).batch(0)["clips"])
    probe_data = None
    if t.probe.label and env.rank == 0:  # the probe reads rank 0's target; Ray takes reports from rank 0
        probe_data = probe_set(cfg.data, t.probe, t.seed)
    for micro in range(start_step * acc, end_step * acc):
        t0 = time.perf_counter()
        batch = next(batches)
        t1 = time.perf_counter()
        out = train_step(engine, target, batch, step=micro // acc, optim=cfg.optim, total_steps=t.steps,
                         device=env.device, autocast_dtype=env.autocast_dtype)
        t_data, t_step = t_data + t1 - t0, t_step + time.perf_counter() - t1
        if out.skipped:
            summary.skipped_steps += 1
            nonfinite_in_a_row += 1
            log.warning("non-finite loss %s at micro-step %d: update skipped (%d in a row)", out.loss, micro,
                        nonfinite_in_a_row)
            if nonfinite_in_a_row >= t.max_nonfinite_steps:
                raise NonFiniteLoss(f"{nonfinite_in_a_row} non-finite losses in a row (last at micro-step {micro});"
                                    " lower optim.lr.peak or check the data; train.max_nonfinite_steps sets the limit")
        else:
            nonfinite_in_a_row = 0
        summary.losses.append(out.loss)
        if (micro + 1) % acc:
            continue
        step = micro // acc
        done = step + 1
        metrics = {}
        if step % t.log_every == 0 or done == end_step:
            metrics = {"train/loss": env.mean_across_ranks(out.loss), "train/lr": out.lr, "train/wd": out.wd,
                       "train/ema_momentum": out.momentum, "train/skipped_steps": summary.skipped_steps,
                       "perf/step_s": t_step / acc, "perf/data_wait_s": t_data / acc,
                       "perf/clips_per_s": cfg.data.batch_size * acc / max(t_step + t_data, 1e-9),
                       "data/skipped_videos": env.skipped_videos()}
            if out.grad_norm is not None and np.isfinite(out.grad_norm):
                metrics["train/grad_norm"] = out.grad_norm
            if env.device.type == "cuda":
                metrics["perf/gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        t_data = t_step = 0.0
        if env.rank == 0 and (step % t.monitor_every == 0 or done == end_step):
            rows_ND = token_sample(out.target_BND)
            monitor = {"repr/std": feature_std(rows_ND), "repr/rankme": rankme(rows_ND)}
            summary.monitors.append({"step": step, **monitor})
            metrics.update(monitor)
            bar.set_postfix(loss=f"{out.loss:.4f}", lr=f"{out.lr:.2e}", m=f"{out.momentum:.5f}",
                            std=f"{monitor['repr/std']:.3f}", rankme=f"{monitor['repr/rankme']:.1f}")
        if metrics and env.rank == 0:
            env.tracker.log_metrics(metrics, step)
        if done % cfg.dist.checksum_every == 0 or done == end_step:
            assert_identical_across_ranks(target, done, engine)
        evaluated = {}
        if heldout is not None and (done % t.eval_every == 0 or done == end_step):
            evaluated = heldout_rankme(target, heldout, env.device)  # identical targets: same on every rank
            if probe_data is not None:
                evaluated.update(heldout_probe(target, *probe_data, t.probe, token_grid(cfg.model, cfg.data.frames,
                                                                                         cfg.data.crop), env.device))
            summary.monitors.append({"step": step, **evaluated})
            if env.rank == 0:
                env.tracker.log_metrics(evaluated, step)
        if env.rank == 0 and (evaluated or done % t.checkpoint_every == 0):
            env.tracker.flush()  # a report follows, after which a scheduler may stop this trial
        if done % t.checkpoint_every == 0 or done == end_step:
            summary.last_checkpoint = env.save_checkpoint(done, batch, {"train/loss": out.loss, **evaluated})
        elif evaluated:
            env.report(done, {"step": done, "train/loss": out.loss, **evaluated})
        summary.final_step = done
        bar.update(1)
    bar.close()
    return summary


# ------------------------------------------------------------------------------------- single process
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


def _local_batches(cfg: RunConfig, collate: MaskCollator, start_micro: int, position, run_name: str):
    """The batch stream and a skipped-video counter: synthetic clips in-process, or shards through the
    Ray Data pipeline on a local (or RAY_ADDRESS) Ray cluster."""
    if cfg.data.source == "synthetic":
        return synthetic_batches(cfg, collate, start_micro, rank=0), lambda: 0
    import ray

    from vwm.data.pipeline import local_batches, skip_ledger
    from vwm.raycluster import connect

    connect()
    ledger = skip_ledger(f"skips-{run_name}")
    stream = local_batches(cfg.data, collate, seed=cfg.train.seed, ledger=ledger, position=position)
    return iter(stream), lambda: ray.get(ledger.count.remote())


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

    start_step, position = 0, None
    latest = ckpt.latest_checkpoint(run_dir / "checkpoints") if resume else None
    if latest is not None:
        engine.load(latest)
        meta = ckpt.load_extras(latest, rank=0, target=target)
        start_step, position = meta["step"], meta["data_position"].get("position")
        log.info("resumed from %s at step %d", latest, start_step)
    elif resume:
        log.warning("--resume: no checkpoint under %s, starting from step 0", run_dir / "checkpoints")

    acc = cfg.optim.grad_accumulation
    collate = MaskCollator(cfg.mask, token_grid(cfg.model, cfg.data.frames, cfg.data.crop), seed=t.seed, rank=0,
                           steps_per_epoch=t.steps_per_epoch, start_step=start_step * acc)
    batches, skipped_videos = _local_batches(cfg, collate, start_step * acc, position, run_dir.name)
    tracker = make_tracker(cfg.tracking, run_dir)
    tracker.log_params(flatten(cfg))

    def save(done: int, batch: Batch, _metrics: dict) -> Path:
        return ckpt.save_local(run_dir / "checkpoints", done, t.keep_checkpoints,
                               lambda d: ckpt.write_state(d, engine, target, rank=0, step=done,
                                                          position=batch.position))

    env = LoopEnv(rank=0, device=device, autocast_dtype=autocast_dtype, tracker=tracker, save_checkpoint=save,
                  skipped_videos=skipped_videos, progress=progress, name=run_dir.name)
    end = t.steps if stop_at is None else min(stop_at, t.steps)
    try:
        summary = train_loop(cfg, engine, target, batches, start_step=start_step, end_step=end, env=env)
    finally:
        tracker.close()
    summary.run_dir = run_dir
    return summary


# ----------------------------------------------------------------------------------------- Ray Train
def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker: typed config -> seed -> models -> DeepSpeed -> restore -> train_loop -> final model."""
    import ray.train

    from vwm.train.distributed import RayCheckpointer, all_reduce_mean, make_worker_tracker, worker_batches

    cfg = RunConfig.model_validate(config["cfg"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    device, autocast_dtype = resolve_device(cfg.train)
    if device.type == "cuda":
        torch.cuda.set_device(ctx.get_local_rank())
        device = torch.device("cuda", ctx.get_local_rank())
    seed_everything(cfg.train.seed)  # same init on every rank; the target is broadcast from rank 0 anyway
    jepa, target = build_models(cfg.model, cfg.data.frames, cfg.data.crop, len(cfg.mask.sets))
    target.to(device)
    broadcast_from_rank0(target)
    if device.type == "cpu":
        os.environ["DS_ACCELERATOR"] = "cpu"  # read when deepspeed is first imported, just below
    from vwm.train.engine import DeepSpeedEngine

    engine = DeepSpeedEngine(jepa, cfg.optim, cfg.dist, cfg.data.batch_size, autocast_dtype is not None, device)
    checkpointer = RayCheckpointer(cfg, engine, target, rank)
    start_step, position = checkpointer.restore(config.get("init_from"))
    batches, skipped_videos = worker_batches(cfg, rank, start_step, position)
    tracker = make_worker_tracker(config, rank) if rank == 0 else NoopTracker()
    env = LoopEnv(rank=rank, device=device, autocast_dtype=autocast_dtype, tracker=tracker,
                  save_checkpoint=checkpointer.save, report=lambda _step, metrics: ray.train.report(metrics),
                  skipped_videos=skipped_videos, mean_across_ranks=all_reduce_mean, progress=False,
                  name=cfg.train.run_name)
    try:
        end = min(config.get("stop_at") or cfg.train.steps, cfg.train.steps)
        train_loop(cfg, engine, target, batches, start_step=start_step, end_step=end, env=env)
    finally:
        tracker.close()
