import numpy as np
import pytest
import torch

from vwm.config import ModelConfig
from vwm.models.jepa import JEPA, build_models, count_params
from vwm.models.layers import Rope3D, sincos_3d
from vwm.models.presets import PRESETS, PUBLISHED_PARAMS_M
from vwm.models.vit import VisionTransformer


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("pos_embed", ["sincos", "rope"])
def test_every_preset_shapes_at_debug_size(preset, pos_embed):
    # the preset's widths and heads, one block each, on a 4-frame 32x32 clip with 16x16 patches
    cfg = ModelConfig(preset=preset, depth=1, patch_size=16, pos_embed=pos_embed,
                      predictor={"depth": 1})
    jepa, target = build_models(cfg, frames=4, crop=32, num_mask_sets=2)
    clips_BCTHW = torch.randn(2, 3, 4, 32, 32)
    assert jepa.encoder.num_tokens == 2 * 2 * 2
    full_BND = target(clips_BCTHW)
    assert full_BND.shape == (2, 8, cfg.dim)
    ctx = torch.tensor([[0, 2, 5], [1, 3, 7]])
    tgt = torch.tensor([[1, 4], [0, 6]])
    ctx_BND = jepa.encoder(clips_BCTHW, ctx)
    assert ctx_BND.shape == (2, 3, cfg.dim)
    pred_BKD = jepa.predictor(ctx_BND, ctx, tgt, mask_set=1)
    assert pred_BKD.shape == (2, 2, cfg.dim)
    preds = jepa(clips_BCTHW, [(ctx, tgt), (tgt, ctx)])
    assert [p.shape for p in preds] == [(2, 2, cfg.dim), (2, 3, cfg.dim)]


@pytest.mark.parametrize("preset", ["vit_l", "vit_h", "vit_g"])
def test_large_preset_parameter_counts_match_published(preset):
    with torch.device("meta"):
        encoder = VisionTransformer(ModelConfig(preset=preset), frames=16, crop=224)
    millions = count_params(encoder) / 1e6
    assert abs(millions - PUBLISHED_PARAMS_M[preset]) / PUBLISHED_PARAMS_M[preset] < 0.03, millions


def test_vjepa_predictor_size():
    with torch.device("meta"):
        jepa = JEPA(ModelConfig(preset="vit_l"), frames=16, crop=224, num_mask_sets=2)
    # V-JEPA's ViT-L predictor: 12 blocks of width 384 (about 22M parameters)
    assert len(jepa.predictor.blocks) == 12 and jepa.predictor.embed.out_features == 384
    assert 21e6 < count_params(jepa.predictor) < 23e6


def _reference_3d_sincos(dim: int, grid_size: int, grid_depth: int, uniform_power: bool) -> np.ndarray:
    """get_3d_sincos_pos_embed of facebookresearch/vjepa2 src/models/utils/pos_embs.py, re-derived."""
    def one_axis(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=float) / (d / 2.0))
        angles = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)
    axis = np.arange(grid_size, dtype=float)
    grid_h, grid_d, grid_w = np.meshgrid(axis, np.arange(grid_depth, dtype=float), axis)
    if uniform_power:
        d_h = d_w = d_d = int(np.ceil(dim / 6) * 2)
    else:
        d_h, d_w, d_d = dim // 4, dim // 4, dim // 2
    table = np.concatenate([one_axis(d_d, grid_d), one_axis(d_h, grid_h), one_axis(d_w, grid_w)], axis=1)
    return table[:, :dim]


@pytest.mark.parametrize("dim", [12, 16, 64])
@pytest.mark.parametrize("uniform_power", [False, True])
def test_sincos_table_matches_the_reference(dim, uniform_power):
    ours_ND = sincos_3d(dim, (2, 3, 3), uniform_power)
    reference_ND = torch.from_numpy(_reference_3d_sincos(dim, 3, 2, uniform_power)).float()
    torch.testing.assert_close(ours_ND, reference_ND, rtol=0, atol=1e-6)


def test_uniform_power_reaches_encoder_and_predictor_tables():
    cfg = ModelConfig(preset="debug", sincos_uniform_power=True)
    jepa = JEPA(cfg, frames=4, crop=16, num_mask_sets=2)
    torch.testing.assert_close(jepa.encoder.pos_ND, sincos_3d(96, (2, 2, 2), uniform_power=True))
    torch.testing.assert_close(jepa.predictor.pos_ND, sincos_3d(64, (2, 2, 2), uniform_power=True))
    assert not torch.allclose(jepa.encoder.pos_ND, sincos_3d(96, (2, 2, 2)))
    assert not ModelConfig().sincos_uniform_power  # existing configs keep the D/2, D/4, D/4 split


def test_rope_scores_depend_only_on_relative_position():
    rope = Rope3D(head_dim=24, grid=(4, 6, 6))
    q = torch.randn(1, 1, 1, 24).expand(1, 1, 4, 24)
    k = torch.randn(1, 1, 1, 24).expand(1, 1, 4, 24)
    # token pairs with the same (dt, dh, dw) offset: (0 -> 1+6+36) and (36+6+1 -> 2*(36+6+1))
    idx = torch.tensor([[0, 43, 43, 86]])
    cos, sin = rope.tables(idx, torch.float32)
    qr, kr = Rope3D.apply(q, cos, sin), Rope3D.apply(k, cos, sin)
    s1 = (qr[0, 0, 0] * kr[0, 0, 1]).sum()
    s2 = (qr[0, 0, 2] * kr[0, 0, 3]).sum()
    torch.testing.assert_close(s1, s2, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(qr[0, 0, 0], qr[0, 0, 1])


def test_target_is_frozen_copy_of_encoder():
    jepa, target = build_models(ModelConfig(preset="debug"), frames=4, crop=16, num_mask_sets=2)
    assert all(not p.requires_grad for p in target.parameters())
    for a, b in zip(jepa.encoder.parameters(), target.parameters()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
