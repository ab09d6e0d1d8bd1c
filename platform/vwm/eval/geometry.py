"""Does a representation order states the way a planning cost needs? A planner scores candidates by the
feature distance of their imagined outcome to the goal's features; that steers it only where the distance
grows with the true distance to the goal. ``cost_rank_correlation`` measures this on held-out frames,
cheaply, before any planning: the rank (Spearman) correlation between the L1 feature distance and the
state distance from a few anchor frames to all the others, overall and among each anchor's nearest
quarter of states (the range in which a plan has to choose).
"""

from __future__ import annotations

import torch


def _ranks(x_M: torch.Tensor) -> torch.Tensor:
    return x_M.argsort().argsort().double()


def rank_correlation(a_M: torch.Tensor, b_M: torch.Tensor) -> float:
    """Spearman's rho of two 1-d samples (ties broken by order: distances of real numbers rarely tie)."""
    ra, rb = _ranks(a_M), _ranks(b_M)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = (ra.norm() * rb.norm()).item()
    return float((ra @ rb).item() / denom) if denom > 0 else 0.0


@torch.no_grad()
def cost_rank_correlation(z_FND: torch.Tensor, states_FS: torch.Tensor, anchors: int = 8) -> dict[str, float]:
    """Mean over ``anchors`` frames (spread over the F frames) of the rank correlation between the L1
    feature distance and the Euclidean state distance to every other frame: ``all``, and ``near`` (the
    anchor's nearest quarter by state). 1 orders like the truth; 0 does not order at all."""
    F = z_FND.shape[0]
    z_FX, s_FS = z_FND.flatten(1).float(), states_FS.float()
    overall, near = [], []
    for i in torch.linspace(0, F - 1, min(anchors, F)).round().long().unique().tolist():
        others = torch.arange(F, device=z_FX.device) != i
        d_feat_M = (z_FX[others] - z_FX[i]).abs().mean(1)
        d_state_M = (s_FS[others] - s_FS[i]).norm(dim=1)
        overall.append(rank_correlation(d_feat_M, d_state_M))
        close = d_state_M.argsort()[: max(4, len(d_state_M) // 4)]
        near.append(rank_correlation(d_feat_M[close], d_state_M[close]))
    return {"all": sum(overall) / len(overall), "near": sum(near) / len(near)}
