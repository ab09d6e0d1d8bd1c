"""The model's input contract, defined once: uint8 RGB frames -> normalised (B, C, T, H, W) floats.

Training normalises on the device (4x fewer bytes move as uint8); the world-model artifact records these
statistics in its manifest and applies the same function in ``encode``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# ImageNet statistics, as V-JEPA uses
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def normalize_clips(clips_BTHWC: torch.Tensor, dtype: torch.dtype = torch.float32, mean=MEAN,
                    std=STD) -> torch.Tensor:
    """uint8 (B, T, H, W, C) -> normalised (B, C, T, H, W) in ``dtype``, on the clips' device."""
    x = clips_BTHWC.permute(0, 4, 1, 2, 3).to(dtype).div_(255.0)
    mean_t = torch.tensor(mean, dtype=dtype, device=x.device).view(1, 3, 1, 1, 1)
    std_t = torch.tensor(std, dtype=dtype, device=x.device).view(1, 3, 1, 1, 1)
    return (x - mean_t) / std_t


def center_square(clips_BTHWC: torch.Tensor, size: int) -> torch.Tensor:
    """Evaluation-time geometry: the central square of each frame, resized to ``size`` (bilinear,
    antialiased), uint8 in and out. A no-op for frames already ``size`` x ``size``."""
    B, T, H, W, C = clips_BTHWC.shape
    if H == size and W == size:
        return clips_BTHWC
    side = min(H, W)
    top, left = (H - side) // 2, (W - side) // 2
    x = clips_BTHWC[:, :, top:top + side, left:left + side].reshape(B * T, side, side, C).permute(0, 3, 1, 2)
    x = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).reshape(B, T, size, size, C)
