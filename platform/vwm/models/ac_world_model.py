"""The action-conditioned world model: frame features from a V-JEPA encoder, next features from an action.

Shared by post-training (``vwm.tasks.ac``) and by planning (the ``vjepa-ac`` artifact), so the features a
planner compares are made exactly as the ones the predictor was trained on:

- ``FrameEncoder``: each frame on its own (repeated into one tubelet, as V-JEPA 2-AC), features layer-normed
  without affine parameters, then optionally average-pooled to ``pool x pool`` tokens (and normed again).
- ``rollout``: autoregressive prediction of H frames from one, batched over candidate action sequences:
  every step is one predictor call over all candidates.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vwm.config import ModelConfig
from vwm.models.ac_predictor import ACPredictor
from vwm.models.preprocess import center_square, normalize_clips
from vwm.models.vit import VisionTransformer


def layer_norm(x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],))


def pool_tokens(z_BND: torch.Tensor, grid_hw: tuple[int, int], pool: int | None) -> torch.Tensor:
    """Average a frame's (h, w) feature grid down to pool x pool tokens (None: unchanged), then layer-norm."""
    if pool is None:
        return z_BND
    B, N, D = z_BND.shape
    grid_BDhw = z_BND.transpose(1, 2).reshape(B, D, *grid_hw)
    pooled_BDpp = F.adaptive_avg_pool2d(grid_BDhw.float(), pool).to(z_BND.dtype)
    return layer_norm(pooled_BDpp.flatten(2).transpose(1, 2))


class FrameEncoder(nn.Module):
    """A V-JEPA encoder applied to single frames: (B, T, H, W, 3) uint8 -> (B, T, N, D) features."""

    def __init__(self, model_config: ModelConfig, crop: int, pool: int | None, mean, std):
        super().__init__()
        self.cfg, self.crop, self.pool, self.mean, self.std = model_config, crop, pool, list(mean), list(std)
        self.encoder = VisionTransformer(model_config, model_config.tubelet_size, crop)
        self.grid_hw = self.encoder.grid[1:]

    @property
    def tokens(self) -> int:
        return self.pool * self.pool if self.pool else self.grid_hw[0] * self.grid_hw[1]

    def forward(self, frames_BTHWC: torch.Tensor) -> torch.Tensor:
        B, T = frames_BTHWC.shape[:2]
        frames_FHWC = center_square(frames_BTHWC.reshape(B * T, 1, *frames_BTHWC.shape[2:]), self.crop)[:, 0]
        clips_F1HWC = frames_FHWC[:, None].expand(-1, self.cfg.tubelet_size, -1, -1, -1)
        z_FND = layer_norm(self.encoder(normalize_clips(clips_F1HWC, mean=self.mean, std=self.std)))
        z_FND = pool_tokens(z_FND, self.grid_hw, self.pool)
        return z_FND.view(B, T, *z_FND.shape[1:])


def rollout(predictor: ACPredictor, z0_BND: torch.Tensor, actions_BHA: torch.Tensor,
            state0_BS: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted features (B, H, N, D) and states (B, H, S) of frames 1..H from frame 0 and H actions
    (normalised units). Each step adds one frame's tokens; earlier frames' keys and values are cached
    (the same numbers as re-reading the imagined prefix under the block-causal mask, H times cheaper at
    the last step)."""
    caches: list[dict] = [{} for _ in predictor.blocks]
    z_BND, s_BS = z0_BND, state0_BS
    zs, ss = [], []
    for h in range(actions_BHA.shape[1]):
        pred_BND, s_BS = predictor.step(z_BND, actions_BHA[:, h], s_BS, h, caches)
        z_BND = layer_norm(pred_BND)
        zs.append(z_BND)
        ss.append(s_BS)
    return torch.stack(zs, dim=1), torch.stack(ss, dim=1)


class ACModule(nn.Module):
    """What the engine trains: the predictor, plus the online encoder when it is trained end to end, and
    optionally a linear state probe on that encoder's features (a training aid, not exported)."""

    def __init__(self, predictor: ACPredictor, encoder: FrameEncoder | None = None, state_dim: int | None = None):
        super().__init__()
        self.predictor = predictor
        self.encoder = encoder
        if state_dim is not None and encoder is None:
            raise ValueError("a state probe needs the online encoder: it trains the encoder's features")
        self.state_probe = nn.Linear(encoder.cfg.dim, state_dim) if state_dim is not None else None

    def forward(self, z_BTND: torch.Tensor, actions_BTA: torch.Tensor, states_BTS: torch.Tensor,
                rollout_steps: int, frames_BTHWC: torch.Tensor | None = None):
        """Teacher forcing over frames 0..T-2 and an autoregressive rollout of ``rollout_steps`` from frame 0.
        With an online encoder, the context features come from ``frames_BTHWC`` instead of ``z_BTND``.
        Returns (context features, next-frame predictions, next-state predictions, rollout, the state probe's
        reading of every frame (B, T, S) or None)."""
        if self.encoder is not None:
            z_BTND = self.encoder(frames_BTHWC)
        pred_BTND, spred_BTS = self.predictor(z_BTND[:, :-1], actions_BTA, states_BTS[:, :-1])
        roll_BRND, _ = rollout(self.predictor, z_BTND[:, 0], actions_BTA[:, :rollout_steps], states_BTS[:, 0])
        # linear in the token mean: distances between features then grow with distances between states
        probe_BTS = self.state_probe(z_BTND.mean(2)) if self.state_probe is not None else None
        return z_BTND, layer_norm(pred_BTND), spred_BTS, roll_BRND, probe_BTS


class ACWorldModel:
    """A trained ``vjepa-ac`` world model for planning: ``encode`` observations, ``predict`` one step,
    ``rollout`` candidate action sequences in one batched call per step. Actions and states are in env
    units; the normalisation the model was trained with is applied inside."""

    def __init__(self, manifest: dict, encoder: FrameEncoder, predictor: ACPredictor):
        self.manifest, self.encoder, self.predictor = manifest, encoder.eval(), predictor.eval()
        norm = manifest["normalisation"]
        self._stats = {k: torch.tensor(norm[k], dtype=torch.float32)
                       for k in ("action_mean", "action_std", "state_mean", "state_std")}
        self.device = torch.device("cpu")
        self._rollout, self._autocast = rollout, None

    def accelerate(self, compile: bool = False, dtype: torch.dtype | None = None) -> ACWorldModel:
        """The planner's hot path faster: ``rollout`` compiled (static shapes: a planner's candidates and
        horizon stay fixed, so one graph serves all its calls) and/or run under autocast in ``dtype``."""
        self._rollout = torch.compile(rollout, dynamic=False) if compile else rollout
        self._autocast = dtype
        return self

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def action_dim(self) -> int:
        return self.manifest["action_dim"]

    def to(self, device) -> ACWorldModel:
        self.device = torch.device(device)
        self.encoder.to(self.device)
        self.predictor.to(self.device)
        self._stats = {k: v.to(self.device) for k, v in self._stats.items()}
        return self

    def _norm(self, x: torch.Tensor, what: str) -> torch.Tensor:
        x = torch.as_tensor(x, dtype=torch.float32, device=self.device)
        return (x - self._stats[f"{what}_mean"]) / self._stats[f"{what}_std"].clamp_min(1e-6)

    def unnormalize_states(self, s: torch.Tensor) -> torch.Tensor:
        return s * self._stats["state_std"].clamp_min(1e-6) + self._stats["state_mean"]

    @torch.no_grad()
    def encode(self, frames_uint8) -> torch.Tensor:
        """uint8 RGB (H, W, 3) -> (1, N, D); (B, H, W, 3) -> (B, N, D); (B, T, H, W, 3) -> (B, T, N, D)."""
        x = torch.as_tensor(np.asarray(frames_uint8) if not torch.is_tensor(frames_uint8) else frames_uint8)
        if x.dtype != torch.uint8 or x.shape[-1] != 3 or x.ndim not in (3, 4, 5):
            raise ValueError(f"encode takes uint8 RGB frames (..., H, W, 3), got {x.dtype} {tuple(x.shape)}")
        squeeze = x.ndim < 5
        x = x.reshape(-1, 1, *x.shape[-3:]) if squeeze else x
        z = self.encoder(x.to(self.device))
        return z[:, 0] if squeeze else z

    @torch.no_grad()
    def predict(self, z_BTND: torch.Tensor, actions_BTA, states_BTS) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (B, N, D) and state (B, S, env units) of the frame after the last of the context."""
        pred, spred = self.predictor(z_BTND, self._norm(actions_BTA, "action"), self._norm(states_BTS, "state"))
        return layer_norm(pred[:, -1]), self.unnormalize_states(spred[:, -1])

    def rollout(self, z0_BND: torch.Tensor, actions_BHA, state0_BS) -> tuple[torch.Tensor, torch.Tensor]:
        """Imagined features (B, H, N, D) and states (B, H, S) of H steps; differentiable in the actions
        (gradient planners), so no ``no_grad`` here. z0 and state0 broadcast over B candidates."""
        actions = self._norm(actions_BHA, "action")
        B = actions.shape[0]
        z0 = z0_BND.expand(B, -1, -1) if z0_BND.shape[0] == 1 else z0_BND
        s0 = self._norm(state0_BS, "state")
        s0 = s0.expand(B, -1) if s0.shape[0] == 1 else s0
        amp = (torch.autocast(self.device.type, dtype=self._autocast) if self._autocast is not None
               else contextlib.nullcontext())
        with amp:
            z, s = self._rollout(self.predictor, z0, actions, s0)
        return z.float(), self.unnormalize_states(s.float())


def load_ac_world_model(manifest: dict, weights: dict) -> ACWorldModel:
    """An ``ACWorldModel`` from a ``vjepa-ac`` artifact's manifest and weights."""
    cfg = ModelConfig.model_validate(manifest["model_config"])
    ac, pre = manifest["ac"], manifest["preprocessing"]
    encoder = FrameEncoder(cfg, manifest["geometry"]["crop"], ac["pool"], pre["mean"], pre["std"])
    encoder.encoder.load_state_dict(weights["encoder"])
    predictor = ACPredictor(enc_dim=cfg.dim, dim=ac["dim"], depth=ac["depth"], heads=ac["heads"],
                            mlp_ratio=ac["mlp_ratio"], grid_hw=(ac["pool"],) * 2 if ac["pool"] else encoder.grid_hw,
                            max_frames=ac["max_frames"], action_dim=manifest["action_dim"],
                            state_dim=manifest["state_dim"], pos_embed=cfg.pos_embed, qkv_bias=cfg.qkv_bias,
                            residual=ac["residual"])
    predictor.load_state_dict(weights["predictor"])
    for m in (encoder, predictor):
        m.requires_grad_(False)
    return ACWorldModel(manifest, encoder, predictor)
