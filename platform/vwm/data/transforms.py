"""Clip transforms on uint8 frames, and normalisation to the model's float input on the device."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# ImageNet statistics, as V-JEPA uses
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def resize_clip(clip_THWC: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of a uint8 clip to size x size."""
    if clip_THWC.shape[1] == size and clip_THWC.shape[2] == size:
        return clip_THWC
    x = clip_THWC.permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def normalize_clips(clips_BTHWC: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 (B, T, H, W, C) -> normalised (B, C, T, H, W) in ``dtype``, on the clips' device."""
    x = clips_BTHWC.permute(0, 4, 1, 2, 3).to(dtype).div_(255.0)
    mean = torch.tensor(MEAN, dtype=dtype, device=x.device).view(1, 3, 1, 1, 1)
    std = torch.tensor(STD, dtype=dtype, device=x.device).view(1, 3, 1, 1, 1)
    return (x - mean) / std
