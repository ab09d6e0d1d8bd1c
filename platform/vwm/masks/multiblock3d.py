"""Multi-block 3D masks (V-JEPA): the target is a union of spatio-temporal blocks, the context the rest.

Randomness comes only from generators keyed by (seed, epoch, step, rank, mask set), so any step's masks
can be recomputed on resume without replaying earlier steps, and no counter is shared between processes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from vwm.config import MaskSetConfig

Grid = tuple[int, int, int]
_MAX_TRIES = 50


def keyed_generator(*keys: int) -> torch.Generator:
    """A torch generator whose stream is a pure function of the integer keys."""
    seed = int(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(1, np.uint64)[0])
    return torch.Generator().manual_seed(seed & 0x7FFF_FFFF_FFFF_FFFF)


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + torch.rand(1, generator=gen).item() * (hi - lo)


def block_size(gen: torch.Generator, grid: Grid, s: MaskSetConfig) -> tuple[int, int, int]:
    """(t, h, w) of every block of this set for one batch: equal sizes keep token counts comparable."""
    gt, gh, gw = grid
    t = max(1, int(gt * _uniform(gen, *s.temporal_scale)))
    n = int(gh * gw * _uniform(gen, *s.spatial_scale))
    ar = _uniform(gen, *s.aspect_ratio)
    h = min(gh, max(1, int(round(math.sqrt(n * ar)))))
    w = min(gw, max(1, int(round(math.sqrt(n / ar)))))
    return t, h, w


def _masked_volume(gen: torch.Generator, grid: Grid, size: tuple[int, int, int], num_blocks: int,
                   anchor: str = "random") -> torch.Tensor:
    gt, gh, gw = grid
    t, h, w = size
    masked_THW = torch.zeros(grid, dtype=torch.bool)
    for _ in range(num_blocks):
        t0 = gt - t if anchor == "end" else int(torch.randint(0, gt - t + 1, (1,), generator=gen))
        h0 = int(torch.randint(0, gh - h + 1, (1,), generator=gen))
        w0 = int(torch.randint(0, gw - w + 1, (1,), generator=gen))
        masked_THW[t0:t0 + t, h0:h0 + h, w0:w0 + w] = True
    return masked_THW.flatten()


def sample_mask_set(size_gen: torch.Generator, pos_gen: torch.Generator, grid: Grid, s: MaskSetConfig,
                    batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Context and target token indices, (B, N) and (B, K), sorted, disjoint, equal counts across the batch.

    Overlapping blocks make the union's size vary per sample; like V-JEPA we cut every sample down to the
    batch minimum, but we drop a random subset rather than the highest indices (which are always the last
    frames) so no region of the clip is systematically left out.
    """
    size = block_size(size_gen, grid, s)
    masks = []
    for _ in range(batch_size):
        for _ in range(_MAX_TRIES):
            masked = _masked_volume(pos_gen, grid, size, s.num_blocks, s.temporal_anchor)
            if not masked.all():
                break
        else:
            raise RuntimeError(f"mask set {s} left no context tokens in {_MAX_TRIES} tries on grid {grid}; "
                               "lower spatial_scale or num_blocks")
        masks.append(masked)
    k = min(int(m.sum()) for m in masks)
    n = min(int((~m).sum()) for m in masks)

    def subset(idx: torch.Tensor, count: int) -> torch.Tensor:
        keep = torch.randperm(len(idx), generator=pos_gen)[:count]
        return idx[keep].sort().values

    tgt = [subset(m.nonzero().squeeze(1), k) for m in masks]
    ctx = [subset((~m).nonzero().squeeze(1), n) for m in masks]
    return torch.stack(ctx), torch.stack(tgt)


def empty_context_rate(s: MaskSetConfig, grid: Grid, draws: int = 64) -> float:
    """Fraction of fixed-seed draws in which this set's blocks cover every token (a config check)."""
    empty = 0
    for d in range(draws):
        size = block_size(keyed_generator(d, 0xC0F), grid, s)
        empty += bool(_masked_volume(keyed_generator(d, 0xC0F, 1), grid, size, s.num_blocks, s.temporal_anchor).all())
    return empty / draws


def context_problems(sets: list[MaskSetConfig], grid: Grid) -> list[str]:
    """One message per mask set that too often leaves the context encoder no visible token."""
    problems = []
    for i, s in enumerate(sets):
        rate = empty_context_rate(s, grid)
        if rate > 0.2:
            problems.append(f"mask.sets.{i} (num_blocks={s.num_blocks}, spatial_scale={list(s.spatial_scale)}) "
                            f"masks every token of the {grid[1]}x{grid[2]} grid in {rate:.0%} of draws and "
                            "leaves no context; lower spatial_scale or num_blocks")
    return problems


def sample_masks(sets: list[MaskSetConfig], grid: Grid, batch_size: int, *, seed: int, epoch: int, step: int,
                 rank: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Masks for one batch: one (context, target) index pair per mask set."""
    out = []
    for i, s in enumerate(sets):
        # block sizes are shared by all ranks for a step (as in V-JEPA); positions differ per rank
        size_gen = keyed_generator(seed, epoch, step, i, 0x51CE)
        pos_gen = keyed_generator(seed, epoch, step, i, rank)
        out.append(sample_mask_set(size_gen, pos_gen, grid, s, batch_size))
    return out
