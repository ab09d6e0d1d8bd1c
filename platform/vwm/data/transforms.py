"""Clip transforms on uint8 frames (normalisation to the model's input: ``vwm.models.preprocess``)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from vwm.config import AugmentConfig

def resize_clip(clip_THWC: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of a uint8 clip to size x size."""
    if clip_THWC.shape[1] == size and clip_THWC.shape[2] == size:
        return clip_THWC
    x = clip_THWC.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def crop_box(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
             rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random resized crop: area fraction in ``scale``, aspect ratio in ``ratio``
    (log-uniform), as torchvision's RandomResizedCrop; a central crop if ten draws do not fit."""
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def augment_clip(clip_THWC: np.ndarray, size: int, cfg: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """One crop and flip for the whole clip (motion stays coherent), then a resize to size x size."""
    _, H, W, _ = clip_THWC.shape
    if cfg.random_resized_crop:
        top, left, h, w = crop_box(H, W, cfg.scale, cfg.aspect_ratio, rng)
    else:
        side = min(H, W)
        top, left, h, w = (H - side) // 2, (W - side) // 2, side, side
    clip_THWC = clip_THWC[:, top:top + h, left:left + w]
    if rng.random() < cfg.hflip:
        clip_THWC = clip_THWC[:, :, ::-1]
    return resize_clip(torch.from_numpy(np.ascontiguousarray(clip_THWC)), size).numpy()
