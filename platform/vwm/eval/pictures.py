"""Pictures of what a V-JEPA model sees and learns: masks drawn on clips, PCA colourings of token features,
and helpers to lay clips side by side, tile them and write them as mp4.

Token order everywhere is the patch embedding's: (t, h, w) flattened row-major, so token ``(ti, hi, wi)`` is
index ``(ti * h + hi) * w + wi`` and covers frames ``[ti*tubelet, (ti+1)*tubelet)`` and pixels
``[hi*p, (hi+1)*p) x [wi*p, (wi+1)*p)``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

Grid = tuple[int, int, int]

TARGET_RGB = (255, 0, 0)
ALPHA = 0.5
PCA_PERCENTILES = (1.0, 99.0)

# per-token states in the overlay; "dropped" tokens are neither context nor target: sample_mask_set cuts
# every sample to the batch's minimum counts, so some hidden tokens are not predicted either
_CONTEXT, _TARGET, _DROPPED = 0, 1, 2


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _token_membership(mask, batch: int, num_tokens: int) -> np.ndarray:
    """(B, N) bool from either (B, K) token indices or a (B, N) boolean mask."""
    m = _numpy(mask)
    if m.ndim == 1:  # one index list shared by the whole batch
        m = np.broadcast_to(m, (batch, m.shape[0]))
    if m.shape[0] != batch:
        raise ValueError(f"mask has {m.shape[0]} rows for a batch of {batch}")
    if m.dtype == np.bool_:
        if m.shape[1] != num_tokens:
            raise ValueError(f"boolean mask has {m.shape[1]} tokens, the grid {num_tokens}")
        return m.copy()
    idx = m.astype(np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= num_tokens):
        raise ValueError(f"token indices outside [0, {num_tokens})")
    out = np.zeros((batch, num_tokens), dtype=bool)
    np.put_along_axis(out, idx, True, axis=1)
    return out


def _check_clips(clips_BTHWC: np.ndarray) -> np.ndarray:
    clips_BTHWC = _numpy(clips_BTHWC)
    if clips_BTHWC.ndim != 5 or clips_BTHWC.shape[-1] != 3 or clips_BTHWC.dtype != np.uint8:
        raise ValueError(f"expected uint8 (B, T, H, W, 3) clips, got {clips_BTHWC.dtype} {clips_BTHWC.shape}")
    return clips_BTHWC


def mask_overlay_frames(clips_BTHWC: np.ndarray, context_BK, target_BK, grid: Grid, patch_size: int,
                        tubelet_size: int, alpha: float = ALPHA) -> np.ndarray:
    """The clips with one mask set drawn on: targets tinted red, tokens hidden but not predicted darkened,
    context (and pixels no token covers) untouched.

    ``context_BK`` / ``target_BK`` are a ``Batch.masks`` entry (token indices, (B, K)) or (B, N) booleans;
    ``context_BK=None`` treats every non-target token as context.
    """
    clips_BTHWC = _check_clips(clips_BTHWC)
    B, T, H, W, _ = clips_BTHWC.shape
    gt, gh, gw = grid
    covered_t, covered_h, covered_w = gt * tubelet_size, gh * patch_size, gw * patch_size
    if covered_t > T or covered_h > H or covered_w > W:
        raise ValueError(f"grid {grid} with patch {patch_size}, tubelet {tubelet_size} covers "
                         f"{covered_t}x{covered_h}x{covered_w}, more than the clips' {T}x{H}x{W}")
    n = gt * gh * gw
    target_BN = _token_membership(target_BK, B, n)
    context_BN = ~target_BN if context_BK is None else _token_membership(context_BK, B, n) & ~target_BN
    state_BN = np.full((B, n), _DROPPED, dtype=np.uint8)
    state_BN[context_BN] = _CONTEXT
    state_BN[target_BN] = _TARGET

    state_Btthw = state_BN.reshape(B, gt, gh, gw)
    state_BTHW = np.full((B, T, H, W), _CONTEXT, dtype=np.uint8)
    state_BTHW[:, :covered_t, :covered_h, :covered_w] = (
        state_Btthw.repeat(tubelet_size, 1).repeat(patch_size, 2).repeat(patch_size, 3))

    out_BTHWC = clips_BTHWC.astype(np.float32)
    target_px = state_BTHW == _TARGET
    dropped_px = state_BTHW == _DROPPED
    out_BTHWC[target_px] = (1 - alpha) * out_BTHWC[target_px] + alpha * np.asarray(TARGET_RGB, np.float32)
    out_BTHWC[dropped_px] *= 1 - alpha
    return np.clip(np.rint(out_BTHWC), 0, 255).astype(np.uint8)


def pca_components(features_MD: torch.Tensor, k: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and the top-k principal directions (D, k), each signed so its largest-magnitude loading is
    positive: SVD leaves signs arbitrary, and a flipped sign would swap a picture's colours between runs."""
    mean_D = features_MD.mean(0)
    _, _, vh_kD = torch.linalg.svd(features_MD - mean_D, full_matrices=False)
    dirs_Dk = vh_kD[:k].T
    if dirs_Dk.shape[1] < k:  # fewer feature dimensions (or tokens) than colours: the rest stay blank
        dirs_Dk = torch.cat((dirs_Dk, dirs_Dk.new_zeros(dirs_Dk.shape[0], k - dirs_Dk.shape[1])), dim=1)
    largest_k = dirs_Dk.abs().argmax(0)
    signs_k = torch.sign(dirs_Dk[largest_k, torch.arange(k)])
    signs_k[signs_k == 0] = 1
    return mean_D, dirs_Dk * signs_k


def _robust_uint8(values_MK: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    lo_K, hi_K = np.percentile(values_MK, percentiles, axis=0)
    span_K = hi_K - lo_K
    # a component with no spread (constant features, D < 3) has nothing to show: mid grey, not noise blown up
    flat_K = span_K <= 1e-12 * np.maximum(np.abs(hi_K), 1.0)
    scaled_MK = (values_MK - lo_K) / np.where(flat_K, 1.0, span_K)
    scaled_MK[:, flat_K] = 0.5
    return np.rint(np.clip(scaled_MK, 0.0, 1.0) * 255).astype(np.uint8)


def pca_feature_frames(features_BND, grid: Grid, size: int, tubelet_size: int,
                       percentiles: tuple[float, float] = PCA_PERCENTILES) -> np.ndarray:
    """Token features as RGB video, (B, t*tubelet, size, size, 3) uint8: the first three principal components
    of all tokens of all clips (one fit, so colours compare across clips), each stretched between its
    percentiles, upsampled by nearest neighbour."""
    gt, gh, gw = grid
    feats = features_BND if isinstance(features_BND, torch.Tensor) else torch.as_tensor(np.asarray(features_BND))
    if feats.ndim != 3 or feats.shape[1] != gt * gh * gw:
        raise ValueError(f"expected (B, {gt * gh * gw}, D) features for grid {grid}, got {tuple(feats.shape)}")
    B, N, D = feats.shape
    # float64 on the CPU: bf16/fp16 SVD is unsupported or too coarse, and one device keeps colours reproducible
    feats_MD = feats.detach().to("cpu", torch.float64).reshape(B * N, D)
    mean_D, dirs_D3 = pca_components(feats_MD, 3)
    proj_M3 = ((feats_MD - mean_D) @ dirs_D3).numpy()
    rgb_Btthw3 = _robust_uint8(proj_M3, percentiles).reshape(B, gt, gh, gw, 3)
    rows = (np.arange(size) * gh) // size
    cols = (np.arange(size) * gw) // size
    rgb_Btss3 = rgb_Btthw3[:, :, rows][:, :, :, cols]
    return np.ascontiguousarray(rgb_Btss3.repeat(tubelet_size, axis=1))


def _pad_time(video_TX: np.ndarray, frames: int) -> np.ndarray:
    """Repeat the last frame (axis -4) up to ``frames``."""
    missing = frames - video_TX.shape[-4]
    if missing <= 0:
        return video_TX
    last = np.take(video_TX, [-1], axis=-4)
    reps = [1] * video_TX.ndim
    reps[-4] = missing
    return np.concatenate((video_TX, np.tile(last, reps)), axis=-4)


def side_by_side(*videos_BTHWC: np.ndarray) -> np.ndarray:
    """Videos ((B, T, H, W, C) or (T, H, W, C)) concatenated left to right; those with fewer frames hold their
    last frame, lower ones are padded black at the bottom."""
    if not videos_BTHWC:
        raise ValueError("side_by_side needs at least one video")
    videos = [_numpy(v) for v in videos_BTHWC]
    ndim = videos[0].ndim
    if ndim not in (4, 5) or any(v.ndim != ndim for v in videos):
        raise ValueError(f"videos must all be (B, T, H, W, C) or all (T, H, W, C): {[v.shape for v in videos]}")
    if len({(v.shape[:-4], v.shape[-1], v.dtype) for v in videos}) != 1:
        raise ValueError(f"videos differ in batch, channels or dtype: {[(v.shape, v.dtype) for v in videos]}")
    frames = max(v.shape[-4] for v in videos)
    height = max(v.shape[-3] for v in videos)
    padded = []
    for v in videos:
        v = _pad_time(v, frames)
        if v.shape[-3] < height:
            pad = [(0, 0)] * ndim
            pad[-3] = (0, height - v.shape[-3])
            v = np.pad(v, pad)
        padded.append(v)
    return np.concatenate(padded, axis=-2)


def tile(videos_BTHWC: np.ndarray, columns: int, gap: int = 0) -> np.ndarray:
    """B clips as one (T, H', W', C) video on a grid of ``columns`` columns, row by row; empty cells and the
    ``gap`` pixels between cells are black."""
    videos_BTHWC = _numpy(videos_BTHWC)
    if videos_BTHWC.ndim != 5:
        raise ValueError(f"expected (B, T, H, W, C) videos, got {videos_BTHWC.shape}")
    if columns < 1:
        raise ValueError(f"columns={columns} must be positive")
    B, T, H, W, C = videos_BTHWC.shape
    columns = min(columns, B)
    rows = math.ceil(B / columns)
    out_THWC = np.zeros((T, rows * H + (rows - 1) * gap, columns * W + (columns - 1) * gap, C),
                        dtype=videos_BTHWC.dtype)
    for b in range(B):
        r, c = divmod(b, columns)
        y, x = r * (H + gap), c * (W + gap)
        out_THWC[:, y:y + H, x:x + W] = videos_BTHWC[b]
    return out_THWC


def pad_even(frames_THWC: np.ndarray) -> np.ndarray:
    """Pad bottom/right with black to even sides: yuv420p halves the chroma planes."""
    _, h, w, _ = frames_THWC.shape
    if h % 2 == 0 and w % 2 == 0:
        return frames_THWC
    return np.pad(frames_THWC, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))


def write_video(path, frames_THWC: np.ndarray, fps: int = 4) -> Path:
    """Write uint8 RGB frames as an H.264 (yuv420p) mp4, odd sides padded to even; returns the path."""
    from vwm.data.decode import encode_mp4

    frames_THWC = _numpy(frames_THWC)
    if frames_THWC.ndim != 4 or frames_THWC.shape[-1] != 3 or frames_THWC.dtype != np.uint8:
        raise ValueError(f"expected uint8 (T, H, W, 3) frames, got {frames_THWC.dtype} {frames_THWC.shape}")
    if frames_THWC.shape[0] == 0:
        raise ValueError("no frames to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_mp4(np.ascontiguousarray(pad_even(frames_THWC)), fps=fps))
    return path


def mask_video(clips_BTHWC, masks: list, grid: Grid, patch_size: int, tubelet_size: int, path: str | Path,
               fps: int = 4) -> Path:
    """One row per clip: the clip, then each mask set drawn on it (targets red, unused hidden tokens dark)."""
    clips = _numpy(clips_BTHWC)
    overlays = [mask_overlay_frames(clips, ctx_BK, tgt_BK, grid, patch_size, tubelet_size) for ctx_BK, tgt_BK in masks]
    return write_video(path, tile(side_by_side(clips, *overlays), columns=1, gap=2), fps=fps)


def pca_video(clips_BTHWC, features_BND, grid: Grid, tubelet_size: int, path: str | Path, fps: int = 4) -> Path:
    """One row per clip: the clip beside its token features' first three principal components as RGB (one
    PCA over every clip, so colours compare across rows)."""
    clips = _numpy(clips_BTHWC)
    pca = pca_feature_frames(features_BND, grid, clips.shape[2], tubelet_size)
    return write_video(path, tile(side_by_side(clips, pca), columns=1, gap=2), fps=fps)


def rollout_video(frames_BTHWC, true_BTND, imagined_BTND, grid_hw: tuple[int, int], path: str | Path,
                  fps: int = 2) -> Path:
    """One row per window: its frames, the encoder's features of them, and the features the world model
    imagined from the first frame and the actions (PCA as RGB, fitted on both, so colours compare)."""
    frames = _numpy(frames_BTHWC)
    B, T = frames.shape[:2]
    both = torch.cat([torch.as_tensor(true_BTND), torch.as_tensor(imagined_BTND)]).float()
    pca = pca_feature_frames(both.flatten(1, 2), (T, *grid_hw), frames.shape[2], 1)
    return write_video(path, tile(side_by_side(frames, pca[:B], pca[B:]), columns=1, gap=2), fps=fps)
