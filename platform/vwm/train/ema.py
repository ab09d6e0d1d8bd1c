"""EMA targets: a copy of a trained submodule, updated from it by a moving average, never by gradients."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def ema_update(target: nn.Module, online_params: list[torch.Tensor], momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * online, parameter by parameter."""
    target_params = list(target.parameters())
    if len(target_params) != len(online_params):
        raise RuntimeError(f"EMA target has {len(target_params)} tensors, online encoder {len(online_params)}")
    online = [p.detach().to(t.dtype) for t, p in zip(target_params, online_params)]
    torch._foreach_mul_(target_params, momentum)
    torch._foreach_add_(target_params, online, alpha=1.0 - momentum)


@torch.no_grad()
def checksum(module: nn.Module | list[torch.Tensor]) -> torch.Tensor:
    """A cheap float64 fingerprint of every parameter (sum and position-weighted sum), for rank comparisons."""
    total = torch.zeros(2, dtype=torch.float64)
    for p in module.parameters() if isinstance(module, nn.Module) else module:
        flat = p.detach().flatten().to(torch.float64).cpu()
        weights = torch.arange(1, flat.numel() + 1, dtype=torch.float64).remainder_(9973)
        total += torch.stack((flat.sum(), (flat * weights).sum()))
    return total


@torch.no_grad()
def update_target(engine, target: nn.Module, momentum: float, source: str) -> None:
    """EMA step from the engine's ``source`` submodule, gathered first where ZeRO-3 has partitioned it."""
    with engine.gathered_params(source) as online:
        ema_update(target, online, momentum)


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


@torch.no_grad()
def broadcast_from_rank0(module: nn.Module) -> None:
    """Every rank's target starts as rank 0's copy, whatever its own initialisation was."""
    if not _distributed():
        return
    for t in list(module.parameters()) + list(module.buffers()):
        torch.distributed.broadcast(t.data, src=0)


class ReplicaMismatch(RuntimeError):
    """The EMA target differs between ranks: the run cannot go on with silently diverged targets."""


@torch.no_grad()
def assert_identical_across_ranks(target: nn.Module, step: int, engine=None, source: str = "") -> torch.Tensor:
    """All-gather checksums of the EMA target (and of the engine's ``source`` submodule, when ``engine`` is
    given) and fail loudly if any rank differs; returns this rank's target checksum."""
    local = checksum(target)
    if not _distributed():
        return local
    online = torch.zeros(2, dtype=torch.float64)
    if engine is not None:
        with engine.gathered_params(source) as params:
            online = checksum(params)
    mine = torch.cat((local, online))
    device = next(target.parameters()).device
    gathered = [torch.zeros_like(mine, device=device) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(gathered, mine.to(device))
    values = [g.cpu() for g in gathered]
    if any(not torch.equal(values[0][:2], v[:2]) for v in values[1:]):
        online_same = all(torch.equal(values[0][2:], v[2:]) for v in values[1:])
        raise ReplicaMismatch(
            f"EMA target encoder differs between ranks at step {step}: checksums {[v[:2].tolist() for v in values]}"
            f" (online encoders {'agree' if online_same else 'differ too: ' + str([v[2:].tolist() for v in values])});"
            " stopping instead of training on diverged targets")
    return local


class EMATarget:
    """A task's EMA target: a frozen module that follows the engine's ``source`` submodule by a moving average
    whose momentum is a function of the step (``optim.ema``, laid out like the other schedules). Broadcast from
    rank 0 at the start, so every rank's copy starts equal and stays equal."""

    def __init__(self, module: nn.Module, source: str, optim, run_steps: int):
        self.module, self.source, self.optim, self.run_steps = module, source, optim, run_steps
        self.module.requires_grad_(False)
        broadcast_from_rank0(self.module)

    def momentum(self, step: int) -> float:
        from vwm.train.schedules import ema_at

        return ema_at(step, self.optim.ema, self.run_steps, self.optim.schedule_scale)

    def update(self, engine, step: int) -> None:
        update_target(engine, self.module, self.momentum(step), self.source)

    def check_replicas(self, step: int, engine) -> None:
        assert_identical_across_ranks(self.module, step, engine, self.source)

    def state_dict(self) -> dict:
        return {"target": self.module.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["target"])


def submodule_state(module_state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries of one submodule (``predictor.``) of an engine's full state, without the prefix."""
    return {k[len(prefix) + 1:]: v for k, v in module_state.items() if k.startswith(prefix + ".")}
