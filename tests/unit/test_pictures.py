import av
import numpy as np
import pytest
import torch

from vwm.config import MaskConfig
from vwm.eval.pictures import mask_overlay_frames, pca_feature_frames, side_by_side, tile, write_video
from vwm.masks.multiblock3d import sample_masks

GRID = (2, 4, 4)
PATCH, TUBELET = 4, 2


def _clips(batch=2, extra=0, seed=0):
    # no channel at 0 or 255, so a red tint or a darkening changes every channel of every pixel it touches
    rng = np.random.default_rng(seed)
    t, h, w = GRID
    shape = (batch, t * TUBELET + extra, h * PATCH + extra, w * PATCH + extra, 3)
    return rng.integers(10, 200, shape, dtype=np.uint8)


def _token_pixels(frames_BTHWC, b, token):
    _, gh, gw = GRID
    ti, rest = divmod(token, gh * gw)
    hi, wi = divmod(rest, gw)
    return frames_BTHWC[b, ti * TUBELET:(ti + 1) * TUBELET, hi * PATCH:(hi + 1) * PATCH, wi * PATCH:(wi + 1) * PATCH]


def test_overlay_tints_targets_and_leaves_context_as_is():
    clips = _clips()
    n = GRID[0] * GRID[1] * GRID[2]
    dropped_seen = 0
    # a Batch.masks list as the collator makes it; on this grid the second set leaves tokens that are neither
    # context nor target (cut to the batch minimum), which must be darkened, not tinted
    for context, target in sample_masks(MaskConfig().sets, GRID, 2, seed=0, epoch=0, step=0, rank=0):
        out = mask_overlay_frames(clips, context, target, GRID, PATCH, TUBELET)
        assert out.shape == clips.shape and out.dtype == np.uint8
        for b in range(2):
            ctx, tgt = set(context[b].tolist()), set(target[b].tolist())
            assert ctx and tgt and not ctx & tgt
            for token in range(n):
                before, after = _token_pixels(clips, b, token).astype(int), _token_pixels(out, b, token).astype(int)
                if token in ctx:
                    assert np.array_equal(before, after), (b, token)
                    continue
                assert (before != after).all(), (b, token)
                # green and blue halve either way; red rises towards 255 for targets, halves for dropped tokens
                assert (np.abs(after[..., 1:] - np.rint(before[..., 1:] * 0.5)) <= 1).all()
                if token in tgt:
                    assert (after[..., 0] > before[..., 0]).all()
                else:
                    dropped_seen += 1
                    assert (np.abs(after[..., 0] - np.rint(before[..., 0] * 0.5)) <= 1).all()
    assert dropped_seen > 0


def test_overlay_geometry_of_one_token_and_boolean_masks():
    clips = _clips(batch=1, extra=3)  # pixels and a frame past the grid's coverage must stay untouched
    n = GRID[0] * GRID[1] * GRID[2]
    token = (1 * GRID[1] + 2) * GRID[2] + 3  # (ti, hi, wi) = (1, 2, 3)
    target_BN = np.zeros((1, n), dtype=bool)
    target_BN[0, token] = True
    out = mask_overlay_frames(clips, ~target_BN, target_BN, GRID, PATCH, TUBELET)
    changed = (out != clips).any(-1)[0]
    expected = np.zeros_like(changed)
    expected[2:4, 8:12, 12:16] = True
    assert np.array_equal(changed, expected)
    # the same mask as indices, and context=None (all non-targets are context), draw the same picture
    as_indices = mask_overlay_frames(clips, torch.tensor([[i for i in range(n) if i != token]]),
                                     torch.tensor([[token]]), GRID, PATCH, TUBELET)
    assert np.array_equal(as_indices, out)
    assert np.array_equal(mask_overlay_frames(clips, None, [[token]], GRID, PATCH, TUBELET), out)


def test_overlay_rejects_a_grid_larger_than_the_clips():
    with pytest.raises(ValueError, match="covers"):
        mask_overlay_frames(_clips(), None, [[0], [0]], (3, 4, 4), PATCH, TUBELET)


def _two_region_features(seed=0, batch=2, dim=16):
    """Tokens in the left half of every frame share one vector, the right half another, plus small noise."""
    rng = np.random.default_rng(seed)
    t, h, w = GRID
    left_D, right_D = rng.normal(size=dim), rng.normal(size=dim)
    left_thw = np.broadcast_to(np.arange(w) < w // 2, (t, h, w))
    feats_BND = np.where(left_thw.reshape(1, -1, 1), left_D, right_D) + 0.05 * rng.normal(size=(batch, t * h * w, dim))
    return feats_BND.astype(np.float32), left_thw


def test_pca_separates_two_regions_by_colour():
    feats_BND, left_thw = _two_region_features()
    size = 32
    out = pca_feature_frames(torch.from_numpy(feats_BND), GRID, size=size, tubelet_size=TUBELET)
    assert out.shape == (2, GRID[0] * TUBELET, size, size, 3) and out.dtype == np.uint8
    # every token is one flat block of size/w pixels, repeated over its tubelet's frames
    cell = size // GRID[2]
    assert np.array_equal(out, out[:, ::TUBELET, ::cell, ::cell].repeat(TUBELET, 1).repeat(cell, 2).repeat(cell, 3))
    left_px = left_thw.repeat(TUBELET, 0).repeat(cell, 1).repeat(cell, 2)
    # the first component is the region split: its channel puts the two halves at opposite ends of [0, 255]
    first = out[..., 0].astype(int)
    left_vals, right_vals = first[:, left_px], first[:, ~left_px]
    assert min(abs(left_vals.max() - right_vals.min()), abs(right_vals.max() - left_vals.min())) > 200
    mean_gap = np.linalg.norm(out[:, left_px].mean(0).mean(0) - out[:, ~left_px].mean(0).mean(0))
    assert mean_gap > 150


def test_pca_is_deterministic_and_takes_numpy_or_torch():
    feats_BND, _ = _two_region_features(seed=1)
    a = pca_feature_frames(feats_BND, GRID, size=16, tubelet_size=TUBELET)
    b = pca_feature_frames(feats_BND.copy(), GRID, size=16, tubelet_size=TUBELET)
    c = pca_feature_frames(torch.from_numpy(feats_BND).to(torch.bfloat16).float(), GRID, size=16,
                           tubelet_size=TUBELET)
    assert np.array_equal(a, b)
    assert np.abs(a.astype(int) - c.astype(int)).max() <= 64  # bf16 rounding shifts colours, never flips them
    # the sign is fixed by the loadings, not by SVD's whim: negated features give the complementary picture
    neg = pca_feature_frames(-feats_BND, GRID, size=16, tubelet_size=TUBELET)
    assert np.abs(neg.astype(int) - (255 - a.astype(int))).max() <= 2


def test_pca_rejects_features_that_do_not_fit_the_grid():
    with pytest.raises(ValueError, match="grid"):
        pca_feature_frames(np.zeros((1, 31, 8), np.float32), GRID, size=8, tubelet_size=TUBELET)


def test_write_video_pads_odd_sizes_and_decodes(tmp_path):
    levels = np.linspace(30, 220, 5).astype(np.uint8)
    frames = np.broadcast_to(levels[:, None, None, None], (5, 17, 23, 3)).copy()
    path = write_video(tmp_path / "sub" / "clip.mp4", frames, fps=4)
    assert path == tmp_path / "sub" / "clip.mp4" and path.stat().st_size > 0
    with av.open(str(path)) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 5
    assert all(f.shape == (18, 24, 3) for f in decoded)
    # flat grey frames survive H.264 almost unchanged, in order
    assert np.allclose([f[:17, :23].mean() for f in decoded], levels, atol=4)


def test_write_video_rejects_float_frames(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "x.mp4", np.zeros((2, 8, 8, 3), np.float32))


def test_side_by_side_holds_last_frame_and_pads_height():
    rng = np.random.default_rng(0)
    a = rng.integers(1, 255, (2, 3, 8, 8, 3), dtype=np.uint8)
    b = rng.integers(1, 255, (2, 5, 6, 4, 3), dtype=np.uint8)
    out = side_by_side(a, b)
    assert out.shape == (2, 5, 8, 12, 3)
    assert np.array_equal(out[:, :3, :, :8], a)
    assert np.array_equal(out[:, 3, :, :8], a[:, -1]) and np.array_equal(out[:, 4, :, :8], a[:, -1])
    assert np.array_equal(out[:, :, :6, 8:], b)
    assert not out[:, :, 6:, 8:].any()
    assert side_by_side(a[0], a[0]).shape == (3, 8, 16, 3)
    with pytest.raises(ValueError):
        side_by_side(a, b[:1])


def test_tile_lays_clips_row_by_row():
    rng = np.random.default_rng(0)
    clips = rng.integers(1, 255, (5, 3, 6, 7, 3), dtype=np.uint8)
    out = tile(clips, columns=2, gap=1)
    assert out.shape == (3, 3 * 6 + 2, 2 * 7 + 1, 3)
    for b in range(5):
        r, c = divmod(b, 2)
        assert np.array_equal(out[:, r * 7:r * 7 + 6, c * 8:c * 8 + 7], clips[b])
    assert not out[:, 14:, 8:].any()  # the empty sixth cell
    assert not out[:, 6].any() and not out[:, :, 7].any()  # gaps
    assert tile(clips, columns=8).shape == (3, 6, 5 * 7, 3)
