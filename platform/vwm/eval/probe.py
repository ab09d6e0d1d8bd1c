"""Probes on frozen features: how much of a label an encoder's tokens carry.

Two readouts, as V-JEPA evaluates: a *linear* probe on the tokens averaged over space but kept per time
slot (so motion stays readable), and an *attentive* probe, a cross-attention pooler with one learned query
over every token followed by a linear head. Classes are scored by accuracy with a Wilson interval,
regression targets by R^2 with a bootstrap interval. Every fit is deterministic for a seed: features are
standardised with the train split's statistics, linear fits are closed form or L-BFGS from zero, and the
attentive probe draws its init and batches from seeded generators.

The trainer's probe monitor (``eval/probe_acc`` / ``eval/probe_r2``, the sweeps' labelled objective) and
``vwm evaluate probe`` share these functions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vwm.config import AttentiveProbeConfig, DataConfig, ProbeConfig
from vwm.eval.labelled import Target, shard_rows, shuffled, synthetic_rows
from vwm.eval.stats import bootstrap_r2, r2_score, wilson
from vwm.models.preprocess import normalize_clips

RIDGE_ALPHAS = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)  # chosen per target by 5-fold CV on the train split
POSITION_CODE_DIM = 48  # pixel tokens: a fixed sin-cos code of where each patch sits


# ---------------------------------------------------------------------------------------------- features
@torch.no_grad()
def encoder_tokens(encoder: nn.Module, clips_BTHWC: torch.Tensor, device: torch.device, batch_size: int = 32,
                   layer_norm: bool = False) -> torch.Tensor:
    """(B, N, D) float32 on the CPU: the encoder's tokens of every clip (optionally layer-normed, as the
    JEPA targets are)."""
    out = []
    for chunk in clips_BTHWC.split(batch_size):
        h_BND = encoder(normalize_clips(chunk.to(device))).float()
        out.append((F.layer_norm(h_BND, h_BND.shape[-1:]) if layer_norm else h_BND).cpu())
    return torch.cat(out)


def pixel_tokens(clips_BTHWC: torch.Tensor, patch: int, tubelet: int) -> torch.Tensor:
    """The pixel baseline: each (tubelet x patch x patch) block of normalised pixels, at half resolution
    (2 x 2 means, which keeps the probe's cost near an encoder's), as a token, with a fixed code of its
    place in the grid appended (an encoder's tokens carry theirs from the position embedding)."""
    from vwm.models.layers import sincos_3d

    x = normalize_clips(clips_BTHWC)
    B, C, T, H, W = x.shape
    grid = (T // tubelet, H // patch, W // patch)
    if patch % 2 == 0:
        x, patch = F.avg_pool3d(x, (1, 2, 2)), patch // 2
    x = x.reshape(B, C, grid[0], tubelet, grid[1], patch, grid[2], patch).permute(0, 2, 4, 6, 1, 3, 5, 7)
    tokens_BNP = x.reshape(B, grid[0] * grid[1] * grid[2], -1)
    code_NE = sincos_3d(POSITION_CODE_DIM, grid, False).to(tokens_BNP.dtype)
    return torch.cat([tokens_BNP, code_NE.expand(B, -1, -1)], dim=-1)


def pooled(tokens_BND: torch.Tensor, time_slots: int) -> torch.Tensor:
    """(B, T' * D): tokens averaged over each time slot's spatial positions (tokens come time-major)."""
    B, N, D = tokens_BND.shape
    return tokens_BND.view(B, time_slots, N // time_slots, D).mean(dim=2).reshape(B, -1)


def _standardise(x: torch.Tensor, n_train: int, dims) -> torch.Tensor:
    mean = x[:n_train].mean(dim=dims, keepdim=True)
    std = x[:n_train].std(dim=dims, keepdim=True).clamp_min(1e-6)
    return (x - mean) / std


# ---------------------------------------------------------------------------------------------- linear
def logistic_predict(feats_BF: torch.Tensor, labels_B: torch.Tensor, n_train: int, *, steps: int = 100,
                     l2: float = 1e-3) -> torch.Tensor:
    """Class predictions for rows ``n_train:`` of a multinomial logistic regression fitted (L-BFGS from
    zero) on the rows before them."""
    x = _standardise(feats_BF.double(), n_train, 0)
    num_classes = int(labels_B.max()) + 1
    weight_FK = torch.zeros(x.shape[1], num_classes, dtype=x.dtype, requires_grad=True)
    bias_K = torch.zeros(num_classes, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([weight_FK, bias_K], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x[:n_train] @ weight_FK + bias_K, labels_B[:n_train]) + l2 * weight_FK.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return (x[n_train:] @ weight_FK + bias_K).argmax(dim=1)


def _ridge_fit(x_BF: torch.Tensor, y_BK: torch.Tensor, alpha: float) -> torch.Tensor:
    xb = torch.cat([x_BF, torch.ones(len(x_BF), 1, dtype=x_BF.dtype)], dim=1)
    reg = alpha * torch.eye(xb.shape[1], dtype=x_BF.dtype)
    reg[-1, -1] = 0  # the intercept is not shrunk
    return torch.linalg.solve(xb.T @ xb + reg, xb.T @ y_BK)


def _ridge_apply(x_BF: torch.Tensor, w_FK: torch.Tensor) -> torch.Tensor:
    return x_BF @ w_FK[:-1] + w_FK[-1]


def ridge_predict(feats_BF: torch.Tensor, y_BK: torch.Tensor, n_train: int, folds: int = 5) -> torch.Tensor:
    """Predictions for rows ``n_train:`` of a ridge regression fitted on the rows before them, its strength
    chosen from ``RIDGE_ALPHAS`` by contiguous k-fold cross-validation on those rows."""
    x, y = _standardise(feats_BF.double(), n_train, 0), y_BK.double()
    xt, yt = x[:n_train], y[:n_train]
    edges = torch.linspace(0, n_train, folds + 1).long().tolist()

    def cv_error(alpha: float) -> float:
        err = 0.0
        for lo, hi in zip(edges[:-1], edges[1:]):
            keep = torch.cat([torch.arange(0, lo), torch.arange(hi, n_train)])
            w = _ridge_fit(xt[keep], yt[keep], alpha)
            err += float((_ridge_apply(xt[lo:hi], w) - yt[lo:hi]).square().sum())
        return err

    best = min(RIDGE_ALPHAS, key=cv_error)
    return _ridge_apply(x[n_train:], _ridge_fit(xt, yt, best))


# ------------------------------------------------------------------------------------------- attentive
class AttentiveProbe(nn.Module):
    """V-JEPA's attentive probe: a learned query cross-attends over the layer-normed tokens (one pre-norm
    block with an MLP), then a linear head reads the pooled vector.

    With a single query, attention factorises: the logits are the tokens against each head's query folded
    through the key weights (``keys``), and the values' projection commutes with the attention-weighted
    sum (``readout`` takes that sum per head). So the probe never projects the B x N tokens, and probes of
    several targets share the two passes over them, as multi-head attention would compute each exactly.
    The key/value LayerNorm's affine part is absorbed by the key and value weights (its shift is constant
    over tokens), so the tokens are normalised once, outside, without parameters.
    """

    def __init__(self, dim: int, outputs: int, heads: int):
        super().__init__()
        self.heads = heads if dim % heads == 0 else 1
        self.query_D = nn.Parameter(torch.randn(dim))  # unit scale: a 0.02-scale query leaves attention uniform
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.norm_out = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, outputs)

    def keys(self) -> torch.Tensor:
        """(H, D): a token's attention logit in head h is its dot product with row h (the key bias cancels)."""
        D, H = self.query_D.shape[0], self.heads
        q_HE = self.q(self.query_D).view(H, D // H)
        return torch.einsum("he,hed->hd", q_HE, self.k.weight.view(H, D // H, D)) / (D // H) ** 0.5

    def readout(self, pooled_BHD: torch.Tensor) -> torch.Tensor:
        """The output from each head's attention-weighted mean of the tokens."""
        B, H, D = pooled_BHD.shape
        v_BHE = torch.einsum("bhd,hed->bhe", pooled_BHD, self.v.weight.view(H, D // H, D)) + self.v.bias.view(H, -1)
        x_BD = self.query_D + self.o(v_BHE.reshape(B, D))
        x_BD = x_BD + self.mlp(self.norm_mlp(x_BD))
        return self.head(self.norm_out(x_BD))

    def forward(self, normed_BND: torch.Tensor) -> torch.Tensor:
        return attend([self], normed_BND)[0]


def attend(probes: list[AttentiveProbe], normed_BND: torch.Tensor) -> list[torch.Tensor]:
    """Every probe's output, reading the tokens twice in all: one matmul for every head's logits, one for
    every head's weighted mean."""
    keys = [p.keys() for p in probes]
    attn_BKN = (normed_BND @ torch.cat(keys).T).transpose(1, 2).softmax(dim=-1)
    pooled_BKD = attn_BKN @ normed_BND
    return [p.readout(part) for p, part in zip(probes, pooled_BKD.split([len(k) for k in keys], dim=1))]


def attentive_predict(tokens_BND: torch.Tensor, targets: list[Target], n_train: int, cfg: AttentiveProbeConfig,
                      seed: int) -> list[torch.Tensor]:
    """For each target, predictions for rows ``n_train:`` (classes, or values in the target's units) of its
    own attentive probe trained with AdamW (cosine schedule) on the rows before them. The probes share the
    batches, not parameters: each trains as it would alone on the same batch sequence."""
    x = F.layer_norm(tokens_BND.float(), tokens_BND.shape[-1:])
    ys, stats, probes = [], [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for t in targets:
            if t.kind == "class":
                ys.append(t.values)
                stats.append(None)
                probes.append(AttentiveProbe(x.shape[-1], len(t.classes), cfg.heads))
            else:
                mean, std = t.values[:n_train].mean(0), t.values[:n_train].std(0).clamp_min(1e-9)
                ys.append(((t.values - mean) / std).float())
                stats.append((mean, std))
                probes.append(AttentiveProbe(x.shape[-1], t.values.shape[1], cfg.heads))
    params = [q for p in probes for q in p.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.steps)
    g = torch.Generator().manual_seed(seed)
    batch = min(cfg.batch_size, n_train)
    with torch.enable_grad():
        for _ in range(cfg.steps):
            idx = torch.randperm(n_train, generator=g)[:batch]
            loss = sum(F.cross_entropy(out, y[idx]) if s is None else F.mse_loss(out, y[idx])
                       for out, y, s in zip(attend(probes, x[idx]), ys, stats))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        outs = [torch.cat(parts) for parts in zip(*(attend(probes, chunk) for chunk in x[n_train:].split(256)))]
    return [out.argmax(dim=1) if s is None else out.double() * s[1] + s[0] for out, s in zip(outs, stats)]


# ---------------------------------------------------------------------------------------------- scoring
def score(target: Target, pred: torch.Tensor, n_train: int, *, resamples: int, seed: int) -> dict:
    """The test split's score with its 95% interval: accuracy (Wilson) or R^2 (bootstrap)."""
    true = target.values[n_train:]
    n = len(true)
    if target.kind == "class":
        correct = int((pred == true).sum())
        lo, hi = wilson(correct, n)
        chance = float(torch.bincount(true).max()) / n
        return {"metric": "acc", "value": correct / n, "ci_low": lo, "ci_high": hi, "chance": chance, "n_test": n}
    lo, hi = bootstrap_r2(pred, true, resamples=resamples, seed=seed)
    return {"metric": "r2", "value": float(r2_score(pred.double(), true.double())), "ci_low": lo, "ci_high": hi,
            "chance": 0.0, "n_test": n}


def probe_scores(tokens_BND: torch.Tensor, time_slots: int, targets: dict[str, Target], probe: str, n_train: int,
                 attentive: AttentiveProbeConfig, *, seed: int, resamples: int) -> list[dict]:
    """One row per target: ``probe`` (linear or attentive) fitted on the first ``n_train`` clips, scored on
    the rest."""
    if probe == "attentive":
        preds = attentive_predict(tokens_BND, list(targets.values()), n_train, attentive, seed)
    else:
        feats_BF = pooled(tokens_BND, time_slots)
        preds = [logistic_predict(feats_BF, t.values, n_train) if t.kind == "class"
                 else ridge_predict(feats_BF, t.values, n_train) for t in targets.values()]
    return [{"target": name, "probe": probe, **score(t, pred, n_train, resamples=resamples, seed=seed)}
            for (name, t), pred in zip(targets.items(), preds)]


# ------------------------------------------------------------------------------- the trainer's monitor
def probe_set(data: DataConfig, probe: ProbeConfig, seed: int) -> tuple[torch.Tensor, Target]:
    """uint8 clips (B, T, H, W, C) and their target: held-out synthetic clips, or ``probe.paths``' videos."""
    geometry = {"frames": data.frames, "frame_step": data.frame_step, "crop": data.crop, "count": probe.clips,
                "seed": seed}
    if probe.paths:
        clips, rows, sources = shard_rows(probe.paths, data.endpoint_url, [probe.label],
                                          target_fps=data.target_fps, **geometry)
    else:
        clips, rows, sources = synthetic_rows(data.synthetic, **geometry)
    where = f"monitor.probe.paths {probe.paths}" if probe.paths else "synthetic probe clips"
    labelled = shuffled(clips, rows, sources, [probe.label], where, seed)
    return labelled.clips_BTHWC, labelled.targets[probe.label]


def heldout_probe(target_encoder: nn.Module, clips_BTHWC: torch.Tensor, target: Target, probe: ProbeConfig,
                  grid: tuple[int, int, int], device: torch.device) -> dict[str, float]:
    """``eval/probe_acc`` (a class) or ``eval/probe_r2`` (regression) of the linear probe on the EMA target's
    layer-normed tokens."""
    key = "eval/probe_acc" if target.kind == "class" else "eval/probe_r2"
    tokens_BND = encoder_tokens(target_encoder, clips_BTHWC, device, layer_norm=True)
    if not torch.isfinite(tokens_BND).all():  # a diverged run: no score to speak of
        return {key: float("nan")}
    n_train = int(round(len(clips_BTHWC) * probe.train_fraction))
    feats_BF = pooled(tokens_BND, grid[0])
    if target.kind == "class":
        pred = logistic_predict(feats_BF, target.values, n_train, steps=probe.steps)
        return {key: float((pred == target.values[n_train:]).double().mean())}
    return {key: float(r2_score(ridge_predict(feats_BF, target.values, n_train), target.values[n_train:]))}
