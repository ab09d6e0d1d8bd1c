"""Model FLOPs of a training step, from shapes alone (no sync, no tracing): the matmuls and attention
products the step computes, 2 FLOPs per multiply-add, a backward pass costing twice its forward. Norms,
activations and the optimizer are left out, as MFU conventionally counts (PaLM, appendix B)."""

from __future__ import annotations

from vwm.config import ModelConfig


def blocks_fwd(n_q: int, n_kv: int, dim: int, depth: int, mlp_ratio: float) -> int:
    """``depth`` pre-norm blocks, one sample: ``n_q`` new tokens attending to ``n_kv`` (themselves included)."""
    hidden = int(dim * mlp_ratio)
    linear = 2 * n_q * dim * (3 * dim + dim + 2 * hidden)  # qkv, output projection, two MLP layers
    attention = 2 * 2 * n_q * n_kv * dim  # q k^T and the weighted sum of v, over all heads
    return depth * (linear + attention)


def patch_fwd(cfg: ModelConfig, n_patches: int) -> int:
    """The patch embedding of one clip. Its backward costs one forward, not two: pixels need no gradient."""
    return 2 * n_patches * cfg.dim * 3 * cfg.tubelet_size * cfg.patch_size ** 2


def vit_fwd(cfg: ModelConfig, n_tokens: int) -> int:
    """The encoder's blocks over ``n_tokens`` of a clip (all, or a context encoder's share)."""
    return blocks_fwd(n_tokens, n_tokens, cfg.dim, cfg.depth, cfg.mlp_ratio)


def jepa_step_flops(cfg: ModelConfig, n_patches: int, mask_sizes: list[tuple[int, int]], batch: int) -> int:
    """A V-JEPA step: per mask set (context tokens, target tokens) the context encoder and the predictor,
    forward and backward; the target encoder forward over every token."""
    p, patch = cfg.predictor, patch_fwd(cfg, n_patches)
    trained = 0
    for n_ctx, n_tgt in mask_sizes:
        predictor = (2 * n_ctx * cfg.dim * p.dim + 2 * n_tgt * p.dim * cfg.dim
                     + blocks_fwd(n_ctx + n_tgt, n_ctx + n_tgt, p.dim, p.depth, p.mlp_ratio))
        trained += 3 * (vit_fwd(cfg, n_ctx) + predictor) + 2 * patch
    return batch * (trained + vit_fwd(cfg, n_patches) + patch)


def ac_step_flops(enc: ModelConfig, enc_tokens: int, pred: dict, tokens_per_frame: int, frames: int,
                  rollout_steps: int, batch: int, online_encoder: bool) -> int:
    """An action-conditioned step: every frame encoded by the target encoder (forward; the online encoder's
    forward and backward too when it trains), the predictor over frames 0..T-2 under the block-causal mask
    (SDPA computes the whole masked product) and a rollout of ``rollout_steps`` with cached keys and values.
    ``pred``: the predictor's dim, depth, mlp_ratio and the encoder width it projects from and to."""
    P, d = tokens_per_frame, pred["dim"]
    n_feat = P - 2  # the action and state tokens carry no features
    io = 2 * n_feat * enc.dim * d * 2  # feature embedding in, projection out, per frame
    L = (frames - 1) * P
    teacher = blocks_fwd(L, L, d, pred["depth"], pred["mlp_ratio"]) + (frames - 1) * io
    roll = sum(blocks_fwd(P, (h + 1) * P, d, pred["depth"], pred["mlp_ratio"]) + io for h in range(rollout_steps))
    patch = patch_fwd(enc, enc_tokens)
    encode = frames * ((vit_fwd(enc, enc_tokens) + patch) + (3 * vit_fwd(enc, enc_tokens) + 2 * patch) * online_encoder)
    return batch * (3 * (teacher + roll) + encode)
