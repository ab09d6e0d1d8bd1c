"""PyAV video I/O: H.264 mp4 encoding, probing, and clip decoding that seeks instead of decoding whole videos.

Every failure to read a video becomes a ``DecodeError`` whose message is the reason a user sees next to
the file's path when the video is skipped.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import av
import numpy as np


class DecodeError(Exception):
    """This video cannot give a clip; the message says why (corrupt, truncated, too short, ...)."""


@dataclass(frozen=True)
class VideoInfo:
    frames: int
    fps: float
    width: int
    height: int

    @property
    def duration_s(self) -> float:
        return self.frames / self.fps if self.fps else 0.0


def encode_mp4(frames_THWC: np.ndarray, fps: int, crf: int = 20, gop: int = 16) -> bytes:
    """H.264 (yuv420p) mp4 bytes; a short GOP keeps seeks cheap.

    No B-frames and no rate-control lookahead: with either, x264 output varied between identical calls in
    one process; without them the bytes are a pure function of the frames, so shards are reproducible.
    """
    buf = io.BytesIO()
    _, h, w, _ = frames_THWC.shape
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast", "g": str(gop), "bf": "0", "rc-lookahead": "0",
                          "threads": "1"}
        for frame in frames_THWC:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def _open(data: bytes):
    if not data:
        raise DecodeError("empty file (0 bytes)")
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.error.FFmpegError, ValueError, OSError) as e:
        raise DecodeError(f"not a readable video container ({type(e).__name__}: {e})") from None
    if not container.streams.video:
        container.close()
        raise DecodeError("no video stream")
    return container


def _info(container) -> VideoInfo:
    v = container.streams.video[0]
    fps = float(v.average_rate or v.guessed_rate or 0)
    frames = int(v.frames or 0)
    if frames == 0 and v.duration and v.time_base and fps:
        frames = int(round(float(v.duration * v.time_base) * fps))
    if frames == 0 and container.duration and fps:
        frames = int(round(container.duration / av.time_base * fps))
    if fps <= 0 or frames <= 0:
        raise DecodeError(f"no frame rate or frame count in the header (fps={fps}, frames={frames})")
    return VideoInfo(frames=frames, fps=fps, width=v.codec_context.width, height=v.codec_context.height)


def probe(data: bytes) -> VideoInfo:
    """Header facts, checked by decoding the first frame (a header alone can hide a corrupt stream)."""
    container = _open(data)
    try:
        info = _info(container)
        try:
            next(container.decode(video=0))
        except (StopIteration, av.error.FFmpegError) as e:
            raise DecodeError(f"no decodable frame ({type(e).__name__})") from None
        return info
    finally:
        container.close()


def clip_step(info: VideoInfo, frame_step: int, target_fps: float | None) -> int:
    """Frames between sampled frames: fixed, or from the video's fps so clips cover the same seconds."""
    if target_fps:
        return max(1, int(round(info.fps / target_fps)))
    return frame_step


def decode_clips(data: bytes, *, frames: int, frame_step: int, target_fps: float | None, clips_per_video: int,
                 rng: np.random.Generator) -> list[np.ndarray]:
    """``clips_per_video`` clips of ``frames`` uint8 RGB frames (T, H, W, 3) at random temporal offsets."""
    container = _open(data)
    try:
        info = _info(container)
        step = clip_step(info, frame_step, target_fps)
        span = (frames - 1) * step + 1
        if info.frames < span:
            raise DecodeError(f"too short: {info.frames} frames, a clip of {frames} frames every {step} needs {span}")
        starts = np.sort(rng.integers(0, info.frames - span + 1, size=clips_per_video))
        return [_decode_range(container, info, int(s) + np.arange(frames) * step) for s in starts]
    except av.error.FFmpegError as e:
        raise DecodeError(f"decoding failed ({type(e).__name__}: {e})") from None
    finally:
        container.close()


def _decode_range(container, info: VideoInfo, wanted: np.ndarray) -> np.ndarray:
    v = container.streams.video[0]
    tb = float(v.time_base)
    t0 = float(v.start_time or 0) * tb
    # seek to the keyframe at or before the first wanted frame, then decode forward only as far as needed
    container.seek(int((t0 + wanted[0] / info.fps) / tb), stream=v, backward=True, any_frame=False)
    todo = {int(i): k for k, i in enumerate(wanted)}
    out: list[np.ndarray | None] = [None] * len(wanted)
    last = int(wanted[-1])
    for frame in container.decode(v):
        if frame.pts is None:
            continue
        idx = int(round((frame.pts * tb - t0) * info.fps))
        if idx in todo:
            out[todo.pop(idx)] = frame.to_ndarray(format="rgb24")
        if idx >= last or not todo:
            break
    if todo:
        raise DecodeError(f"truncated: frames {sorted(todo)[:3]}... of {info.frames} announced could not be decoded")
    return np.stack(out)
