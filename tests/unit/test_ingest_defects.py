"""Real-world inputs that broke ingestion (issue 9, items 1-6), each built here with PyAV or tarfile:
resolution changes, variable frame rates, Matroska with a longer audio track, damaged and compressed tar
shards, metadata that is not an object, and the memory a shard's clips take."""

from __future__ import annotations

import gzip
import io
import tarfile
import tracemalloc
from fractions import Fraction

import av
import numpy as np
import pytest

from vwm.config import DataConfig, SyntheticConfig
from vwm.data.decode import DecodeError, decode_clips, encode_mp4, probe
from vwm.data.shards import Sample, Skip, iter_samples, list_sources, write_shard
from vwm.data.synthetic import render_video

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
def test_matroska_frame_count_ignores_a_longer_audio_track(fmt, tmp_path):
    from vwm.data.tools import inspect_file

    data = matroska_with_long_audio(frames=40, fps=15, audio_s=8, fmt=fmt)
    with av.open(io.BytesIO(data)) as container:
        assert container.duration / av.time_base > 7.9  # the container's duration is the audio's
    info = probe(data)
    assert info.frames == 40 and info.duration_s == pytest.approx(40 / 15)
    with pytest.raises(DecodeError, match="too short: 40 frames"):
        _clips(data, frames=41)
    [clip] = _clips(data, frames=40)
    assert [_index_of(f) for f in clip] == list(range(40))
    path = tmp_path / ("v.webm" if fmt == "webm" else "v.mkv")
    path.write_bytes(data)
    report = inspect_file(str(path))
    assert (report.videos, report.frames, report.unreadable) == (1, 40, [])
    assert report.seconds == pytest.approx(40 / 15, rel=0.01)


# ------------------------------------------------------------------------------------ 4: tar shards
def _shard(tmp_path, n: int, name: str = "s.tar") -> tuple[str, bytes, list[int]]:
    """A shard of ``n`` keys (mp4 + json each); returns its path, bytes and each member's header offset."""
    uri = str(tmp_path / name)
    write_shard(uri, [Sample.from_video(f"k{i:02d}", grey_mp4(12 + i), {"i": i}) for i in range(n)])
    with tarfile.open(uri) as tar:
        offsets = [m.offset for m in tar.getmembers()]
    return uri, (tmp_path / name).read_bytes(), offsets


def _read(path) -> tuple[list[str], list[Skip]]:
    out = list(iter_samples(str(path)))
    return [s.key for s in out if isinstance(s, Sample)], [s for s in out if isinstance(s, Skip)]


def test_cut_shard_gives_up_the_last_complete_video_before_the_cut(tmp_path):
    _, whole, offsets = _shard(tmp_path, 4)
    # members: k00.mp4 k00.json k01.mp4 k01.json k02.mp4 ...; cut inside k02.mp4's data
    (tmp_path / "cut.tar").write_bytes(whole[: offsets[4] + 700])
    keys, skips = _read(tmp_path / "cut.tar")
    assert keys == ["k00", "k01"]
    assert len(skips) == 1 and skips[0].lost and "ends early or is corrupt after key k01" in skips[0].reason
    # cut exactly on a member boundary: no end-of-archive marker, which a complete shard has
    (tmp_path / "boundary.tar").write_bytes(whole[: offsets[4]])
    keys, skips = _read(tmp_path / "boundary.tar")
    assert keys == ["k00", "k01"] and len(skips) == 1 and "no end-of-archive marker" in skips[0].reason


@pytest.mark.parametrize("damage", ["garbage", "zeros"])
def test_corrupt_header_mid_shard_is_an_error_not_the_end(tmp_path, damage):
    _, whole, offsets = _shard(tmp_path, 16)
    broken = bytearray(whole)
    at = offsets[4]  # header of k02.mp4
    broken[at: at + 512] = b"\xab" * 512 if damage == "garbage" else bytes(512)
    (tmp_path / "bad.tar").write_bytes(bytes(broken))
    keys, skips = _read(tmp_path / "bad.tar")
    assert keys == ["k00", "k01"]
    assert len(skips) == 1 and skips[0].lost and skips[0].source == str(tmp_path / "bad.tar")
    assert "the rest of this shard is lost" in skips[0].reason


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
    assert len(keys) < 5 and len(skips) == 1 and skips[0].lost


# --------------------------------------------------------------- 5: warnings are not lost videos
def test_members_that_lose_no_video_are_warnings_and_bad_metadata_is_dropped(tmp_path):
    video = grey_mp4()
    members = [("a.mp4", video), ("a.json", b"null"), ("b.mp4", video), ("b.json", b"[1, 2]"),
               ("c.json", b'{"orphan": true}'), ("d.mp4", video), ("d.json", b"{not json"),
               ("e.mp4", video), ("e.txt", b"notes"), ("f.mp4", video), ("f.json", b'{"label": 3}')]
    uri = str(tmp_path / "w.tar")
    with tarfile.open(uri, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = list(iter_samples(uri))
    samples = {s.key: s for s in out if isinstance(s, Sample)}
    skips = {s.source.rsplit("#", 1)[1]: s for s in out if isinstance(s, Skip)}
    assert sorted(samples) == ["a", "b", "d", "e", "f"]
    assert [samples[k].meta for k in "abdef"] == [{}, {}, {}, {}, {"label": 3}]
    assert samples["e"].members["txt"] == b"notes" and all(samples[k].video == video for k in samples)
    assert sorted(skips) == ["a.json", "b.json", "c", "d.json"] and not any(s.lost for s in skips.values())
    assert "must be a JSON object, got NoneType" in skips["a.json"].reason
    assert "must be a JSON object, got list" in skips["b.json"].reason
    assert "no video member (members: json)" in skips["c"].reason
    assert "not valid JSON" in skips["d.json"].reason


# ------------------------------------------------ 1, 5, 6: the per-file decode of the Ray Data pipeline
def _cfg(paths, **kw) -> DataConfig:
    base = dict(source="shards", paths=paths, frames=8, frame_step=1, crop=32, clips_per_video=2)
    base.update(kw)
    return DataConfig(**base)


def _decode(uri: str, cfg: DataConfig, **kw) -> tuple[list[dict], list[Skip]]:
    from vwm.data.pipeline import _decode_file

    skips: list[Skip] = []
    return list(_decode_file(uri, 0, 0, cfg, 0, skips.append, **kw)), skips


def test_any_exception_of_one_video_is_a_counted_skip_and_the_file_goes_on(tmp_path, monkeypatch):
    import vwm.data.pipeline as pipeline

    uri = str(tmp_path / "s.tar")
    write_shard(uri, [Sample.from_video(f"k{i}", grey_mp4(12 + i)) for i in range(3)])
    real, video_of = pipeline.iter_clips, {s.key: s.video for s in iter_samples(uri)}

    def flaky(f, **kw):  # an error no decoder anticipates, as np.stack's on frames of two sizes was
        if f.getvalue() == video_of["k1"]:
            raise ValueError("all input arrays must have the same shape")
        return real(f, **kw)

    monkeypatch.setattr(pipeline, "iter_clips", flaky)
    batches, skips = _decode(uri, _cfg([uri]))
    assert [k for b in batches for k in b["key"]] == [f"{uri}#k0"] * 2 + [f"{uri}#k2"] * 2
    assert skips == [Skip(f"{uri}#k1", "ValueError: all input arrays must have the same shape")]


def test_pipeline_decodes_resolution_changes_and_counts_only_lost_videos(tmp_path):
    uri = str(tmp_path / "s.tar")
    write_shard(uri, [Sample("mixed", {"mp4": mixed_size_video(), "json": b"null"}),
                      Sample("orphan", {"json": b"{}"}), Sample.from_video("plain", grey_mp4())])
    batches, skips = _decode(uri, _cfg([uri]))
    assert [k.rsplit("#")[1] for b in batches for k in b["key"]] == ["mixed"] * 2 + ["plain"] * 2
    assert all(b["clips"].shape[1:] == (8, 32, 32, 3) for b in batches)
    assert [(s.source.rsplit("#")[1], s.lost) for s in skips] == [("mixed.json", False), ("orphan", False)]


# ------------------------------------------------------------------------------------------ 6: memory
def test_a_shards_clips_leave_in_bounded_batches(tmp_path):
    from vwm.data.pipeline import _decode_file

    cfg = _cfg([], frames=8, crop=64, clips_per_video=2, source="synthetic")
    syn = SyntheticConfig(video_frames=16, height=64, width=64)
    uri = str(tmp_path / "s.tar")
    write_shard(uri, [Sample.from_video(f"k{i:02d}", encode_mp4(render_video(syn, 0, i)[0], 15)) for i in range(12)])
    clip_bytes = 8 * 64 * 64 * 3
    whole, _ = _decode(uri, cfg, batch_bytes=1 << 40)
    tracemalloc.start()
    try:
        sizes, first = [], None
        for batch in _decode_file(uri, 0, 0, cfg, 0, print, batch_bytes=3 * clip_bytes):
            sizes.append(len(batch["clips"]))
            first = batch if first is None else first
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(sizes) == 24 and max(sizes) <= 4  # a video's 2 clips stay together
    assert np.array_equal(first["clips"], whole[0]["clips"][:len(first["clips"])])
    # all 24 clips stacked in one block would be 24 x 98 KB = 2.4 MB, twice over while stacking
    assert peak < 16 * clip_bytes, f"peak {peak / 1e6:.1f} MB"


def test_loose_files_are_opened_not_loaded(tmp_path):
    noise_THWC = np.random.default_rng(0).integers(0, 255, (30, 128, 128, 3), dtype=np.uint8)
    path = tmp_path / "noise.mp4"
    path.write_bytes(encode_mp4(noise_THWC, 15, crf=0))
    size = path.stat().st_size
    assert size > 500_000
    [sample] = iter_samples(str(path))
    assert sample.members == {} and sample.video_ext == "mp4"
    tracemalloc.start()
    try:
        with sample.open_video() as f:
            info = probe(f)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.frames == 30 and peak < size / 4, f"peak {peak / 1e6:.1f} MB for a {size / 1e6:.1f} MB file"
    batches, skips = _decode(str(path), _cfg([str(path)]))
    assert skips == [] and len(batches[0]["clips"]) == 2
