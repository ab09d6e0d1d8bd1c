"""The EMA target encoder: updated from the online encoder, never by gradients."""

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
def checksum(module: nn.Module) -> torch.Tensor:
    """A cheap float64 fingerprint of every parameter (sum and position-weighted sum), for rank comparisons."""
    total = torch.zeros(2, dtype=torch.float64)
    for p in module.parameters():
        flat = p.detach().flatten().to(torch.float64).cpu()
        weights = torch.arange(1, flat.numel() + 1, dtype=torch.float64).remainder_(9973)
        total += torch.stack((flat.sum(), (flat * weights).sum()))
    return total
