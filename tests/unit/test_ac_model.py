"""The action-conditioned predictor: block-causal, action-sensitive, and rollouts that match step-by-step
prediction, batched over candidates."""

import pytest
import torch

from vwm.config import ACConfig, ModelConfig
from vwm.models.ac_predictor import ACPredictor, block_causal_mask
from vwm.models.ac_world_model import ACModule, FrameEncoder, layer_norm, pool_tokens, rollout
from vwm.tasks.ac import variance_hinge


def _predictor(pos_embed, grid_hw=(4, 4), max_frames=6, residual=False):
    torch.manual_seed(0)
    p = ACPredictor(enc_dim=32, dim=24, depth=2, heads=4, mlp_ratio=2.0, grid_hw=grid_hw, max_frames=max_frames,
                    action_dim=10, state_dim=2, pos_embed=pos_embed, residual=residual).eval()
    if residual:  # the heads start at zero: give them weights, or a residual rollout is a copy
        for head in (p.proj, p.state_head):
            torch.nn.init.normal_(head.weight, std=0.05)
    return p


def test_block_causal_mask_lets_frame_t_see_frames_up_to_t():
    m = block_causal_mask(3, 2)
    assert m.tolist() == [[True, True, False, False, False, False]] * 2 + \
        [[True, True, True, True, False, False]] * 2 + [[True] * 6] * 2


@pytest.mark.parametrize("pos_embed", ["sincos", "rope"])
def test_predictions_for_frame_t_ignore_everything_after_t(pos_embed):
    p = _predictor(pos_embed)
    z, a, s = torch.randn(2, 5, 16, 32), torch.randn(2, 5, 10), torch.randn(2, 5, 2)
    out, sout = p(z, a, s)
    z2, a2, s2 = z.clone(), a.clone(), s.clone()
    z2[:, 3:], a2[:, 3:], s2[:, 3:] = torch.randn_like(z2[:, 3:]), a2[:, 3:] + 1, s2[:, 3:] - 1
    out2, sout2 = p(z2, a2, s2)
    torch.testing.assert_close(out[:, :3], out2[:, :3])
    torch.testing.assert_close(sout[:, :3], sout2[:, :3])
    assert (out[:, 3:] - out2[:, 3:]).abs().max() > 1e-3
    # the action at frame t changes the prediction of frame t + 1
    a3 = a.clone()
    a3[:, 1] += 1
    assert (p(z, a3, s)[0][:, 1] - out[:, 1]).abs().max() > 1e-6  # small at init: weights of std 0.02


@pytest.mark.parametrize("pos_embed,residual", [("sincos", False), ("rope", False), ("rope", True)])
def test_batched_rollout_matches_step_by_step_prediction(pos_embed, residual):
    """The rollout adds one frame per step with cached keys and values; the full forward over the imagined
    prefix must give the same numbers."""
    p = _predictor(pos_embed, residual=residual)
    z0, actions, s0 = torch.randn(3, 16, 32), torch.randn(3, 4, 10), torch.randn(3, 2)
    with torch.no_grad():
        z_BHND, s_BHS = rollout(p, z0, actions, s0)
        z_seq, s_seq = z0[:, None], s0[:, None]
        for h in range(4):
            pred, spred = p(z_seq, actions[:, :h + 1], s_seq)
            z_seq = torch.cat((z_seq, layer_norm(pred[:, -1:])), 1)
            s_seq = torch.cat((s_seq, spred[:, -1:]), 1)
        # one candidate alone gives what it gives in the batch
        alone, _ = rollout(p, z0[1:2], actions[1:2], s0[1:2])
    torch.testing.assert_close(z_BHND, z_seq[:, 1:])
    torch.testing.assert_close(s_BHS, s_seq[:, 1:])
    torch.testing.assert_close(alone[0], z_BHND[1], rtol=1e-4, atol=1e-5)


def test_pooling_averages_the_grid_and_keeps_features_normalised():
    z = layer_norm(torch.randn(2, 16, 8))
    one = pool_tokens(z, (4, 4), 1)
    assert one.shape == (2, 1, 8)
    torch.testing.assert_close(one, layer_norm(z.mean(1, keepdim=True)))
    assert pool_tokens(z, (4, 4), 2).shape == (2, 4, 8) and pool_tokens(z, (4, 4), None) is z


def test_state_probe_reads_the_online_features_linearly_and_trains_the_encoder():
    torch.manual_seed(0)
    cfg = ModelConfig(preset="debug", dim=32, depth=1, heads=2, patch_size=8)
    encoder = FrameEncoder(cfg, 16, 1, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    predictor = ACPredictor(enc_dim=32, dim=24, depth=1, heads=4, mlp_ratio=2.0, grid_hw=(1, 1), max_frames=3,
                            action_dim=10, state_dim=2, residual=True)
    module = ACModule(predictor, encoder, state_dim=2)
    frames = torch.randint(0, 256, (2, 3, 16, 16, 3), dtype=torch.uint8)
    z_BTND, _, _, _, probe_BTS = module(None, torch.randn(2, 2, 10), torch.randn(2, 3, 2), 1, frames)
    assert probe_BTS.shape == (2, 3, 2)
    torch.testing.assert_close(probe_BTS, module.state_probe(z_BTND.mean(2)))
    probe_BTS.abs().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.state_probe.parameters())
    assert encoder.encoder.patch_embed.proj.weight.grad.abs().sum() > 0  # the features themselves are shaped
    with pytest.raises(ValueError, match="online encoder"):
        ACModule(predictor, None, state_dim=2)


def test_variance_hinge_penalises_collapse_per_token_and_spares_spread_features():
    collapsed_BTND = torch.ones(4, 3, 2, 8)
    assert float(variance_hinge(collapsed_BTND)) == pytest.approx(1 - 1e-2)
    spread_BTND = torch.randn(64, 4, 2, 8) * 3
    assert float(variance_hinge(spread_BTND)) == 0.0
    # one token varies, the other does not: only the static one's channels are penalised
    mixed_BTND = spread_BTND.clone()
    mixed_BTND[:, :, 1] = 0.0
    assert float(variance_hinge(mixed_BTND)) == pytest.approx((1 - 1e-2) / 2)


@pytest.mark.parametrize("weight", ["state_probe", "variance"])
def test_feature_shaping_losses_need_the_end_to_end_encoder(weight):
    with pytest.raises(ValueError, match="ac.encoder: ema"):
        ACConfig(encoder_uri="x", loss_weights={weight: 1.0})
    assert getattr(ACConfig(encoder_uri="x", encoder="ema", loss_weights={weight: 1.0}).loss_weights, weight) == 1.0
