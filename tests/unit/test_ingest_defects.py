"""Real-world inputs that broke ingestion (issue 9, items 1-6), each built here with PyAV or tarfile:
resolution changes, variable frame rates, Matroska with a longer audio track, damaged and compressed tar
shards."""

from __future__ import annotations

import gzip
import io
import tarfile
from fractions import Fraction

import av
import numpy as np
import pytest

from vwm.data.decode import DecodeError, decode_clips, encode_mp4, probe
from vwm.data.shards import Sample, iter_samples, list_sources, write_shard

GREY_STEP = 5  # frame i of the built videos is uniform grey i * GREY_STEP: a decoded frame tells its index


def _grey(i: int, h: int, w: int) -> np.ndarray:
    return np.full((h, w, 3), (i * GREY_STEP) % 256, np.uint8)


def _index_of(frame_HWC: np.ndarray) -> int:
    return int(round(float(frame_HWC.mean()) / GREY_STEP))


def mixed_size_video(sizes_HW=((48, 64), (32, 40)), frames_each: int = 10, fps: int = 15,
                     fmt: str = "mp4") -> bytes:
    """One H.264 stream whose resolution changes part-way, as a camera switching modes writes it: two
    encoders, each segment starting with a keyframe carrying its own parameter sets."""
    buf, k = io.BytesIO(), 0
    with av.open(buf, "w", format=fmt) as container:
        stream = container.add_stream("h264", rate=fps)
        stream.height, stream.width = sizes_HW[0]
        stream.pix_fmt = "yuv420p"
        for h, w in sizes_HW:
            encoder = av.CodecContext.create("libx264", "w")
            encoder.width, encoder.height, encoder.pix_fmt = w, h, "yuv420p"
            encoder.time_base = Fraction(1, fps)
            encoder.options = {"bf": "0", "g": "4", "threads": "1"}
            segment = []
            for _ in range(frames_each):
                segment.append(av.VideoFrame.from_ndarray(_grey(k, h, w), format="rgb24"))
                segment[-1].pts, k = k, k + 1
            for frame in segment + [None]:
                for packet in encoder.encode(frame):
                    packet.stream, packet.time_base = stream, Fraction(1, fps)
                    container.mux(packet)
    return buf.getvalue()


def vfr_video(times_ms: list[int], size: int = 32) -> bytes:
    """H.264 mp4 whose frames sit at the given times (ms), as phones record."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        stream.options = {"bf": "0", "g": "8", "threads": "1"}
        for i, t in enumerate(times_ms):
            frame = av.VideoFrame.from_ndarray(_grey(i, size, size), format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def matroska_with_long_audio(frames: int = 40, fps: int = 15, audio_s: int = 8, fmt: str = "matroska") -> bytes:
    """A Matroska (or WebM) video of ``frames`` frames beside an ``audio_s``-second audio track."""
    webm = fmt == "webm"
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as container:
        video = container.add_stream("libvpx-vp9" if webm else "libx264", rate=fps)
        video.width = video.height = 32
        video.pix_fmt = "yuv420p"
        rate = 48000 if webm else 8000
        audio = container.add_stream("libopus" if webm else "pcm_s16le", rate=rate)
        audio.layout = "mono"
        for i in range(frames):
            for packet in video.encode(av.VideoFrame.from_ndarray(_grey(i, 32, 32), format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        chunk = 960 if webm else rate  # opus takes 20 ms frames
        for k in range(audio_s * rate // chunk):
            samples = av.AudioFrame.from_ndarray(np.zeros((1, chunk), np.int16), format="s16", layout="mono")
            samples.sample_rate, samples.pts = rate, k * chunk
            for packet in audio.encode(samples):
                container.mux(packet)
        for packet in audio.encode():
            container.mux(packet)
    return buf.getvalue()


def grey_mp4(n: int = 24, size: int = 32, fps: int = 15) -> bytes:
    return encode_mp4(np.stack([_grey(i, size, size) for i in range(n)]), fps)


def _clips(data, frames, step=1, n=1, seed=0):
    return decode_clips(data, frames=frames, frame_step=step, target_fps=None, clips_per_video=n,
                        rng=np.random.default_rng(seed))


# ------------------------------------------------------------------------------- 1: resolution changes
@pytest.mark.parametrize("fmt", ["mp4", "matroska", "mpegts"])
def test_frames_after_a_resolution_change_come_out_at_the_first_size(fmt):
    data = mixed_size_video(fmt=fmt)
    info = probe(data)
    assert (info.frames, info.width, info.height) == (20, 64, 48)
    [clip] = _clips(data, frames=20)  # the whole video: 10 frames at 64x48, 10 at 40x32
    assert clip.shape == (20, 48, 64, 3)
    assert [_index_of(f) for f in clip] == list(range(20))
    assert np.abs(clip[15].astype(int) - _grey(15, 48, 64)).max() <= 3  # scaled up whole, not cropped
    for seed in range(6):  # clips from a seek, on either side of the change (MPEG-TS seeks land late)
        [clip] = _clips(data, frames=8, seed=seed)
        first = _index_of(clip[0])
        assert [_index_of(f) for f in clip] == list(range(first, first + 8))


# ---------------------------------------------------------------------------- 2: variable frame rate
def test_variable_frame_rate_is_sampled_by_time():
    gaps_ms = [100 if i % 3 == 0 else 33 for i in range(47)]
    times_ms = np.cumsum([0] + gaps_ms)
    data = vfr_video(times_ms.tolist())
    info = probe(data)
    assert info.frames == 48 and not info.fps.is_integer()
    for seed in range(4):
        for clip in _clips(data, frames=8, step=3, n=3, seed=seed):
            got = [_index_of(f) for f in clip]
            assert got == sorted(got) and len(set(got)) >= 6, got  # forward in time, hardly any repeats
    # each frame is the last one shown at or before its time on the average-fps grid
    [whole] = _clips(data, frames=48)
    wanted_ms = np.arange(48) / info.fps * 1000
    expected = [int(np.searchsorted(times_ms, t + 0.5, side="right")) - 1 for t in wanted_ms]
    assert [_index_of(f) for f in whole] == expected


def _avi(n: int = 48) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="avi") as container:
        stream = container.add_stream("mjpeg", rate=15)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuvj420p"
        for i in range(n):
            frame = av.VideoFrame.from_ndarray(_grey(i, 32, 32), format="rgb24").reformat(format="yuvj420p")
            for packet in stream.encode(frame):
                container.mux(packet)
    return buf.getvalue()


def test_a_stream_that_ends_well_short_of_its_header_is_truncated():
    data = _avi(48)
    with av.open(io.BytesIO(data)) as container:
        positions = [p.pos for p in container.demux(video=0) if p.size]
    cut = data[: positions[30]]  # on a packet boundary: 30 whole frames, the header still announces 48
    assert probe(cut).frames == 48
    with pytest.raises(DecodeError, match=r"truncated: decoding ended at 1.93 s, the clip needs frames up to 3.13 s"):
        _clips(cut, frames=48)
    # one frame short of the announced end: the last frame stands in for it
    [clip] = _clips(data[: positions[47]], frames=48)
    assert [_index_of(f) for f in clip] == list(range(47)) + [46]


# ---------------------------------------------------------------- 3: Matroska / WebM frame counts
@pytest.mark.parametrize("fmt", ["matroska", "webm"])
def test_matroska_frame_count_ignores_a_longer_audio_track(fmt):
    data = matroska_with_long_audio(frames=40, fps=15, audio_s=8, fmt=fmt)
    with av.open(io.BytesIO(data)) as container:
        assert container.duration / av.time_base > 7.9  # the container's duration is the audio's
    info = probe(data)
    assert info.frames == 40 and info.duration_s == pytest.approx(40 / 15)
    with pytest.raises(DecodeError, match="too short: 40 frames"):
        _clips(data, frames=41)
    [clip] = _clips(data, frames=40)
    assert [_index_of(f) for f in clip] == list(range(40))


# ------------------------------------------------------------------------------------ 4: tar shards
def _shard(tmp_path, n: int, name: str = "s.tar") -> tuple[str, bytes, list[int]]:
    """A shard of ``n`` keys (mp4 + json each); returns its path, bytes and each member's header offset."""
    uri = str(tmp_path / name)
    write_shard(uri, [Sample.from_video(f"k{i:02d}", grey_mp4(12 + i), {"i": i}) for i in range(n)])
    with tarfile.open(uri) as tar:
        offsets = [m.offset for m in tar.getmembers()]
    return uri, (tmp_path / name).read_bytes(), offsets


def _read(path) -> tuple[list[str], list[tuple[str, str]]]:
    out = list(iter_samples(str(path)))
    return [s.key for s in out if isinstance(s, Sample)], [s for s in out if isinstance(s, tuple)]


def test_cut_shard_gives_up_the_last_complete_video_before_the_cut(tmp_path):
    _, whole, offsets = _shard(tmp_path, 4)
    # members: k00.mp4 k00.json k01.mp4 k01.json k02.mp4 ...; cut inside k02.mp4's data
    (tmp_path / "cut.tar").write_bytes(whole[: offsets[4] + 700])
    keys, skips = _read(tmp_path / "cut.tar")
    assert keys == ["k00", "k01"]
    assert len(skips) == 1 and "ends early or is corrupt after key k01" in skips[0][1]
    # cut exactly on a member boundary: no end-of-archive marker, which a complete shard has
    (tmp_path / "boundary.tar").write_bytes(whole[: offsets[4]])
    keys, skips = _read(tmp_path / "boundary.tar")
    assert keys == ["k00", "k01"] and len(skips) == 1 and "no end-of-archive marker" in skips[0][1]


@pytest.mark.parametrize("damage", ["garbage", "zeros"])
def test_corrupt_header_mid_shard_is_an_error_not_the_end(tmp_path, damage):
    _, whole, offsets = _shard(tmp_path, 16)
    broken = bytearray(whole)
    at = offsets[4]  # header of k02.mp4
    broken[at: at + 512] = b"\xab" * 512 if damage == "garbage" else bytes(512)
    (tmp_path / "bad.tar").write_bytes(bytes(broken))
    keys, skips = _read(tmp_path / "bad.tar")
    assert keys == ["k00", "k01"]
    assert len(skips) == 1 and skips[0][0] == str(tmp_path / "bad.tar")
    assert "the rest of this shard is lost" in skips[0][1]


@pytest.mark.parametrize("name", ["s.tar", "s.tar.gz", "s.tgz"])
def test_gzip_compressed_shards_read_whole(tmp_path, name):
    _, whole, _ = _shard(tmp_path, 5, name="plain.tar")
    (tmp_path / "gz").mkdir()
    (tmp_path / "gz" / name).write_bytes(gzip.compress(whole, mtime=0))
    assert list_sources([str(tmp_path / "gz")]) == [str(tmp_path / "gz" / name)]
    keys, skips = _read(tmp_path / "gz" / name)
    assert keys == [f"k{i:02d}" for i in range(5)] and skips == []
    compressed = gzip.compress(whole, mtime=0)
    (tmp_path / "gz" / name).write_bytes(compressed[: len(compressed) * 2 // 3])
    keys, skips = _read(tmp_path / "gz" / name)
    assert len(keys) < 5 and len(skips) == 1
