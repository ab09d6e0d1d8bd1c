"""Labelled clips for probes: synthetic videos under a held-out seed (labels read at each clip's middle),
shards whose ``KEY.json`` holds the labels, or a CSV of ``path,label...`` rows.

A target is a class (strings, booleans, integers: accuracy) or a regression target (floats or lists of
numbers: R^2). Clips come shuffled by the seed, since shards and CSVs often come sorted by label.
"""

from __future__ import annotations

import csv
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vwm.config import SYNTHETIC_TARGETS, SyntheticConfig
from vwm.data.shards import DataSourceError, parse_cell
from vwm.data.synthetic import clip_labels, render, video_spec
from vwm.data.transforms import resize_clip

log = logging.getLogger(__name__)

HELDOUT_SEED_OFFSET = 2_000_003  # probe videos: a seed no training run of this seed samples from


class LabelError(DataSourceError):
    """Labels a probe cannot use; the message names the file or key and what to change."""


@dataclass
class Target:
    name: str
    kind: str  # "class" or "regression"
    values: torch.Tensor  # class: (B,) int64 indices into ``classes``; regression: (B, K) float64
    classes: list[str]


@dataclass
class LabelledClips:
    clips_BTHWC: torch.Tensor  # uint8
    targets: dict[str, Target]
    sources: list[str]


def synthetic_rows(synth: SyntheticConfig, *, frames: int, frame_step: int, crop: int, count: int,
                   seed: int) -> tuple[torch.Tensor, list[dict], list[str]]:
    """One clip from a random start of each of ``count`` held-out synthetic videos, with ``clip_labels``."""
    span = (frames - 1) * frame_step + 1
    if span > synth.video_frames:
        raise LabelError(f"a clip spans {span} video frames but synthetic videos have {synth.video_frames}; "
                         "raise data.synthetic.video_frames or lower the frame step")
    clips, rows = [], []
    for index in range(count):
        spec = video_spec(synth, seed + HELDOUT_SEED_OFFSET, index)
        start = int(np.random.default_rng([seed, index, 0x9B0]).integers(0, synth.video_frames - span + 1))
        frame_idx = start + np.arange(frames) * frame_step
        clips.append(resize_clip(torch.from_numpy(render(spec, frame_idx, synth.height, synth.width)), crop))
        rows.append(clip_labels(spec, frame_idx, synth.height, synth.width))
    return torch.stack(clips), rows, [f"synthetic:{seed + HELDOUT_SEED_OFFSET}/{i}" for i in range(count)]


def _decode_one(video, source: str, *, frames: int, frame_step: int, target_fps: float | None, crop: int,
                seed: int):
    """One clip of a video (bytes or path) from a start keyed by its name; None if it cannot be read."""
    from vwm.data.decode import DecodeError, decode_clips

    rng = np.random.default_rng([seed, zlib.crc32(source.encode()), 0x9B0])
    try:
        (clip_THWC,) = decode_clips(video, frames=frames, frame_step=frame_step, target_fps=target_fps,
                                    clips_per_video=1, rng=rng)
    except DecodeError as e:
        log.warning("probe set: skipped %s (%s)", source, e)
        return None
    return resize_clip(torch.from_numpy(clip_THWC), crop)


def shard_rows(paths: list[str], endpoint_url: str | None, keys: list[str], *, frames: int, frame_step: int,
               crop: int, count: int, seed: int, target_fps: float | None = None):
    """Up to ``count`` clips of the videos in ``paths``, one per video, labelled from their metadata;
    unreadable videos are skipped and counted, a video without a key fails with its file named."""
    from vwm.data.shards import iter_samples, list_sources

    clips, rows, sources, skipped = [], [], [], 0
    for uri in list_sources(paths, endpoint_url):
        for sample in iter_samples(uri, endpoint_url):
            if len(clips) == count:
                break
            if isinstance(sample, tuple):  # a Skip: only those that lose a video count
                skipped += int(sample.lost)
                continue
            missing = [k for k in keys if k not in sample.meta]
            if missing:
                raise LabelError(f"{sample.source}: no {missing[0]!r} in its metadata (keys: {sorted(sample.meta)}); "
                                 "probe one of those keys, or point the paths at shards labelled with it")
            clip = _decode_one(sample.video, sample.source, frames=frames, frame_step=frame_step,
                               target_fps=target_fps, crop=crop, seed=seed)
            if clip is None:
                skipped += 1
                continue
            clips.append(clip)
            rows.append({k: sample.meta[k] for k in keys})
            sources.append(sample.source)
    if skipped:
        log.warning("probe set: %d unreadable videos skipped", skipped)
    if not clips:
        raise LabelError(f"{paths}: no readable labelled video")
    return torch.stack(clips), rows, sources


def csv_rows(path: str, keys: list[str], *, frames: int, frame_step: int, crop: int, count: int, seed: int):
    """Clips of the videos a CSV lists (a ``path`` column, relative to the CSV, and label columns)."""
    table = Path(path)
    if table.is_dir():
        table = table / "labels.csv"
    if not table.is_file():
        raise LabelError(f"{table}: no such CSV; give data.paths a CSV file or a folder holding labels.csv")
    with table.open(newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        missing = [k for k in ["path", *keys] if k not in columns]
        if missing:
            raise LabelError(f"{table}: no column {missing[0]!r} (columns: {columns}); the header needs path and "
                             "every target")
        records = list(reader)
    clips, rows, sources = [], [], []
    for rec in records:
        if len(clips) == count:
            break
        video = table.parent / rec["path"]
        clip = _decode_one(video.read_bytes(), str(video), frames=frames, frame_step=frame_step, target_fps=None,
                           crop=crop, seed=seed) if video.is_file() else None
        if clip is None:
            log.warning("probe set: skipped %s (missing or unreadable)", video)
            continue
        clips.append(clip)
        rows.append({k: parse_cell(rec[k]) for k in keys})
        sources.append(str(video))
    if not clips:
        raise LabelError(f"{table}: none of its {len(records)} videos could be read")
    return torch.stack(clips), rows, sources


def _kind(name: str, values: list) -> str:
    declared = SYNTHETIC_TARGETS.get(name)
    if declared is not None and all(not isinstance(v, str) for v in values):
        return "class" if declared == "class" else "regression"
    if all(isinstance(v, (list, tuple, float)) for v in values):
        return "regression"
    return "class"


def make_targets(rows: list[dict], names: list[str], source: str) -> dict[str, Target]:
    targets = {}
    for name in names:
        values = [r[name] for r in rows]
        if _kind(name, values) == "class":
            classes = sorted({str(v) for v in values})
            if len(classes) < 2:
                raise LabelError(f"{source}: {len(values)} clips with {len(classes)} distinct {name!r} value; "
                                 "a probe needs two or more")
            targets[name] = Target(name, "class", torch.tensor([classes.index(str(v)) for v in values]), classes)
        else:
            try:
                arr = torch.tensor([v if isinstance(v, (list, tuple)) else [v] for v in values], dtype=torch.float64)
            except (TypeError, ValueError):
                raise LabelError(f"{source}: {name!r} mixes numbers and other values or lists of other lengths; "
                                 "a regression target needs the same number of numbers on every clip") from None
            targets[name] = Target(name, "regression", arr, [])
    return targets


def shuffled(clips_BTHWC: torch.Tensor, rows: list[dict], sources: list[str], names: list[str], where: str,
             seed: int) -> LabelledClips:
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    rows, sources = [rows[i] for i in order], [sources[i] for i in order]
    return LabelledClips(clips_BTHWC[order], make_targets(rows, names, where), sources)


def labelled_clips(data, names: list[str], *, frames: int, crop: int, seed: int) -> LabelledClips:
    """The clips and targets ``data`` (a ``LabelledDataConfig``) names, at the encoder's frames and crop."""
    geometry = {"frames": frames, "frame_step": data.frame_step, "crop": crop, "count": data.clips, "seed": seed}
    if data.source == "synthetic":
        clips, rows, sources = synthetic_rows(data.synthetic, **geometry)
    elif data.source == "shards":
        clips, rows, sources = shard_rows(data.paths, data.endpoint_url, names, **geometry)
    else:
        clips, rows, sources = csv_rows(data.paths[0], names, **geometry)
    return shuffled(clips, rows, sources, names, f"data.paths {data.paths}" if data.paths else "synthetic", seed)
