"""Optimisation engines behind one small interface, so the training step is written once.

``LocalEngine`` is plain PyTorch AdamW for single-process runs. The DeepSpeed engine (ZeRO) for
distributed runs lives here too: this is the only module that imports deepspeed.
"""

from __future__ import annotations

import torch
from torch import nn

from vwm.config import OptimConfig


def param_groups(model: nn.Module) -> list[dict]:
    """AdamW groups: weight decay on matrices only; biases and norm gains (1-d tensors) are not decayed."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "apply_wd": True}, {"params": no_decay, "apply_wd": False, "weight_decay": 0.0}]


def set_lr_wd(optimizer: torch.optim.Optimizer, lr: float, wd: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
        group["weight_decay"] = wd if group.get("apply_wd", True) else 0.0


class LocalEngine:
    """Single-process engine: AdamW, schedules applied per step, global-norm gradient clipping."""

    def __init__(self, model: nn.Module, cfg: OptimConfig, device: torch.device):
        self.model = model.to(device)
        self.cfg = cfg
        self.optimizer = torch.optim.AdamW(param_groups(model), lr=cfg.lr.start, betas=cfg.betas, eps=cfg.eps)

    def __call__(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def backward_and_step(self, loss: torch.Tensor, lr: float, wd: float) -> float:
        """Backward, clip, step; returns the gradient norm before clipping."""
        set_lr_wd(self.optimizer, lr, wd)
        loss.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def skip_step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def online_encoder_params(self) -> list[torch.Tensor]:
        return list(self.model.encoder.parameters())

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
