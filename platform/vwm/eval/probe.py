"""Linear probe on frozen target-encoder features: the labelled objective of sweeps (``eval/probe_acc``).

Labels come from each video's metadata: the synthetic videos carry ``direction`` (of the main object) and
``num_objects``; shards carry whatever their ``KEY.json`` holds. Features are the target encoder's tokens
averaged over space but kept per time slot, so that a linear classifier can still read motion.
"""

from __future__ import annotations

import logging
import zlib

import numpy as np
import torch
import torch.nn.functional as F

from vwm.config import DataConfig, ProbeConfig
from vwm.data.synthetic import render, video_spec
from vwm.data.transforms import resize_clip
from vwm.models.preprocess import normalize_clips

log = logging.getLogger(__name__)

HELDOUT_SEED_OFFSET = 2_000_003  # probe videos: a seed no training run of this seed samples from


def synthetic_probe_set(data: DataConfig, probe: ProbeConfig, seed: int) -> tuple[torch.Tensor, list]:
    """One clip (from a random start) of each of ``probe.clips`` held-out synthetic videos, and its label."""
    s, span = data.synthetic, (data.frames - 1) * data.frame_step + 1
    clips, labels = [], []
    for index in range(probe.clips):
        spec = video_spec(s, seed + HELDOUT_SEED_OFFSET, index)
        start = int(np.random.default_rng([seed, index, 0x9B0]).integers(0, s.video_frames - span + 1))
        frames_THWC = render(spec, start + np.arange(data.frames) * data.frame_step, s.height, s.width)
        clips.append(resize_clip(torch.from_numpy(frames_THWC), data.crop))
        labels.append(spec.metadata()[probe.label])
    return torch.stack(clips), labels


def shard_probe_set(data: DataConfig, probe: ProbeConfig, seed: int) -> tuple[torch.Tensor, list]:
    """Up to ``probe.clips`` labelled clips from ``probe.paths``, one per video; unreadable videos are
    skipped and counted, a video without the label fails with its file named."""
    from vwm.data.decode import DecodeError, decode_clips
    from vwm.data.shards import DataSourceError, iter_samples, list_sources

    clips, labels, skipped = [], [], 0
    for uri in list_sources(probe.paths, data.endpoint_url):
        for sample in iter_samples(uri, data.endpoint_url):
            if len(clips) == probe.clips:
                break
            if isinstance(sample, tuple):  # a Skip: only those that lose a video count
                skipped += int(sample.lost)
                continue
            if probe.label not in sample.meta:
                raise DataSourceError(f"{sample.source}: no {probe.label!r} in its metadata (keys: "
                                      f"{sorted(sample.meta)}); set monitor.probe.label to one of them, or "
                                      "monitor.probe.paths to labelled shards")
            rng = np.random.default_rng([seed, zlib.crc32(sample.source.encode()), 0x9B0])
            try:
                (clip_THWC,) = decode_clips(sample.video, frames=data.frames, frame_step=data.frame_step,
                                            target_fps=data.target_fps, clips_per_video=1, rng=rng)
            except DecodeError as e:
                skipped += 1
                log.warning("probe set: skipped %s (%s)", sample.source, e)
                continue
            clips.append(resize_clip(torch.from_numpy(clip_THWC), data.crop))
            labels.append(sample.meta[probe.label])
    if skipped:
        log.warning("probe set: %d unreadable videos skipped", skipped)
    if len(set(map(str, labels))) < 2:
        raise DataSourceError(f"monitor.probe.paths {probe.paths}: {len(clips)} readable labelled videos with "
                              f"{len(set(map(str, labels)))} distinct {probe.label!r} values; a probe needs two or more")
    return torch.stack(clips), labels


def probe_set(data: DataConfig, probe: ProbeConfig, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 clips (B, T, H, W, C) and integer class labels (B,), classes in sorted order of the values."""
    clips_BTHWC, raw = (shard_probe_set if probe.paths else synthetic_probe_set)(data, probe, seed)
    classes = sorted(set(map(str, raw)))
    labels_B = torch.tensor([classes.index(str(v)) for v in raw])
    order = torch.randperm(len(labels_B), generator=torch.Generator().manual_seed(seed))  # shards may come sorted
    return clips_BTHWC[order], labels_B[order]


@torch.no_grad()
def pooled_features(target: torch.nn.Module, clips_BTHWC: torch.Tensor, grid: tuple[int, int, int],
                    device: torch.device, batch_size: int = 32) -> torch.Tensor:
    """(B, T' * D): target features averaged over each time slot's spatial tokens."""
    from vwm.models.jepa import target_features

    out = []
    for chunk in clips_BTHWC.split(batch_size):
        h_BND = target_features(target, normalize_clips(chunk.to(device))).float()
        b, _, d = h_BND.shape
        out.append(h_BND.view(b, grid[0], grid[1] * grid[2], d).mean(dim=2).reshape(b, -1).cpu())
    return torch.cat(out)


def linear_probe_accuracy(features_BF: torch.Tensor, labels_B: torch.Tensor, *, train_fraction: float,
                          steps: int, l2: float = 1e-3) -> float:
    """Fit a multinomial logistic regression on the first ``train_fraction`` of the rows (standardised
    with that split's statistics, L-BFGS from zero, so the result is deterministic) and return its
    accuracy on the rest."""
    n_train = int(round(len(labels_B) * train_fraction))
    if not 0 < n_train < len(labels_B):
        raise ValueError(f"train_fraction {train_fraction} leaves no train or no test rows of {len(labels_B)}")
    x = features_BF.double()
    mean, std = x[:n_train].mean(0), x[:n_train].std(0).clamp_min(1e-6)
    x = (x - mean) / std
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
        predicted = (x[n_train:] @ weight_FK + bias_K).argmax(dim=1)
    return float((predicted == labels_B[n_train:]).double().mean())


def heldout_probe(target: torch.nn.Module, clips_BTHWC: torch.Tensor, labels_B: torch.Tensor, probe: ProbeConfig,
                  grid: tuple[int, int, int], device: torch.device) -> dict[str, float]:
    feats_BF = pooled_features(target, clips_BTHWC, grid, device)
    if not torch.isfinite(feats_BF).all():  # a diverged run: no accuracy to speak of
        return {"eval/probe_acc": float("nan")}
    return {"eval/probe_acc": linear_probe_accuracy(feats_BF, labels_B, train_fraction=probe.train_fraction,
                                                    steps=probe.steps)}
