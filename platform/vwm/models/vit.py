"""Video ViT encoder: tubelet embedding, 3D sin-cos or RoPE positions, pre-norm blocks."""

from __future__ import annotations

import torch
from torch import nn

from vwm.config import ModelConfig
from vwm.models.layers import Block, PatchEmbed3D, Rope3D, init_vit_weights, run_blocks, sincos_3d


def token_grid(cfg: ModelConfig, frames: int, crop: int) -> tuple[int, int, int]:
    return frames // cfg.tubelet_size, crop // cfg.patch_size, crop // cfg.patch_size


class VisionTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig, frames: int, crop: int):
        super().__init__()
        self.grid = token_grid(cfg, frames, crop)
        self.num_tokens = self.grid[0] * self.grid[1] * self.grid[2]
        self.dim = cfg.dim
        self.checkpointing = cfg.activation_checkpointing
        self.patch_embed = PatchEmbed3D(cfg.dim, cfg.patch_size, cfg.tubelet_size)
        self.rope = Rope3D(cfg.dim // cfg.heads, self.grid) if cfg.pos_embed == "rope" else None
        # a fixed table, not a parameter: kept out of optimizer state and checkpoints
        pos_ND = sincos_3d(cfg.dim, self.grid, cfg.sincos_uniform_power) if self.rope is None else None
        self.register_buffer("pos_ND", pos_ND, persistent=False)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.heads, cfg.mlp_ratio, cfg.qkv_bias) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)
        init_vit_weights(self, self.blocks, cfg.init_std)

    def forward(self, clips_BCTHW: torch.Tensor, keep_BN: torch.Tensor | None = None) -> torch.Tensor:
        """Features of every token, or only of the tokens listed in ``keep_BN`` (context encoding)."""
        x_BND = self.patch_embed(clips_BCTHW)
        B = x_BND.shape[0]
        if self.pos_ND is not None:
            x_BND = x_BND + self.pos_ND.to(x_BND.dtype)
        if keep_BN is not None:
            x_BND = torch.gather(x_BND, 1, keep_BN[..., None].expand(-1, -1, x_BND.shape[-1]))
        rope = None
        if self.rope is not None:
            index_BN = keep_BN if keep_BN is not None else torch.arange(
                self.num_tokens, device=x_BND.device).expand(B, -1)
            rope = self.rope.tables(index_BN, x_BND.dtype)
        x_BND = run_blocks(self.blocks, x_BND, rope, checkpointing=self.checkpointing)
        return self.norm(x_BND)
