"""JEPA predictor: a narrower ViT over context tokens plus learned mask tokens at the target positions."""

from __future__ import annotations

import torch
from torch import nn

from vwm.config import ModelConfig
from vwm.models.layers import Block, Rope3D, init_vit_weights, run_blocks, sincos_3d


def gather_tokens(x_BND: torch.Tensor, index_BK: torch.Tensor) -> torch.Tensor:
    return torch.gather(x_BND, 1, index_BK[..., None].expand(-1, -1, x_BND.shape[-1]))


class Predictor(nn.Module):
    def __init__(self, cfg: ModelConfig, grid: tuple[int, int, int], num_mask_sets: int):
        super().__init__()
        p = cfg.predictor
        self.grid = grid
        self.checkpointing = cfg.activation_checkpointing
        self.embed = nn.Linear(cfg.dim, p.dim)
        # zero-initialised as in V-JEPA. V-JEPA learns one token per mask set; V-JEPA 2 indexes its tokens by
        # clip-length group, not by mask set, so with one clip length every set shares token 0
        self.shared_mask_token = p.shared_mask_token
        self.mask_tokens = nn.Parameter(torch.zeros(1 if p.shared_mask_token else num_mask_sets, p.dim))
        self.rope = Rope3D(p.dim // p.heads, grid) if cfg.pos_embed == "rope" else None
        pos_ND = sincos_3d(p.dim, grid, cfg.sincos_uniform_power) if self.rope is None else None
        self.register_buffer("pos_ND", pos_ND, persistent=False)
        self.blocks = nn.ModuleList(Block(p.dim, p.heads, p.mlp_ratio, cfg.qkv_bias) for _ in range(p.depth))
        self.norm = nn.LayerNorm(p.dim, eps=1e-6)
        self.proj = nn.Linear(p.dim, cfg.dim)
        init_vit_weights(self, self.blocks, cfg.init_std)

    def forward(self, ctx_BND: torch.Tensor, ctx_idx_BN: torch.Tensor, tgt_idx_BK: torch.Tensor,
                mask_set: int) -> torch.Tensor:
        """Predicted encoder features (B, K, D_encoder) at the K target positions."""
        B, K = tgt_idx_BK.shape
        ctx_BNP = self.embed(ctx_BND)
        token_P = self.mask_tokens[0 if self.shared_mask_token else mask_set]
        tgt_BKP = token_P.to(ctx_BNP.dtype).expand(B, K, -1)
        if self.pos_ND is not None:
            pos_BNP = self.pos_ND.to(ctx_BNP.dtype).expand(B, -1, -1)
            ctx_BNP = ctx_BNP + gather_tokens(pos_BNP, ctx_idx_BN)
            tgt_BKP = tgt_BKP + gather_tokens(pos_BNP, tgt_idx_BK)
        x = torch.cat((ctx_BNP, tgt_BKP), dim=1)
        rope = None
        if self.rope is not None:
            rope = self.rope.tables(torch.cat((ctx_idx_BN, tgt_idx_BK), dim=1), x.dtype)
        x = run_blocks(self.blocks, x, rope, checkpointing=self.checkpointing)
        return self.proj(self.norm(x[:, -K:]))
