"""The action-conditioned predictor of V-JEPA 2-AC: next-frame features from the current ones and an action.

Sequence layout, frame-major: for every frame t of the context, one action token (the action applied at
t), one state token (the state at t), then the frame's feature tokens. Attention is block-causal: a token
of frame t sees every token of frames <= t (V-JEPA 2's ``build_action_block_causal_attention_mask``). The
output at frame t's feature tokens is the prediction of frame t + 1's features (projected back to the
encoder width); the output at its state token, read by a linear head, predicts state t + 1, so rollouts
need only the first state (the reference feeds known future poses instead; a planner has none). With
``residual`` (our option, not the reference's) both outputs are changes added to frame t's features and
state: an untrained predictor starts at the copy-the-last-frame baseline instead of far from it, which
matters where most of a frame's tokens do not move (a small agent in a static scene).

Positions follow the encoder's choice: RoPE rotates the time channels of action and state tokens and all
three axes of feature tokens (as the reference); sin-cos adds a time embedding to action and state tokens
and the 3D table to feature tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from vwm.models.layers import Block, Rope3D, init_vit_weights, run_blocks, sincos_1d, sincos_3d

COND_TOKENS = 2  # action, state


def block_causal_mask(frames: int, tokens_per_frame: int, device=None) -> torch.Tensor:
    """(L, L) boolean, True where attention is allowed: query frame >= key frame, L = frames * tokens."""
    frame_L = torch.arange(frames, device=device).repeat_interleave(tokens_per_frame)
    return frame_L[:, None] >= frame_L[None, :]


class ACPredictor(nn.Module):
    def __init__(self, *, enc_dim: int, dim: int, depth: int, heads: int, mlp_ratio: float, grid_hw: tuple[int, int],
                 max_frames: int, action_dim: int, state_dim: int, pos_embed: str = "sincos", qkv_bias: bool = True,
                 init_std: float = 0.02, residual: bool = False):
        super().__init__()
        self.residual = residual
        self.grid_hw, self.max_frames = tuple(grid_hw), max_frames
        self.tokens_per_frame = COND_TOKENS + grid_hw[0] * grid_hw[1]
        self.embed = nn.Linear(enc_dim, dim)
        self.action_embed = nn.Linear(action_dim, dim)
        self.state_embed = nn.Linear(state_dim, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, qkv_bias) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.proj = nn.Linear(dim, enc_dim)
        self.state_head = nn.Linear(dim, state_dim)
        grid = (max_frames, *grid_hw)
        self.rope = Rope3D(dim // heads, grid) if pos_embed == "rope" else None
        if self.rope is None:
            pos = torch.cat((sincos_1d(dim, torch.arange(max_frames))[:, None].expand(-1, COND_TOKENS, -1),
                             sincos_3d(dim, grid).view(max_frames, -1, dim)), dim=1)
            self.register_buffer("pos_TPD", pos.float(), persistent=False)  # fixed table: kept out of checkpoints
        else:
            self.pos_TPD = None
        self.register_buffer("mask_LL", block_causal_mask(max_frames, self.tokens_per_frame), persistent=False)
        init_vit_weights(self, self.blocks, init_std)
        if residual:  # zero changes at first: an exact copy of frame t, improved on from the first step
            for head in (self.proj, self.state_head):
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)

    def _rope_tables(self, frames: int, dtype: torch.dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE tables for the frame-major sequence: condition tokens rotate only their time channels."""
        h, w = self.grid_hw
        index_TN = torch.arange(frames * h * w, device=device).view(frames, h * w)
        cos_feat, sin_feat = self.rope.tables(index_TN.reshape(1, -1), torch.float32)  # 1, 1, T*N, R
        cos_feat, sin_feat = cos_feat.view(frames, h * w, -1), sin_feat.view(frames, h * w, -1)
        cos_cond, sin_cond = self.rope.tables(index_TN[:, :1].reshape(1, -1), torch.float32)  # (t, 0, 0)
        cos_cond, sin_cond = cos_cond.view(frames, 1, -1).clone(), sin_cond.view(frames, 1, -1).clone()
        axis = self.rope.axis_dim
        cos_cond[..., axis:], sin_cond[..., axis:] = 1.0, 0.0  # height and width channels not rotated
        cos = torch.cat((cos_cond.expand(-1, COND_TOKENS, -1), cos_feat), dim=1).reshape(1, 1, -1, cos_feat.shape[-1])
        sin = torch.cat((sin_cond.expand(-1, COND_TOKENS, -1), sin_feat), dim=1).reshape(1, 1, -1, sin_feat.shape[-1])
        return cos.to(dtype), sin.to(dtype)

    def step(self, z_BND: torch.Tensor, action_BA: torch.Tensor, state_BS: torch.Tensor, t: int,
             caches: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """``forward``'s output for frame t alone, given frames < t through ``caches`` (one dict per block,
        extended here): under the block-causal mask frame t sees every earlier token, and earlier tokens
        never see it, so their keys and values are what they were. A rollout of H steps then costs H
        frames of tokens instead of 1 + 2 + ... + H."""
        if t >= self.max_frames:
            raise ValueError(f"frame {t} of the context; this predictor was built for at most {self.max_frames}")
        B = z_BND.shape[0]
        x_BPd = torch.cat((self.action_embed(action_BA)[:, None], self.state_embed(state_BS)[:, None],
                           self.embed(z_BND)), dim=1)
        P = self.tokens_per_frame
        if self.pos_TPD is not None:
            x_BPd = x_BPd + self.pos_TPD[t].to(x_BPd.dtype)
        rope = None
        if self.rope is not None:
            cos, sin = self._rope_tables(t + 1, x_BPd.dtype, x_BPd.device)
            rope = (cos[..., -P:, :], sin[..., -P:, :])
        for blk, cache in zip(self.blocks, caches):
            x_BPd = blk(x_BPd, rope, None, cache)
        x_BPd = self.norm(x_BPd).view(B, P, -1)
        out_BND, next_BS = self.proj(x_BPd[:, COND_TOKENS:]), self.state_head(x_BPd[:, 1])
        if self.residual:
            out_BND, next_BS = out_BND + z_BND, next_BS + state_BS
        return out_BND, next_BS

    def forward(self, z_BTND: torch.Tensor, actions_BTA: torch.Tensor,
                states_BTS: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames 0..T-1 with their actions and states -> predicted features (B, T, N, D_enc) and states
        (B, T, S) of frames 1..T."""
        B, T, N, _ = z_BTND.shape
        if T > self.max_frames:
            raise ValueError(f"{T} frames in the context; this predictor was built for at most {self.max_frames}")
        x_BTPd = torch.cat((self.action_embed(actions_BTA)[:, :, None], self.state_embed(states_BTS)[:, :, None],
                            self.embed(z_BTND)), dim=2)
        if self.pos_TPD is not None:
            x_BTPd = x_BTPd + self.pos_TPD[:T].to(x_BTPd.dtype)
        x_BLd = x_BTPd.flatten(1, 2)
        rope = self._rope_tables(T, x_BLd.dtype, x_BLd.device) if self.rope is not None else None
        L = x_BLd.shape[1]
        x_BLd = run_blocks(self.blocks, x_BLd, rope, attn_mask=self.mask_LL[:L, :L])
        x_BTPd = self.norm(x_BLd).view(B, T, self.tokens_per_frame, -1)
        out_BTND, state_BTS = self.proj(x_BTPd[:, :, COND_TOKENS:]), self.state_head(x_BTPd[:, :, 1])
        if self.residual:  # a change of the current frame's features and state; starts as a copy of them
            out_BTND, state_BTS = out_BTND + z_BTND, state_BTS + states_BTS
        return out_BTND, state_BTS
