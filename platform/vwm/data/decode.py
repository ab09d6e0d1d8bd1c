"""PyAV video I/O: H.264 mp4 encoding, probing, and clip decoding that seeks instead of decoding whole videos.

Every failure PyAV reports becomes a ``DecodeError`` whose message is the reason a user sees next to the
file's path when the video is skipped. Clips come out at one size however the stream's resolution changes,
and are sampled by time, so variable-frame-rate videos decode like constant-rate ones.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import av
import numpy as np


# a video in memory, or a seekable binary file (a loose file is read on demand, not loaded whole)
VideoSource = bytes | BinaryIO
# how far past a stream's last frame a wanted time may lie before the video counts as truncated
END_SLACK_FRAMES = 2


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


def _open(src: VideoSource):
    if isinstance(src, (bytes, bytearray, memoryview)):
        if not src:
            raise DecodeError("empty file (0 bytes)")
        src = io.BytesIO(src)
    else:
        empty = src.seek(0, io.SEEK_END) == 0
        src.seek(0)
        if empty:
            raise DecodeError("empty file (0 bytes)")
    try:
        container = av.open(src, mode="r")
    except (av.error.FFmpegError, ValueError, OSError) as e:
        raise DecodeError(f"not a readable video container ({type(e).__name__}: {e})") from None
    if not container.streams.video:
        container.close()
        raise DecodeError("no video stream")
    return container


def _count_packets(container, v) -> int:
    """Video packets of the whole file, demuxed without decoding; rewinds the container afterwards."""
    n = sum(1 for packet in container.demux(v) if packet.size)
    container.seek(0)
    return n


def _info(container) -> VideoInfo:
    v = container.streams.video[0]
    fps = float(v.average_rate or v.guessed_rate or 0)
    # Matroska/WebM headers have no frame count, and the container duration is the longest track's (often
    # the audio): only the packets say how many frames the video has
    frames = int(v.frames or 0) or _count_packets(container, v)
    width, height = v.codec_context.width, v.codec_context.height
    if fps <= 0 or frames <= 0 or width <= 0 or height <= 0:
        raise DecodeError(f"no frame rate, frame count or frame size in the header (fps={fps}, frames={frames}, "
                          f"size={width}x{height})")
    return VideoInfo(frames=frames, fps=fps, width=width, height=height)


def probe(src: VideoSource) -> VideoInfo:
    """Header facts and the true frame count, checked by decoding the first frame (a header alone can hide a
    corrupt stream)."""
    container = _open(src)
    try:
        info = _info(container)
        next(container.decode(video=0))
        return info
    except (StopIteration, av.error.FFmpegError) as e:
        raise DecodeError(f"no decodable frame ({type(e).__name__})") from None
    finally:
        container.close()


def clip_step(info: VideoInfo, frame_step: int, target_fps: float | None) -> int:
    """Frames between sampled frames: fixed, or from the video's fps so clips cover the same seconds."""
    if target_fps:
        return max(1, int(round(info.fps / target_fps)))
    return frame_step


def iter_clips(src: VideoSource, *, frames: int, frame_step: int, target_fps: float | None,
               clips_per_video: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """``clips_per_video`` clips of ``frames`` uint8 RGB frames (T, H, W, 3) at random temporal offsets,
    decoded one at a time. Every frame comes out at the size the stream starts with."""
    container = _open(src)
    try:
        info = _info(container)
        step = clip_step(info, frame_step, target_fps)
        span = (frames - 1) * step + 1
        if info.frames < span:
            raise DecodeError(f"too short: {info.frames} frames, a clip of {frames} frames every {step} needs {span}")
        starts = np.sort(rng.integers(0, info.frames - span + 1, size=clips_per_video))
        for s in starts:
            yield _decode_range(container, info, int(s) + np.arange(frames) * step)
    except av.error.FFmpegError as e:
        raise DecodeError(f"decoding failed ({type(e).__name__}: {e})") from None
    finally:
        container.close()


def decode_clips(src: VideoSource, *, frames: int, frame_step: int, target_fps: float | None,
                 clips_per_video: int, rng: np.random.Generator) -> list[np.ndarray]:
    """All clips of ``iter_clips`` in a list."""
    return list(iter_clips(src, frames=frames, frame_step=frame_step, target_fps=target_fps,
                           clips_per_video=clips_per_video, rng=rng))


def _decode_range(container, info: VideoInfo, wanted: np.ndarray) -> np.ndarray:
    """The frames shown at the times of frame indices ``wanted`` on the average-fps grid: for each time the
    last frame at or before it, so variable-frame-rate videos sample by time like constant-rate ones."""
    v = container.streams.video[0]
    tb = float(v.time_base)
    t0 = float(v.start_time or 0) * tb
    times_s = t0 + wanted / info.fps
    # timestamps are rounded to the time base (Matroska: 1 ms), so a frame may sit a tick after its time
    eps_s = min(tb, 0.5 / info.fps)
    out_THWC = np.empty((len(times_s), info.height, info.width, 3), dtype=np.uint8)
    k, prev, prev_t = 0, None, None
    for frame in _frames_from(container, times_s[0] + eps_s, t0):
        t = frame.pts * tb
        while k < len(times_s) and t > times_s[k] + eps_s:
            # a wanted time before the first decoded frame can only be the video's start: take that frame
            out_THWC[k] = _rgb(prev if prev is not None else frame, info)
            k += 1
        if k == len(times_s):
            break
        prev, prev_t = frame, t
    else:  # the stream ended: its last frame stands for times shortly after it, not for a missing tail
        while k < len(times_s) and prev is not None and times_s[k] <= prev_t + END_SLACK_FRAMES / info.fps:
            out_THWC[k] = _rgb(prev, info)
            k += 1
    if k < len(times_s):
        ended = f"{prev_t - t0:.2f} s" if prev_t is not None else "before its first frame"
        raise DecodeError(f"truncated: decoding ended at {ended}, the clip needs frames up to "
                          f"{times_s[-1] - t0:.2f} s of the {info.duration_s:.2f} s announced")
    return out_THWC


def _frames_from(container, t_s: float, t0_s: float) -> Iterator:
    """Decoded frames (with timestamps) from a keyframe at or before ``t_s``, decoding forward only as far as
    the caller reads. Some demuxers (MPEG-TS) land after the target: step back until the first frame is not."""
    v = container.streams.video[0]
    tb = float(v.time_base)
    back_s = 0.0
    while True:
        target_s = max(t_s - back_s, t0_s)
        container.seek(int(target_s / tb), stream=v, backward=True, any_frame=False)
        frames = (f for f in container.decode(v) if f.pts is not None)
        first = next(frames, None)
        if first is None or first.pts * tb <= t_s or target_s <= t0_s:
            break
        back_s = max(2 * back_s, 1.0)
    if first is not None:
        yield first
        yield from frames


def _rgb(frame, info: VideoInfo) -> np.ndarray:
    # a stream may change resolution mid-way; clips need one size, the one the stream starts with
    return frame.to_ndarray(width=info.width, height=info.height, format="rgb24")
