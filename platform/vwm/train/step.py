"""The training step, shared by the single-process and the distributed loop (there is no second copy)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from vwm.config import OptimConfig
from vwm.data.transforms import normalize_clips
from vwm.masks.collate import Batch
from vwm.train.ema import update_target
from vwm.train.loss import jepa_loss, target_features
from vwm.train.schedules import ema_at, lr_at, wd_at


@dataclass
class StepResult:
    loss: float
    grad_norm: float | None  # None between accumulation boundaries
    lr: float
    wd: float
    momentum: float
    skipped: bool  # a non-finite loss on some rank: no rank applied an update
    target_BND: torch.Tensor  # layer-normed target features, kept for the collapse monitors


def train_step(engine, target: torch.nn.Module, batch: Batch, *, step: int, optim: OptimConfig, total_steps: int,
               device: torch.device, autocast_dtype: torch.dtype | None) -> StepResult:
    """One micro-batch of optimizer step ``step`` (counted by the loop, never taken from the batch):
    forward (target, context, predictor) -> L1 loss -> backward -> optimizer step at the accumulation
    boundary -> EMA update of the target from the (gathered) online encoder."""
    lr, wd = lr_at(step, optim.lr, total_steps), wd_at(step, optim.weight_decay, total_steps)
    momentum = ema_at(step, optim.ema, total_steps)
    clips_BCTHW = normalize_clips(batch.clips_BTHWC.to(device, non_blocking=True))
    masks = [(c.to(device, non_blocking=True), t.to(device, non_blocking=True)) for c, t in batch.masks]
    amp = (torch.autocast(device_type=device.type, dtype=autocast_dtype) if autocast_dtype is not None
           else contextlib.nullcontext())
    with amp:
        target_BND = target_features(target, clips_BCTHW)
        preds = engine(clips_BCTHW, masks)
        loss = jepa_loss(preds, target_BND, masks)
    if not engine.all_finite(loss):
        engine.skip()
        return StepResult(float(loss.detach()), None, lr, wd, momentum, True, target_BND)
    engine.backward(loss)
    grad_norm = engine.step(lr, wd)
    if grad_norm is not None:
        update_target(engine, target, momentum)
    return StepResult(float(loss.detach()), grad_norm, lr, wd, momentum, False, target_BND)
