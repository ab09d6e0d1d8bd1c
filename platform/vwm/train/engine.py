"""Optimisation engines behind one interface, so the training step is written once.

``LocalEngine`` is plain PyTorch AdamW in one process; ``DeepSpeedEngine`` wraps a task's trainable module in
a DeepSpeed ZeRO engine (stage 0-3). This is the only module that imports deepspeed.

The interface the trainer and tasks use: ``engine(*inputs)`` (the module's forward), ``all_finite(loss)``,
``backward(loss)``, ``step(lr, wd)``, ``skip()``, ``gathered_params(submodule)`` (full parameters of a
submodule, gathered where ZeRO-3 partitions them), ``module_state()``, ``save(dir)`` / ``load(dir)``.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from vwm.config import DistConfig, OptimConfig


def param_groups(model: nn.Module) -> list[dict]:
    """AdamW groups: weight decay on matrices only; biases and norm gains (1-d tensors) are not decayed."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "apply_wd": True}, {"params": no_decay, "apply_wd": False, "weight_decay": 0.0}]


def _cpu_state(module: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def set_lr_wd(optimizer: torch.optim.Optimizer, lr: float, wd: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
        group["weight_decay"] = wd if group.get("apply_wd", True) else 0.0


class LocalEngine:
    """Single process: AdamW, gradient accumulation, global-norm clipping."""

    def __init__(self, model: nn.Module, cfg: OptimConfig, device: torch.device):
        self.module = model.to(device)
        self.cfg = cfg
        self.optimizer = torch.optim.AdamW(param_groups(model), lr=cfg.lr.start, betas=cfg.betas, eps=cfg.eps,
                                           fused=cfg.fused or None)
        self.micro = 0

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def all_finite(self, loss: torch.Tensor) -> bool:
        return bool(torch.isfinite(loss.detach()).all())

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.cfg.grad_accumulation).backward()

    def step(self, lr: float, wd: float) -> torch.Tensor | None:
        """Apply the update at an accumulation boundary; returns the gradient norm before clipping then (a
        0-d tensor: reading it is a host sync, left to the log steps)."""
        self.micro += 1
        if self.micro % self.cfg.grad_accumulation:
            return None
        set_lr_wd(self.optimizer, lr, wd)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        # foreach: one norm kernel per parameter list, not a Python loop over tensors (CPU included)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=self.cfg.fused)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def skip(self) -> None:
        self.micro += 1
        if self.micro % self.cfg.grad_accumulation == 0:
            self.optimizer.zero_grad(set_to_none=True)

    @contextlib.contextmanager
    def gathered_params(self, submodule: str):
        yield list(self.module.get_submodule(submodule).parameters())

    def module_state(self) -> dict:
        return _cpu_state(self.module)

    def save(self, directory: Path) -> None:
        torch.save({"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                    "micro": self.micro}, Path(directory) / "engine.pt")

    def load(self, directory: Path) -> None:
        state = torch.load(Path(directory) / "engine.pt", map_location="cpu", weights_only=True)
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.micro = state["micro"]


def deepspeed_config(optim: OptimConfig, dist_cfg: DistConfig, micro_batch: int, bf16: bool) -> dict:
    """The DeepSpeed JSON, generated from our typed config (never kept by hand)."""
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": optim.grad_accumulation,
        "gradient_clipping": optim.grad_clip,
        "zero_optimization": {"stage": dist_cfg.zero_stage},
        # torch's AdamW (fused kernel unless optim.fused is off): no fused_adam JIT build; the lr/wd schedule
        # overwrites the groups every step
        "optimizer": {"type": "AdamW", "params": {"lr": optim.lr.start, "betas": list(optim.betas),
                                                  "eps": optim.eps, "weight_decay": 0.0, "torch_adam": True,
                                                  **({"fused": True} if optim.fused else {})}},
        "bf16": {"enabled": bf16},
        "steps_per_print": 10**12,
        "wall_clock_breakdown": False,
    }


class DeepSpeedEngine:
    """A task's trainable module in one DeepSpeed engine; frozen and EMA parts stay outside it."""

    def __init__(self, model: nn.Module, optim: OptimConfig, dist_cfg: DistConfig, micro_batch: int,
                 bf16: bool, device: torch.device):
        import deepspeed

        self._deepspeed = deepspeed
        self.zero_stage = dist_cfg.zero_stage
        self.config = deepspeed_config(optim, dist_cfg, micro_batch, bf16)
        model.to(device)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, model_parameters=param_groups(model), config=self.config, dist_init_required=False)
        self.module = self.engine.module

    def __call__(self, *args, **kwargs):
        return self.engine(*args, **kwargs)

    def all_finite(self, loss: torch.Tensor) -> bool:
        # collective: one rank skipping alone would leave the others waiting in the gradient all-reduce
        flag = torch.tensor([float(torch.isfinite(loss.detach()).all())], device=loss.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)

    def step(self, lr: float, wd: float) -> float | None:
        boundary = self.engine.is_gradient_accumulation_boundary()
        if boundary:
            set_lr_wd(self.optimizer, lr, wd)
        self.engine.step()
        if not boundary:
            return None
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else math.nan

    def skip(self) -> None:
        self.engine.zero_grad()

    @contextlib.contextmanager
    def gathered_params(self, submodule: str):
        params = list(self.module.get_submodule(submodule).parameters())
        if self.zero_stage == 3:
            # every rank must enter: the gather is collective
            with self._deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                yield params
        else:
            yield params

    def module_state(self) -> dict:
        """The full module state on every rank (collective under ZeRO-3, where parameters are partitioned)."""
        if self.zero_stage == 3:
            with self._deepspeed.zero.GatheredParameters(list(self.module.parameters()), modifier_rank=None):
                return _cpu_state(self.module)
        return _cpu_state(self.module)

    def save(self, directory: Path) -> None:
        self.engine.save_checkpoint(str(directory), tag="engine")  # collective: every rank writes its shard

    def load(self, directory: Path) -> None:
        path, _ = self.engine.load_checkpoint(str(directory), tag="engine")
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed engine state under {directory}")
