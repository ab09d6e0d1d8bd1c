"""The trainable JEPA pair (context encoder + predictor) and the construction of encoder and target."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from vwm.config import ModelConfig
from vwm.models.predictor import Predictor
from vwm.models.vit import VisionTransformer, token_grid


class JEPA(nn.Module):
    """Context encoder and predictor in one module, so one optimizer / DeepSpeed engine owns both."""

    def __init__(self, cfg: ModelConfig, frames: int, crop: int, num_mask_sets: int):
        super().__init__()
        self.encoder = VisionTransformer(cfg, frames, crop)
        self.predictor = Predictor(cfg, token_grid(cfg, frames, crop), num_mask_sets)

    def forward(self, clips_BCTHW: torch.Tensor, masks: list[tuple[torch.Tensor, torch.Tensor]],
                with_context: bool = False):
        """One prediction per mask set: the context encoder runs once per set on that set's context.
        ``with_context``: also the context features of every set, for a loss term on the encoder."""
        preds, contexts = [], []
        for i, (ctx_idx_BN, tgt_idx_BK) in enumerate(masks):
            ctx_BND = self.encoder(clips_BCTHW, ctx_idx_BN)
            preds.append(self.predictor(ctx_BND, ctx_idx_BN, tgt_idx_BK, i))
            contexts.append(ctx_BND)
        return (preds, contexts) if with_context else preds


def build_models(cfg: ModelConfig, frames: int, crop: int, num_mask_sets: int) -> tuple[JEPA, VisionTransformer]:
    """The trainable pair and a frozen copy of its encoder to serve as the EMA target."""
    jepa = JEPA(cfg, frames, crop, num_mask_sets)
    target = copy.deepcopy(jepa.encoder)
    target.requires_grad_(False)
    return jepa, target


@torch.no_grad()
def target_features(target_encoder: nn.Module, clips_BCTHW: torch.Tensor) -> torch.Tensor:
    """EMA encoder on the full clip, layer-normed without affine parameters, as V-JEPA's targets."""
    h_BND = target_encoder(clips_BCTHW)
    return F.layer_norm(h_BND, (h_BND.shape[-1],))


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
