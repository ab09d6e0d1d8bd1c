"""The world-model artifact: a folder any consumer (notebook, probe, planner) loads without knowing how the
model was trained.

Layout (format version 1)::

    manifest.json   kind ("vjepa" | "vjepa-ac"), format_version, model_config, geometry (frames, crop, patch,
                    tubelet, grid), preprocessing (mean, std, input layout), parent_uri, git_commit, and the
                    kind's extras (vjepa: num_mask_sets)
    weights.pt      {module name: state dict}, plain tensors: loads with ``torch.load(weights_only=True)``

``load_world_model(uri)`` takes a folder, ``runs:/...``, ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``
and returns a ``WorldModel`` (or, for ``vjepa-ac``, an ``ACWorldModel`` with ``predict`` and ``rollout``)
whose ``encode(frames_uint8)`` applies the recorded preprocessing itself.
Wave-1 folders (a single ``world_model.pt``) still load: their contents map onto the same manifest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vwm.config import ModelConfig
from vwm.models.predictor import Predictor
from vwm.models.preprocess import MEAN, STD, center_square, normalize_clips
from vwm.models.vit import VisionTransformer, token_grid

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.pt"
LEGACY_FILE = "world_model.pt"
KINDS = ("vjepa", "vjepa-ac")


class ArtifactError(ValueError):
    """A folder that is not a loadable world model; the message says what is wrong and what to do."""


def geometry(cfg: ModelConfig, frames: int, crop: int) -> dict[str, Any]:
    return {"frames": frames, "crop": crop, "patch_size": cfg.patch_size, "tubelet_size": cfg.tubelet_size,
            "grid": list(token_grid(cfg, frames, crop))}


def write_artifact(directory: str | Path, *, kind: str, model_config: ModelConfig, frames: int, crop: int,
                   weights: dict[str, dict[str, torch.Tensor]], extras: dict[str, Any] | None = None,
                   parent_uri: str | None = None, git_commit: str | None = None) -> Path:
    if kind not in KINDS:
        raise ArtifactError(f"unknown world-model kind {kind!r}; known: {', '.join(KINDS)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    manifest = {"kind": kind, "format_version": FORMAT_VERSION, "model_config": model_config.model_dump(mode="json"),
                "geometry": geometry(model_config, frames, crop),
                "preprocessing": {"input": "uint8 RGB frames (T, H, W, 3) or (B, T, H, W, 3)", "mean": list(MEAN),
                                  "std": list(STD), "resize": "central square, bilinear, to geometry.crop"},
                "parent_uri": parent_uri, "git_commit": git_commit or "unknown", **(extras or {})}
    torch.save({name: {k: v.detach().cpu().contiguous() for k, v in state.items()} for name, state in weights.items()},
               directory / WEIGHTS)
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return directory


@dataclass
class WorldModel:
    """A trained V-JEPA world model, frozen: ``encode`` for representations; the predictor for masked
    prediction. Every module is in eval mode with gradients off."""

    manifest: dict
    encoder: VisionTransformer  # the EMA target encoder: the representation to evaluate and plan with
    predictor: Predictor
    model_config: ModelConfig
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def frames(self) -> int:
        return self.manifest["geometry"]["frames"]

    @property
    def crop(self) -> int:
        return self.manifest["geometry"]["crop"]

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    def to(self, device) -> WorldModel:
        self.device = torch.device(device)
        self.encoder.to(self.device)
        self.predictor.to(self.device)
        return self

    @torch.no_grad()
    def encode(self, frames_uint8: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 RGB frames, (T, H, W, 3) or (B, T, H, W, 3), T = ``frames`` -> token features (B, N, D).
        Frames of another size are centre-cropped to a square and resized to ``crop``."""
        x = torch.as_tensor(np.asarray(frames_uint8) if not torch.is_tensor(frames_uint8) else frames_uint8)
        if x.dtype != torch.uint8:
            raise ArtifactError(f"encode takes uint8 frames (0..255), got {x.dtype}; pass the raw RGB frames")
        if x.ndim == 4:
            x = x[None]
        if x.ndim != 5 or x.shape[-1] != 3 or x.shape[1] != self.frames:
            raise ArtifactError(f"encode takes frames of shape (T, H, W, 3) or (B, T, H, W, 3) with T={self.frames}, "
                                f"got {tuple(x.shape)}")
        pre = self.manifest["preprocessing"]
        clips_BTHWC = center_square(x, self.crop).to(self.device)
        return self.encoder(normalize_clips(clips_BTHWC, mean=pre["mean"], std=pre["std"]))


def _read(directory: Path) -> tuple[dict, dict]:
    if (directory / MANIFEST).is_file():
        manifest = json.loads((directory / MANIFEST).read_text())
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise ArtifactError(f"{directory}: world-model format version {version}; this vwm reads version "
                                f"{FORMAT_VERSION}: install the vwm that wrote it, or re-export it from its checkpoint")
        return manifest, torch.load(directory / WEIGHTS, map_location="cpu", weights_only=True)
    if (directory / LEGACY_FILE).is_file():  # wave 1: config and weights in one file of plain types
        state = torch.load(directory / LEGACY_FILE, map_location="cpu", weights_only=True)
        cfg = ModelConfig.model_validate(state["model_config"])
        manifest = {"kind": "vjepa", "format_version": 0, "model_config": state["model_config"],
                    "geometry": geometry(cfg, state["frames"], state["crop"]),
                    "preprocessing": {"mean": list(MEAN), "std": list(STD)}, "parent_uri": None,
                    "git_commit": "unknown", "num_mask_sets": state["num_mask_sets"]}
        return manifest, {"encoder": state["encoder"], "predictor": state["predictor"]}
    raise ArtifactError(f"{directory} holds neither {MANIFEST} nor {LEGACY_FILE}: not a vwm world model "
                        "(a pretraining run's final checkpoint has one under world_model/)")


def read_world_model(directory: str | Path, device: str | torch.device = "cpu"):
    """A world model from a local folder: a ``WorldModel`` (kind vjepa) or an ``ACWorldModel`` (vjepa-ac)."""
    manifest, weights = _read(Path(directory))
    if manifest["kind"] == "vjepa-ac":
        from vwm.models.ac_world_model import load_ac_world_model

        return load_ac_world_model(manifest, weights).to(device)
    if manifest["kind"] != "vjepa":
        raise ArtifactError(f"{directory}: kind {manifest['kind']!r} is not loadable by this vwm")
    cfg = ModelConfig.model_validate(manifest["model_config"])
    g = manifest["geometry"]
    encoder = VisionTransformer(cfg, g["frames"], g["crop"])
    predictor = Predictor(cfg, tuple(g["grid"]), manifest["num_mask_sets"])
    encoder.load_state_dict(weights["encoder"])
    predictor.load_state_dict(weights["predictor"])
    for m in (encoder, predictor):
        m.eval().requires_grad_(False)
    return WorldModel(manifest, encoder, predictor, cfg).to(device)


def module_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
