"""Intervals for evaluation scores: Wilson for rates (success, accuracy), the bootstrap for R^2 and for the
median of benchmark rounds."""

from __future__ import annotations

import math

import torch


def wilson(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a success rate (95% at z = 1.96); sound at 0 or n successes."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def r2_score(pred_BK: torch.Tensor, true_BK: torch.Tensor) -> torch.Tensor:
    """Coefficient of determination per output column, averaged over columns (sklearn's uniform average);
    a leading batch of resamples (R, B, K) gives one score per resample."""
    sse = (pred_BK - true_BK).square().sum(dim=-2)
    sst = (true_BK - true_BK.mean(dim=-2, keepdim=True)).square().sum(dim=-2).clamp_min(1e-12)
    return (1 - sse / sst).mean(dim=-1)


def bootstrap_r2(pred_BK: torch.Tensor, true_BK: torch.Tensor, *, resamples: int, seed: int,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``r2_score`` over the test rows, all resamples in one batched call."""
    g = torch.Generator().manual_seed(seed)
    idx_RB = torch.randint(0, len(true_BK), (resamples, len(true_BK)), generator=g)
    scores_R = r2_score(pred_BK.double()[idx_RB], true_BK.double()[idx_RB])
    lo, hi = torch.quantile(scores_R, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=scores_R.dtype))
    return float(lo), float(hi)


def bootstrap_median(values: list[float], *, resamples: int = 2000, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float, float]:
    """The median of ``values`` (e.g. per-round time ratios) and its percentile bootstrap interval."""
    x_N = torch.tensor(values, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    medians_R = torch.quantile(x_N[torch.randint(0, len(x_N), (resamples, len(x_N)), generator=g)], 0.5, dim=1)
    lo, hi = torch.quantile(medians_R, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return float(torch.quantile(x_N, 0.5)), float(lo), float(hi)
