"""Transformer building blocks for video ViTs: tubelet patch embedding, 3D positions, attention, MLP.

Tokens are laid out t-major: token index = t * (H * W) + h * W + w over the (T, H, W) token grid.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def token_coords(index_BN: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
    """(t, h, w) coordinates of flat token indices: (B, N) -> (B, N, 3)."""
    _, gh, gw = grid
    t = index_BN // (gh * gw)
    rem = index_BN - t * (gh * gw)
    return torch.stack((t, rem // gw, rem % gw), dim=-1)


def sincos_1d(dim: int, pos_M: torch.Tensor) -> torch.Tensor:
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    angles_MD = pos_M.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat((angles_MD.sin(), angles_MD.cos()), dim=1)


def sincos_3d(dim: int, grid: tuple[int, int, int], uniform_power: bool = False) -> torch.Tensor:
    """V-JEPA's fixed 3D table (N, dim), channels of time, height and width concatenated in that order.

    By default time gets half the channels and height and width a quarter each. ``uniform_power`` (set in
    V-JEPA's and V-JEPA 2's configs) gives every axis 2 * ceil(dim / 6) channels, the same frequencies for
    each, and cuts the table to ``dim``: the last width channels are lost when 6 does not divide ``dim``.
    """
    gt, gh, gw = grid
    idx_N = torch.arange(gt * gh * gw)
    coords_N3 = token_coords(idx_N[None], grid)[0]
    if uniform_power:
        d_t = d_h = d_w = 2 * math.ceil(dim / 6)
    else:
        d_t, d_h = dim // 2, dim // 4
        d_w = dim - d_t - d_h
    table = torch.cat([sincos_1d(d_t, coords_N3[:, 0]), sincos_1d(d_h, coords_N3[:, 1]),
                       sincos_1d(d_w, coords_N3[:, 2])], dim=1)
    return table[:, :dim].float()


class Rope3D:
    """Rotary embeddings over (t, h, w): each axis rotates an equal, even share of every head's channels.

    V-JEPA 2 splits the head dimension the same way; we apply the standard interleaved-pair rotation
    (V-JEPA 2's released code duplicates frequencies across a pair, a bug it keeps for weight compatibility).
    """

    def __init__(self, head_dim: int, grid: tuple[int, int, int], base: float = 10000.0):
        self.grid = grid
        self.axis_dim = 2 * ((head_dim // 3) // 2)
        self.inv_freq = 1.0 / base ** (torch.arange(self.axis_dim // 2, dtype=torch.float32) / (self.axis_dim / 2))

    def tables(self, index_BN: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin tables (B, 1, N, 3 * axis_dim), computed once per forward and shared by all blocks."""
        coords_BN3 = token_coords(index_BN, self.grid).to(torch.float32)
        freqs = coords_BN3[..., None] * self.inv_freq.to(index_BN.device)  # B N 3 F
        angles = freqs.repeat_interleave(2, dim=-1).flatten(-2)  # B N 3*axis_dim, pairs share a frequency
        return angles.cos()[:, None].to(dtype), angles.sin()[:, None].to(dtype)

    @staticmethod
    def apply(x_BHND: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        r = cos.shape[-1]
        rot, rest = x_BHND[..., :r], x_BHND[..., r:]
        pairs = rot.unflatten(-1, (-1, 2))
        swapped = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        return torch.cat((rot * cos + swapped * sin, rest), dim=-1)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, qkv_bias: bool = True):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x_BND: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                attn_mask: torch.Tensor | None = None, cache: dict | None = None) -> torch.Tensor:
        """``cache``: keys and values of earlier tokens (a dict this call extends), for decoding that adds
        tokens which may see every earlier one: x holds only the new tokens, ``rope`` their positions."""
        B, N, D = x_BND.shape
        q, k, v = self.qkv(x_BND).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        if rope is not None:
            q, k = Rope3D.apply(q, *rope), Rope3D.apply(k, *rope)
        if cache is not None:
            if "k" in cache:
                k, v = torch.cat((cache["k"], k), dim=2), torch.cat((cache["v"], v), dim=2)
            cache["k"], cache["v"] = k, v
        out_BHND = attend(q, k, v, attn_mask)
        return self.proj(out_BHND.transpose(1, 2).reshape(B, N, D))


# Query x key counts up to which a compiled graph attends by broadcasting instead of through SDPA: the
# planner's pooled rollouts attend 3-6 new tokens to 3-30 keys over 300 candidates x heads, where SDPA's
# per-head set-up dominates (CPU, 2026-12-05: 3x15 keys 2.6x faster, 6x30 1.8x; 12x60 already slower).
SMALL_ATTENTION = 256


def attend(q_BHND: torch.Tensor, k_BHMD: torch.Tensor, v_BHMD: torch.Tensor,
           attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention; ``attn_mask`` boolean, True where allowed. Under ``torch.compile`` tiny problems
    become one fused broadcast-and-reduce kernel; otherwise SDPA (flash / memory-efficient kernels)."""
    if torch.compiler.is_compiling() and q_BHND.shape[-2] * k_BHMD.shape[-2] <= SMALL_ATTENTION:
        scores_BHNM = (q_BHND[..., :, None, :] * k_BHMD[..., None, :, :]).sum(-1) * q_BHND.shape[-1] ** -0.5
        if attn_mask is not None:
            scores_BHNM = scores_BHNM.masked_fill(~attn_mask, float("-inf"))
        return (scores_BHNM.softmax(-1)[..., None] * v_BHMD[..., None, :, :]).sum(-2)
    return F.scaled_dot_product_attention(q_BHND, k_BHMD, v_BHMD, attn_mask=attn_mask)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, qkv_bias: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x_BND, rope=None, attn_mask=None, cache: dict | None = None):
        x_BND = x_BND + self.attn(self.norm1(x_BND), rope, attn_mask, cache)
        return x_BND + self.mlp(self.norm2(x_BND))


class PatchEmbed3D(nn.Module):
    """Tubelets of (tubelet x patch x patch) pixels -> one token each, through a strided Conv3d."""

    def __init__(self, dim: int, patch_size: int, tubelet_size: int, in_chans: int = 3):
        super().__init__()
        k = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, dim, kernel_size=k, stride=k)

    def forward(self, clips_BCTHW: torch.Tensor) -> torch.Tensor:
        return self.proj(clips_BCTHW).flatten(2).transpose(1, 2)


def run_blocks(blocks: nn.ModuleList, x_BND, rope=None, attn_mask=None, checkpointing: bool = False):
    for blk in blocks:
        if checkpointing and x_BND.requires_grad:
            x_BND = torch.utils.checkpoint.checkpoint(blk, x_BND, rope, attn_mask, use_reentrant=False)
        else:
            x_BND = blk(x_BND, rope, attn_mask)
    return x_BND


def init_vit_weights(module: nn.Module, blocks: nn.ModuleList, std: float) -> None:
    """Truncated-normal linears, unit norms, and V-JEPA's depth rescaling of residual projections."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv3d):
            nn.init.trunc_normal_(m.weight, std=std)
            nn.init.zeros_(m.bias)
    with torch.no_grad():
        for layer_id, blk in enumerate(blocks, start=1):
            blk.attn.proj.weight.div_(math.sqrt(2.0 * layer_id))
            blk.mlp.fc2.weight.div_(math.sqrt(2.0 * layer_id))
