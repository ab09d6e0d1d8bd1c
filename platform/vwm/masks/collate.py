"""Batch collation: uint8 clips to a tensor plus the step's masks, computed on CPU beside the loader."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from vwm.config import MaskConfig
from vwm.masks.multiblock3d import Grid, sample_masks


@dataclass
class Batch:
    clips_BTHWC: torch.Tensor  # uint8; normalised on the training device, which moves 4x fewer bytes
    masks: list[tuple[torch.Tensor, torch.Tensor]]  # per mask set: context (B, N), target (B, K) indices
    step: int
    position: tuple[int, int] | None = None  # (epoch, file order) of the batch's last source file


class MaskCollator:
    """Collate function for one worker's stream of batches.

    Batches arrive in a fixed order per worker, so a local step counter started at the resume step keys
    the masks by (seed, epoch, step, rank) without any counter shared between processes.
    """

    def __init__(self, cfg: MaskConfig, grid: Grid, *, seed: int, rank: int, steps_per_epoch: int,
                 start_step: int = 0):
        self.cfg, self.grid = cfg, grid
        self.seed, self.rank, self.steps_per_epoch = seed, rank, steps_per_epoch
        self.next_step = start_step

    def masks_for(self, step: int, batch_size: int):
        return sample_masks(self.cfg.sets, self.grid, batch_size, seed=self.seed,
                            epoch=step // self.steps_per_epoch, step=step, rank=self.rank)

    def __call__(self, batch: dict[str, np.ndarray]) -> Batch:
        clips = torch.as_tensor(np.ascontiguousarray(batch["clips"]))
        step = self.next_step
        self.next_step += 1
        position = None
        if "epoch" in batch and "order" in batch:
            position = max(zip(batch["epoch"].tolist(), batch["order"].tolist()))
        return Batch(clips_BTHWC=clips, masks=self.masks_for(step, clips.shape[0]), step=step, position=position)
