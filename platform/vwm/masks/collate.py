"""Batch collation: uint8 clips to a tensor plus the step's masks, computed on CPU beside the loader."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch

from vwm.config import MaskConfig
from vwm.masks.multiblock3d import Grid, sample_masks


@dataclass
class Batch:
    clips_BTHWC: torch.Tensor  # uint8; normalised on the training device, which moves 4x fewer bytes
    masks: list[tuple[torch.Tensor, torch.Tensor]]  # per mask set: context (B, N), target (B, K) indices
    position: tuple[int, int] | None = None  # (epoch, file order) of the batch's last source file


class MaskCollator:
    """Collate function for one worker's stream of batches; masks come from keyed generators, never from
    a counter shared between processes.

    Rows that name their source (the pipeline's ``key`` and ``epoch`` columns) key the masks by
    (seed, epoch, hash of the batch's keys, rank): Ray Data collates prefetched batches in a thread pool,
    so the order of calls need not be the order of delivery, and a call counter would hand different
    masks to the same batch from run to run. Sources without keys (in-process synthetic clips, called in
    order) use a counter started at the resume step.
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
        position = None
        if "key" in batch and "epoch" in batch:
            epoch = int(np.max(batch["epoch"]))
            content = zlib.crc32("|".join(map(str, batch["key"])).encode())
            masks = sample_masks(self.cfg.sets, self.grid, clips.shape[0], seed=self.seed, epoch=epoch,
                                 step=content, rank=self.rank)
            position = max(zip(batch["epoch"].tolist(), batch["order"].tolist()))
        else:
            masks = self.masks_for(self.next_step, clips.shape[0])
            self.next_step += 1
        return Batch(clips_BTHWC=clips, masks=masks, position=position)
