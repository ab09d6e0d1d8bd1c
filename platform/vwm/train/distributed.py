"""The Ray Train worker: the shared trainer under DeepSpeed, checkpoints reported to Ray, rank reductions."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import ray.train
import torch
import torch.distributed as dist

from vwm.raycompat import quiet_train_reports
from vwm.tracking.tracker import NoopTracker, attach_tracker
from vwm.train import checkpoint as ckpt
from vwm.train.trainer import RunEnv, Trainer, resolve_device, seed_everything


def all_reduce_mean(x: float, device: torch.device | None = None) -> float:
    t = torch.tensor([x], dtype=torch.float64, device=device)  # NCCL groups reduce CUDA tensors only
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def earliest_position(position):
    """The earliest (epoch, file) any rank is reading: resuming there skips no file any rank had not finished
    (a few files' clips are seen twice instead). Collective."""
    positions = [None] * dist.get_world_size()
    dist.all_gather_object(positions, tuple(position) if position else None)
    known = [p for p in positions if p is not None]
    return min(known) if known else None


class RaySink:
    """Every rank writes its part into a local folder and reports it; Ray merges the ranks' files into one
    checkpoint in the run's storage (local or s3://) and keeps the newest ``train.keep_checkpoints``."""

    def __init__(self, engine, task, *, rank: int, total_steps: int, tmp_root: Path):
        self.engine, self.task, self.rank, self.total_steps = engine, task, rank, total_steps
        self.tmp = tmp_root / f".tmp-rank{rank}"
        # what this rank's save of an earlier attempt, killed midway, left behind (its own folder only:
        # the other ranks may already be writing theirs)
        ckpt.sweep_temp(tmp_root, self.tmp.name)

    def save(self, done: int, position, metrics: dict) -> None:
        position = earliest_position(position)
        d = self.tmp / f"step_{done:08d}"
        try:
            ckpt.write_checkpoint(d, self.engine, self.task, rank=self.rank, step=done, position=position,
                                  final=done == self.total_steps)
            ray.train.report({"step": done, **metrics}, checkpoint=ray.train.Checkpoint.from_directory(str(d)))
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return None

    def report(self, done: int, metrics: dict) -> None:
        ray.train.report(metrics)


def temp_root(cfg, rank: int) -> Path:
    """Where this rank writes its part of a checkpoint before Ray uploads it: the run's folder (``.tmp``), or
    on a node that cannot write there, a folder of the run in the system's temporary folder. Either way the
    same place on every attempt, so a restart finds and removes what a killed save left."""
    root = Path(cfg.train.output_dir).resolve() / cfg.train.run_name / ".tmp"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".probe-rank{rank}"
        probe.touch()
        probe.unlink()
    except OSError:
        root = Path(tempfile.gettempdir()) / f"vwm-{cfg.train.run_name}"
        root.mkdir(parents=True, exist_ok=True)
    return root


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker: typed config -> seed -> task -> DeepSpeed -> restore -> Trainer.fit."""
    quiet_train_reports()
    # DeepSpeed's ZeRO gathers call a torch collective torch deprecated: one warning per rank, nothing to act on
    warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.* is deprecated", category=FutureWarning)
    task_cls = config["task"]
    cfg = task_cls.config_cls.model_validate(config["cfg"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    device, autocast_dtype = resolve_device(cfg.train)
    if device.type == "cuda":
        torch.cuda.set_device(ctx.get_local_rank())
        device = torch.device("cuda", ctx.get_local_rank())
    seed_everything(cfg.train.seed)  # same init on every rank; tasks broadcast their EMA parts anyway
    task = task_cls(cfg, rank=rank, device=device, run_name=cfg.train.run_name, provenance=config["provenance"])
    module = task.build()
    if device.type == "cpu":
        os.environ["DS_ACCELERATOR"] = "cpu"  # read when deepspeed is first imported, just below
    from vwm.train.engine import DeepSpeedEngine

    engine = DeepSpeedEngine(module, cfg.optim, cfg.dist, task.samples_per_batch, autocast_dtype is not None, device)
    start_step, position = 0, None
    checkpoint = ray.train.get_checkpoint() or config.get("init_from")  # PBT: a better trial's checkpoint
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            start_step, position = ckpt.read_checkpoint(Path(d), engine, task, rank=rank)
        how = "initialised" if checkpoint is config.get("init_from") else "resumed"
        sys.stdout.write(f"[vwm] rank {rank} {how} from {checkpoint.path} at step {start_step}\n")  # not print():
        sys.stdout.flush()  # Ray Train's patched print would show the line twice
    shard = ray.train.get_dataset_shard("train") if config["has_dataset"] else None
    acc = cfg.optim.grad_accumulation
    batches, skipped_videos = task.batches(start_step * acc, position, shard)
    tracker = attach_tracker(cfg.tracking, config["tracker"]) if rank == 0 else NoopTracker()
    env = RunEnv(rank=rank, device=device, autocast_dtype=autocast_dtype, tracker=tracker,
                 sink=RaySink(engine, task, rank=rank, total_steps=cfg.train.steps, tmp_root=temp_root(cfg, rank)),
                 skipped_videos=skipped_videos,
                 mean_across_ranks=lambda x: all_reduce_mean(x, device), progress=config.get("progress", "lines"),
                 name=cfg.train.run_name,
                 restored=checkpoint is not None and checkpoint is not config.get("init_from"))
    try:
        end = min(config.get("stop_at") or cfg.train.steps, cfg.train.steps)
        Trainer(cfg, task, engine, env).fit(batches, start_step=start_step, end_step=end)
    finally:
        tracker.close()
