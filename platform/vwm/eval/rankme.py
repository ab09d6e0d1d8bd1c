"""Collapse diagnostics: per-dimension feature std and RankMe (Garrido et al., 2023)."""

from __future__ import annotations

import torch


@torch.no_grad()
def feature_std(features_ND: torch.Tensor) -> float:
    """Mean over dimensions of the std across samples; it falls towards 0 when features collapse."""
    return float(features_ND.float().std(dim=0).mean())


@torch.no_grad()
def rankme(features_ND: torch.Tensor, eps: float = 1e-7) -> float:
    """Effective rank: exp of the entropy of the normalised singular values, between 1 and min(N, D);
    NaN for non-finite features (a diverged run), which the SVD would reject with an obscure error."""
    if not torch.isfinite(features_ND).all():
        return float("nan")
    s = torch.linalg.svdvals(features_ND.float())
    p = s / (s.sum() + eps) + eps
    return float(torch.exp(-(p * p.log()).sum()))


def token_sample(features_BND: torch.Tensor, max_rows: int = 2048) -> torch.Tensor:
    """A strided subsample of tokens as rows (N, D), bounding the SVD's cost."""
    rows = features_BND.reshape(-1, features_BND.shape[-1])
    stride = max(1, rows.shape[0] // max_rows)
    return rows[::stride][:max_rows]


@torch.no_grad()
def heldout_rankme(target: torch.nn.Module, clips_BTHWC: torch.Tensor, device: torch.device) -> dict[str, float]:
    """Label-free quality of the target encoder: RankMe and std of its token features on held-out clips."""
    from vwm.models.jepa import target_features
    from vwm.models.preprocess import normalize_clips

    rows_ND = token_sample(target_features(target, normalize_clips(clips_BTHWC.to(device))))
    return {"eval/rankme": rankme(rows_ND), "eval/std": feature_std(rows_ND)}
