"""A trained world model as a portable artifact: the EMA target encoder, the predictor and their config.

``save_world_model`` writes ``world_model.pt`` into a folder (logged to MLflow and registered as a model);
``load_world_model("models:/NAME@ALIAS")`` (or ``runs:/...`` or a local folder) rebuilds the modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from vwm.config import ModelConfig
from vwm.models.predictor import Predictor
from vwm.models.vit import VisionTransformer, token_grid

FILENAME = "world_model.pt"


@dataclass
class WorldModel:
    encoder: VisionTransformer  # the EMA target encoder: the representation to evaluate and plan with
    predictor: Predictor
    model_config: ModelConfig
    frames: int
    crop: int

    def to(self, device) -> WorldModel:
        self.encoder.to(device)
        self.predictor.to(device)
        return self


def save_world_model(directory: str | Path, *, model_config: ModelConfig, frames: int, crop: int,
                     num_mask_sets: int, encoder_state: dict, predictor_state: dict) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save({"model_config": model_config.model_dump(mode="json"), "frames": frames, "crop": crop,
                "num_mask_sets": num_mask_sets, "encoder": encoder_state, "predictor": predictor_state},
               directory / FILENAME)
    return directory


def load_world_model(uri: str | Path, device: str | torch.device = "cpu",
                     tracking_uri: str | None = None) -> WorldModel:
    """From ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/ID/world_model`` or a local folder."""
    path = Path(str(uri))
    if str(uri).startswith(("models:/", "runs:/", "s3://", "mlflow-artifacts:")):
        from vwm.tracking.mlflow import download_artifacts

        path = download_artifacts(str(uri), tracking_uri)
    file = path / FILENAME if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{uri} holds no {FILENAME}; was it written by vwm's pretraining?")
    state = torch.load(file, map_location="cpu", weights_only=False)
    cfg = ModelConfig.model_validate(state["model_config"])
    encoder = VisionTransformer(cfg, state["frames"], state["crop"])
    predictor = Predictor(cfg, token_grid(cfg, state["frames"], state["crop"]), state["num_mask_sets"])
    encoder.load_state_dict(state["encoder"])
    predictor.load_state_dict(state["predictor"])
    for m in (encoder, predictor):
        m.eval().requires_grad_(False)
    return WorldModel(encoder, predictor, cfg, state["frames"], state["crop"]).to(device)


def module_state(module: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
