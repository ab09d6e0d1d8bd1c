"""Procedural videos with real motion structure: objects with velocities that bounce off the walls and
occlude each other. A video is a pure function of (seed, index), and positions follow a closed form
(a reflected straight line), so any frame range renders without simulating from frame 0.

The main object (index 0, whose labels probes read) is the largest, so it is identifiable in a frame with
several objects; ``clip_labels`` reads its position and velocity at a clip's middle frame, after any
bounces, which the video-level ``metadata`` (its initial direction) cannot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from vwm.config import SyntheticConfig
from vwm.data.transforms import resize_clip

_DIRECTIONS = ("right", "down", "left", "up")  # image coordinates: y grows downwards


@dataclass(frozen=True)
class VideoSpec:
    index: int
    background: tuple[int, int, int]
    shapes: tuple[str, ...]  # "disc" or "square", drawn in order: later objects occlude earlier ones
    colors: np.ndarray  # (K, 3) uint8
    radii: np.ndarray  # (K,) pixels
    start: np.ndarray  # (K, 2) x, y pixels
    velocity: np.ndarray  # (K, 2) pixels per frame

    def metadata(self) -> dict:
        """Per-video labels: object count, the main object's initial direction and its speed (a clip's own
        direction can differ after a bounce: ``clip_labels``)."""
        vx, vy = (float(v) for v in self.velocity[0])
        return {
            "index": self.index,
            "num_objects": len(self.shapes),
            "direction": direction_class(vx, vy),
            "speed": round(math.hypot(vx, vy), 4),
        }


def video_spec(cfg: SyntheticConfig, seed: int, index: int) -> VideoSpec:
    rng = np.random.default_rng([seed, index, 0x5EED])
    k = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    side = min(cfg.height, cfg.width)
    radii = np.sort(rng.uniform(0.08, 0.18, size=k))[::-1] * side  # the main object is the largest
    start = np.stack([rng.uniform(radii, cfg.width - radii), rng.uniform(radii, cfg.height - radii)], axis=1)
    angle = rng.uniform(0, 2 * math.pi, size=k)
    speed = rng.uniform(cfg.min_speed, cfg.max_speed, size=k)
    velocity = np.stack([np.cos(angle), np.sin(angle)], axis=1) * speed[:, None]
    return VideoSpec(
        index=index,
        background=tuple(int(c) for c in rng.integers(0, 60, size=3)),
        shapes=tuple(rng.choice(["disc", "square"], size=k).tolist()),
        colors=rng.integers(80, 256, size=(k, 3)).astype(np.uint8),
        radii=radii, start=start, velocity=velocity,
    )


def _reflect(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Position of a point moving on a line and bouncing between lo and hi (a triangle wave)."""
    span = hi - lo
    y = np.mod(x - lo, 2 * span)
    return lo + span - np.abs(y - span)


def _reflect_slope(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """+1 where the triangle wave of ``_reflect`` rises at x, -1 where it falls (after an odd number of bounces)."""
    return np.where(np.mod(x - lo, 2 * (hi - lo)) < hi - lo, 1.0, -1.0)


def direction_class(vx: float, vy: float) -> str:
    angle = math.atan2(vy, vx) % (2 * math.pi)
    return _DIRECTIONS[int(((angle + math.pi / 4) % (2 * math.pi)) // (math.pi / 2))]


def clip_labels(spec: VideoSpec, frame_idx: np.ndarray, height: int, width: int) -> dict:
    """The main object's state at the middle of a clip of these frame indices: ``position`` (x, y as a
    fraction of the frame), ``velocity`` (pixels per video frame, signed as it moves then), its
    ``direction`` class and ``speed``; and ``num_objects``."""
    t = float(np.mean(frame_idx))
    r = spec.radii[0]
    lo, hi = np.array([r, r]), np.array([width - r, height - r])
    x_2 = spec.start[0] + spec.velocity[0] * t
    pos_2 = _reflect(x_2, lo, hi)
    vel_2 = spec.velocity[0] * _reflect_slope(x_2, lo, hi)
    return {"num_objects": len(spec.shapes), "direction": direction_class(*vel_2),
            "speed": float(np.hypot(*vel_2)), "velocity": [float(v) for v in vel_2],
            "position": [float(pos_2[0] / width), float(pos_2[1] / height)]}


def render(spec: VideoSpec, frame_idx: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 frames (T, H, W, 3) at the given frame indices."""
    t_T = np.asarray(frame_idx, dtype=np.float64)
    out_THWC = np.empty((len(t_T), height, width, 3), dtype=np.uint8)
    out_THWC[:] = np.asarray(spec.background, dtype=np.uint8)
    ys = np.arange(height)[None, :, None] + 0.5
    xs = np.arange(width)[None, None, :] + 0.5
    for k, shape in enumerate(spec.shapes):
        r = spec.radii[k]
        cx = _reflect(spec.start[k, 0] + spec.velocity[k, 0] * t_T, r, width - r)[:, None, None]
        cy = _reflect(spec.start[k, 1] + spec.velocity[k, 1] * t_T, r, height - r)[:, None, None]
        if shape == "disc":
            inside = (xs - cx) ** 2 + (ys - cy) ** 2 <= r * r
        else:
            inside = (np.abs(xs - cx) <= r) & (np.abs(ys - cy) <= r)
        out_THWC[inside] = spec.colors[k]
    return out_THWC


def render_video(cfg: SyntheticConfig, seed: int, index: int) -> tuple[np.ndarray, dict]:
    """A whole video (video_frames, H, W, 3) and its metadata."""
    spec = video_spec(cfg, seed, index)
    meta = spec.metadata()
    meta["fps"] = cfg.fps
    return render(spec, np.arange(cfg.video_frames), cfg.height, cfg.width), meta


class SyntheticClips:
    """Batches of uint8 clips sampled from a fixed set of synthetic videos.

    Which video and which start frame each clip uses derive from (seed, epoch, step, rank), so a resumed
    run sees the same clips as an uninterrupted one without replaying the stream.
    """

    def __init__(self, cfg: SyntheticConfig, *, frames: int, frame_step: int, crop: int, batch_size: int,
                 seed: int, steps_per_epoch: int):
        self.cfg, self.frames, self.frame_step, self.crop = cfg, frames, frame_step, crop
        self.batch_size, self.seed, self.steps_per_epoch = batch_size, seed, steps_per_epoch
        self.span = (frames - 1) * frame_step + 1
        self._specs = [video_spec(cfg, seed, i) for i in range(cfg.num_videos)]

    def batch(self, step: int, rank: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, step // self.steps_per_epoch, step, rank, 0xC11])
        videos = rng.integers(0, self.cfg.num_videos, size=self.batch_size)
        starts = rng.integers(0, self.cfg.video_frames - self.span + 1, size=self.batch_size)
        clips = []
        for v, s in zip(videos, starts):
            frames = render(self._specs[v], s + np.arange(self.frames) * self.frame_step,
                            self.cfg.height, self.cfg.width)
            clips.append(resize_clip(torch.from_numpy(frames), self.crop).numpy())
        return {"clips": np.stack(clips), "video": videos}
