"""The JEPA objective: L1 between predicted and target features at the target tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vwm.models.predictor import gather_tokens


@torch.no_grad()
def target_features(target_encoder: torch.nn.Module, clips_BCTHW: torch.Tensor) -> torch.Tensor:
    """EMA encoder on the full clip, layer-normed without affine parameters, as V-JEPA's targets."""
    h_BND = target_encoder(clips_BCTHW)
    return F.layer_norm(h_BND, (h_BND.shape[-1],))


def jepa_loss(preds: list[torch.Tensor], target_BND: torch.Tensor,
              masks: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Mean over mask sets of the mean absolute error at that set's target tokens."""
    losses = [(pred_BKD - gather_tokens(target_BND, tgt_idx_BK)).abs().mean()
              for pred_BKD, (_, tgt_idx_BK) in zip(preds, masks)]
    return torch.stack(losses).mean()
