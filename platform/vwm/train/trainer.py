"""The trainer every model kind shares: step counting, gradient accumulation, non-finite handling, timing,
logging cadence, hooks, checkpoint cadence and reports. It knows no model kind: a ``Task`` supplies the
model, the loss and what runs after each update; periodic work is a ``Hook`` with its own cadence.

The same ``Trainer`` runs in-process (``--local``, ``LocalEngine``) and in every Ray Train worker
(``DeepSpeedEngine``); what differs between the two is passed in a ``RunEnv``.
"""

from __future__ import annotations

import contextlib
import logging
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from vwm.config import TrainConfig, TrainerConfig
from vwm.tracking.tracker import Tracker
from vwm.train.schedules import lr_at, wd_at

log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    """Too many non-finite losses in a row: the run stops instead of training on garbage."""


@dataclass
class StepInfo:
    """What a hook sees: the optimizer step just finished and its last micro-batch's outcome."""

    step: int  # 0-based index of the finished optimizer step
    done: int  # optimizer steps done, step + 1
    end: int  # the step this invocation stops at
    loss: torch.Tensor  # detached, on the device: float() it only where needed (a host sync on GPUs)
    extras: dict[str, float | torch.Tensor]
    engine: Any  # the trainable module's engine: for hooks that evaluate or compare it
    tracker: Tracker  # the run's on rank 0 (a no-op elsewhere): for hooks that log files


@dataclass
class Hook:
    """Periodic work: runs after the steps where ``done % every == 0``, after the last step of an invocation,
    and (``first``) after a run's first step. ``all_ranks`` hooks are collective (every rank calls them);
    others run on rank 0 only. Returned metrics are logged; a ``report`` hook's also go to Ray (Tune)."""

    name: str
    every: int
    fn: Callable[[StepInfo], dict[str, float] | None]
    first: bool = False
    all_ranks: bool = False
    report: bool = False

    def due(self, done: int, end: int) -> bool:
        return done % self.every == 0 or done == end or (self.first and done == 1)


class Task(Protocol):
    """A model kind on the shared trainer (see vwm/tasks/)."""

    samples_per_batch: int
    progress_metrics: dict[str, tuple[str, ...]]  # what progress lines show beside the loss: label -> metrics

    @staticmethod
    def check_inputs(cfg) -> list[dict]: ...  # raise naming a missing input; else the inputs to log
    def build(self) -> nn.Module: ...  # the trainable module (the engine's); frozen parts stay in the task
    def batches(self, start_micro: int, position, shard) -> tuple[Iterator, Callable[[], int]]: ...
    # the loss and extra metrics: scalars, or 0-d tensors the trainer reads only at log steps (no host sync)
    def loss(self, engine, batch, step: int) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]: ...
    def after_step(self, engine, step: int) -> None: ...  # after each applied update, e.g. a moving average
    def hooks(self) -> list[Hook]: ...
    def hot_modules(self, module: nn.Module) -> list[nn.Module]: ...  # what every step runs: compiled in place
    # optional: model FLOPs of one micro-batch (vwm.models.flops), for perf/tflops and perf/mfu
    def step_flops(self, batch) -> int: ...
    def state_dict(self) -> dict[str, Any]: ...  # what the engine does not own (a moving-average copy, ...)
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def export(self, directory: Path, module_state: dict[str, torch.Tensor]) -> None: ...  # the artifact


class CheckpointSink(Protocol):
    def save(self, done: int, position, metrics: dict) -> Path | None: ...
    def report(self, done: int, metrics: dict) -> None: ...


@dataclass
class RunEnv:
    """What differs between an in-process and a distributed run."""

    rank: int
    device: torch.device
    autocast_dtype: torch.dtype | None
    tracker: Tracker
    sink: CheckpointSink
    skipped_videos: Callable[[], int] = lambda: 0
    mean_across_ranks: Callable[[float], float] = lambda x: x
    progress: str = "bar"  # rank 0's progress: a tqdm bar, a line per log step (Ray workers), or off
    name: str = "run"
    restored: bool = False  # continuing this run from its own checkpoint (a restart or --resume)


@dataclass
class RunSummary:
    run_dir: Path | None
    start_step: int
    final_step: int
    losses: list[float] = field(default_factory=list)  # every micro-batch's loss on this rank
    monitors: list[dict] = field(default_factory=list)  # every hook's metrics, with their step
    skipped_steps: int = 0
    last_checkpoint: Path | None = None


@dataclass
class _Micro:
    loss: torch.Tensor  # detached; read on the host at log steps only
    grad_norm: torch.Tensor | float | None  # None between accumulation boundaries and on skipped steps
    lr: float
    wd: float
    extras: dict[str, float | torch.Tensor]
    skipped: bool


class ProgressLines:
    """A line per log step (``RUN step 20/40  loss 0.5269  lr 1.2e-04  LABEL VALUE ...  0.85 s/step  ETA 0:00:17``):
    what a distributed run's rank 0 prints, where a redrawn bar would reach the driver as a new line per
    redraw. Seconds per step are wall time since the previous line, data waits and hooks included. ``shown``
    (the task's ``progress_metrics``): label -> metric names, the first one present wins, the latest value
    stays until a newer one comes (monitors run between log steps)."""

    def __init__(self, name: str, total: int, start: int, shown: dict[str, tuple[str, ...]] | None = None):
        self.name, self.total, self.start, self.last_done, self.last_t = name, total, start, start, time.perf_counter()
        self.shown = shown or {}
        self.latest: dict[str, float] = {}
        self.rate_known = False

    def update(self, done: int, metrics: dict[str, float], show: bool) -> str | None:
        """Note a step's metrics; print a line if ``show``."""
        for label, names in self.shown.items():
            value = next((metrics[n] for n in names if n in metrics), None)
            if value is not None:
                self.latest[label] = value
        if not show:
            return None
        now = time.perf_counter()
        s_per_step = (now - self.last_t) / max(1, done - self.last_done)
        first, self.last_done, self.last_t = self.rate_known is False, done, now
        parts = [f"{self.name} step {done}/{self.total}", f"loss {metrics['train/loss']:.4f}"]
        if "train/lr" in metrics:
            parts.append(f"lr {metrics['train/lr']:.2e}")
        parts += [f"{label} {self.latest[label]:.{3 if abs(self.latest[label]) < 10 else 1}f}"
                  for label in self.shown if label in self.latest]
        if first:  # start-up (workers, data, first batch) is no rate to extrapolate
            parts.append(f"first line after {s_per_step * max(1, done - self.start):.1f} s")
        else:
            eta = int(s_per_step * (self.total - done))
            parts += [f"{s_per_step:.2f} s/step", f"ETA {eta // 3600}:{eta % 3600 // 60:02d}:{eta % 60:02d}"]
        self.rate_known = True
        line = "  ".join(parts)
        # not print(): Ray Train's patched print sends a line both to stdout and through its logger (twice)
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        return line


def resolve_device(cfg: TrainConfig) -> tuple[torch.device, torch.dtype | None]:
    """The device and autocast dtype: bf16 autocast on CUDA unless fp32 is asked for, fp32 on CPU."""
    use_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but no CUDA device is visible; use train.device=auto or cpu")
    device = torch.device("cuda" if use_cuda else "cpu")
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and use_cuda)
    return device, (torch.bfloat16 if bf16 else None)


# dense bf16 peaks in TFLOP/s (vendor datasheets), matched in order against torch.cuda.get_device_name()
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100 PCIe": 756.0, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0,
                    "A10": 125.0}


def peak_tflops(cfg: TrainConfig, device: torch.device) -> float | None:
    """What ``perf/mfu`` divides by: ``train.peak_tflops``, else a known GPU's dense bf16 peak, else None."""
    if cfg.peak_tflops or device.type != "cuda":
        return cfg.peak_tflops
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def _read_back(pending: list[torch.Tensor]) -> list[float]:
    """The pending 0-d tensors as floats in one transfer; empties the list."""
    values = torch.stack(pending).float().cpu().tolist() if pending else []
    pending.clear()
    return values


def compile_enabled(cfg: TrainConfig, device: torch.device) -> bool:
    """``train.compile``: auto compiles on CUDA only; on CPU inductor gained 1.01-1.10x for our models
    (docs/performance.md, "Training loop") at a cost of 30-70 s of compile per process."""
    return cfg.compile is True or (cfg.compile == "auto" and device.type == "cuda")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Trainer:
    def __init__(self, cfg: TrainerConfig, task: Task, engine, env: RunEnv, run_dir: Path | None = None):
        self.cfg, self.task, self.engine, self.env, self.run_dir = cfg, task, engine, env, run_dir
        self.hooks: list[Hook] = list(task.hooks())
        self._nonfinite_in_a_row = 0
        self._t_data = self._t_step = 0.0
        self._flops = 0
        self._step_flops = getattr(task, "step_flops", None)
        self.peak_tflops = peak_tflops(cfg.train, env.device)
        self.compiled = compile_enabled(cfg.train, env.device)
        if self.compiled:
            # dynamic: masks change the token count every step; static shapes would recompile for each count
            for module in task.hot_modules(engine.module):
                module.compile(dynamic=True)

    def add_hook(self, hook: Hook) -> None:
        self.hooks.append(hook)

    def fit(self, batches: Iterator, *, start_step: int, end_step: int) -> RunSummary:
        """Optimizer steps ``start_step`` .. ``end_step``: batch -> step -> log -> hooks -> checkpoint."""
        t, acc, env = self.cfg.train, self.cfg.optim.grad_accumulation, self.env
        summary = RunSummary(self.run_dir, start_step, start_step)
        bar = tqdm(total=t.steps, initial=start_step, disable=not (env.progress == "bar" and env.rank == 0),
                   desc=env.name, dynamic_ncols=True)
        lines = (ProgressLines(env.name, t.steps, start_step, getattr(self.task, "progress_metrics", None))
                 if env.progress == "lines" and env.rank == 0 else None)
        logged_until = self._note_restart(start_step) if env.rank == 0 else -1
        pending: list[torch.Tensor] = []  # losses read back at log steps: a float() per step would sync each step
        first_micro = start_step * acc
        for micro in range(start_step * acc, end_step * acc):
            t0 = time.perf_counter()
            batch = next(batches)
            t1 = time.perf_counter()
            out = self.micro_step(batch, micro // acc)
            self._t_data, self._t_step = self._t_data + t1 - t0, self._t_step + time.perf_counter() - t1
            self._flops += self._step_flops(batch) if self._step_flops else 0
            self._count_nonfinite(out, micro, summary)
            pending.append(out.loss)
            if (micro + 1) % acc:
                continue
            info = StepInfo(micro // acc, micro // acc + 1, end_step, out.loss, out.extras, self.engine, env.tracker)
            metrics, mean_loss = {}, None  # the ranks' mean loss, computed (collectively) at log steps
            first = micro + 1 - acc == first_micro  # a compiled run's first step: its compile time is logged
            if info.step % t.log_every == 0 or info.done == end_step or (first and self.compiled):
                metrics = self._train_metrics(out, summary, getattr(batch, "position", None), first)
                mean_loss = metrics["train/loss"]
                summary.losses += _read_back(pending)
                bar.set_postfix(loss=f"{float(out.loss):.4f}", lr=f"{out.lr:.2e}")
            self._t_data = self._t_step = 0.0
            self._flops = 0
            reported = self._run_hooks(info, metrics, summary)
            if lines is not None:
                lines.update(info.done, metrics, show=mean_loss is not None)
            if env.rank == 0 and metrics and info.step > logged_until:
                env.tracker.log_metrics(metrics, info.step)
            if env.rank == 0 and (reported or info.done % t.checkpoint_every == 0):
                env.tracker.flush()  # a report follows, after which a scheduler may stop this trial
            if info.done % t.checkpoint_every == 0 or info.done == end_step:
                # every rank saves here: the loss reported is the ranks' mean, the value the tracker logs
                loss = mean_loss if mean_loss is not None else env.mean_across_ranks(float(out.loss))
                summary.last_checkpoint = env.sink.save(info.done, getattr(batch, "position", None),
                                                        {"train/loss": loss, **reported})
            elif reported:
                # report hooks run on every rank (a Ray report is collective), so the mean is too
                loss = env.mean_across_ranks(float(out.loss)) if mean_loss is None else mean_loss
                env.sink.report(info.done, {"step": info.done, "train/loss": loss, **reported})
            summary.final_step = info.done
            bar.update(1)
        bar.close()
        summary.losses += _read_back(pending)
        return summary

    def _note_restart(self, start_step: int) -> int:
        """A restarted run (restored from its checkpoint, or started over when the worker group was lost before
        Ray registered one) redoes steps an earlier attempt may have logged: those points stay and the redone
        steps are not logged again (one point per step; the redo computes the same values). Counts the
        restart as ``train/restarts``. Returns the last step already logged (-1: none)."""
        tracker = self.env.tracker
        last = tracker.last_point("train/loss")
        if last is None and not self.env.restored:
            return -1  # a fresh run
        restarts = tracker.last_point("train/restarts")
        count = (restarts[1] if restarts else 0) + 1
        tracker.log_metrics({"train/restarts": count}, start_step)
        if self.env.progress == "lines":
            sys.stdout.write(f"{self.env.name}: restart {count:g}, continuing from step {start_step}\n")
            sys.stdout.flush()
        return last[0] if last else -1

    def micro_step(self, batch, step: int) -> _Micro:
        """One micro-batch of optimizer step ``step`` (counted here, never taken from the batch): forward,
        backward, and the update at an accumulation boundary. What ``fit`` runs per batch and benchmarks time."""
        o, steps = self.cfg.optim, self.cfg.train.steps
        lr, wd = lr_at(step, o.lr, steps, o.schedule_scale), wd_at(step, o.weight_decay, steps, o.schedule_scale)
        amp = (torch.autocast(device_type=self.env.device.type, dtype=self.env.autocast_dtype)
               if self.env.autocast_dtype is not None else contextlib.nullcontext())
        with amp:
            loss, extras = self.task.loss(self.engine, batch, step)
        # the one host sync of a step: whether to update depends on it (collective: no rank updates then)
        if not self.engine.all_finite(loss):
            self.engine.skip()
            return _Micro(loss.detach(), None, lr, wd, extras, True)
        self.engine.backward(loss)
        grad_norm = self.engine.step(lr, wd)
        if grad_norm is not None:
            self.task.after_step(self.engine, step)
        return _Micro(loss.detach(), grad_norm, lr, wd, extras, False)

    def _count_nonfinite(self, out: _Micro, micro: int, summary: RunSummary) -> None:
        if not out.skipped:
            self._nonfinite_in_a_row = 0
            return
        summary.skipped_steps += 1
        self._nonfinite_in_a_row += 1
        log.warning("non-finite loss %s at micro-step %d: update skipped (%d in a row)", float(out.loss), micro,
                    self._nonfinite_in_a_row)
        if self._nonfinite_in_a_row >= self.cfg.train.max_nonfinite_steps:
            raise NonFiniteLoss(f"{self._nonfinite_in_a_row} non-finite losses in a row (last at micro-step {micro});"
                                " lower optim.lr.peak or check the data; train.max_nonfinite_steps sets the limit")

    def _train_metrics(self, out: _Micro, summary: RunSummary, position, first: bool) -> dict[str, float]:
        acc, elapsed = self.cfg.optim.grad_accumulation, max(self._t_step + self._t_data, 1e-9)
        # a compiled run's first step holds the compile: reported as such, not as a step time
        step_key = "perf/compile_s" if first and self.compiled else "perf/step_s"
        metrics = {"train/loss": self.env.mean_across_ranks(float(out.loss)), "train/lr": out.lr, "train/wd": out.wd,
                   **{k: float(v) for k, v in out.extras.items()}, "train/skipped_steps": summary.skipped_steps,
                   step_key: self._t_step / acc, "perf/data_wait_s": self._t_data / acc,
                   "perf/samples_per_s": self.task.samples_per_batch * acc / elapsed,
                   "data/skipped_videos": self.env.skipped_videos()}
        if position is not None:  # where this rank reads: (pass over the data, file in that pass's order)
            metrics["data/epoch"], metrics["data/file"] = position
        if out.grad_norm is not None and np.isfinite(grad_norm := float(out.grad_norm)):
            metrics["train/grad_norm"] = grad_norm
        if self._step_flops and not (first and self.compiled):
            metrics["perf/tflops"] = self._flops / max(self._t_step, 1e-9) / 1e12  # model FLOPs achieved
            if self.peak_tflops:
                metrics["perf/mfu"] = metrics["perf/tflops"] / self.peak_tflops
        if self.env.device.type == "cuda":
            metrics["perf/gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        return metrics

    def _run_hooks(self, info: StepInfo, metrics: dict, summary: RunSummary) -> dict[str, float]:
        """Due hooks in order; their metrics join the step's log line. Returns what is to be reported."""
        reported: dict[str, float] = {}
        for hook in self.hooks:
            if not hook.due(info.done, info.end) or not (hook.all_ranks or self.env.rank == 0):
                continue
            values = hook.fn(info) or {}
            if values:
                summary.monitors.append({"step": info.step, **values})
                metrics.update(values)
                if hook.report:
                    reported.update(values)
        return reported
