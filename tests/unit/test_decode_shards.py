"""PyAV encoding and clip decoding, WebDataset shards, listing errors, augmentation (no Ray)."""

import io
import json
import tarfile

import numpy as np
import pytest

from vwm.config import AugmentConfig, SyntheticConfig
from vwm.data.decode import DecodeError, decode_clips, encode_mp4, probe
from vwm.data.shards import DataSourceError, MetadataError, Sample, iter_samples, list_sources, write_shard
from vwm.data.synthetic import render_video
from vwm.data.transforms import augment_clip, crop_box

CFG = SyntheticConfig(video_frames=48, height=64, width=64, fps=15)


@pytest.fixture(scope="module")
def video():
    frames, meta = render_video(CFG, seed=0, index=3)
    return frames, encode_mp4(frames, CFG.fps), meta


def test_probe(video):
    _, data, _ = video
    info = probe(data)
    assert (info.frames, info.fps, info.width, info.height) == (48, 15.0, 64, 64)
    assert info.duration_s == pytest.approx(3.2)


def test_decoded_clip_is_the_right_frames(video):
    frames, data, _ = video
    rng = np.random.default_rng(0)
    [clip] = decode_clips(data, frames=8, frame_step=3, target_fps=None, clips_per_video=1, rng=rng)
    assert clip.shape == (8, 64, 64, 3) and clip.dtype == np.uint8
    # recover the start by matching against the originals (H.264 is lossy: nearest frame wins)
    errs = [np.abs(clip[0].astype(int) - f.astype(int)).mean() for f in frames]
    start = int(np.argmin(errs))
    expected = frames[start: start + 22: 3]
    assert np.abs(clip.astype(int) - expected.astype(int)).mean() < 6


def test_clip_offsets_follow_the_rng_and_target_fps(video):
    _, data, _ = video
    a = decode_clips(data, frames=4, frame_step=2, target_fps=None, clips_per_video=3, rng=np.random.default_rng(1))
    b = decode_clips(data, frames=4, frame_step=2, target_fps=None, clips_per_video=3, rng=np.random.default_rng(1))
    assert len(a) == 3 and all(np.array_equal(x, y) for x, y in zip(a, b))
    # 15 fps video at target 5 fps: every 3rd frame; 16 frames span 46 of 48
    [c] = decode_clips(data, frames=16, frame_step=1, target_fps=5, clips_per_video=1, rng=np.random.default_rng(0))
    assert c.shape[0] == 16
    with pytest.raises(DecodeError, match="too short: 48 frames"):
        decode_clips(data, frames=17, frame_step=3, target_fps=None, clips_per_video=1, rng=np.random.default_rng(0))


@pytest.mark.parametrize("data, reason", [
    (b"", "empty file"),
    (b"\x00garbage" * 50, "not a readable video container"),
])
def test_bad_bytes(data, reason):
    with pytest.raises(DecodeError, match=reason):
        decode_clips(data, frames=4, frame_step=1, target_fps=None, clips_per_video=1, rng=np.random.default_rng(0))


@pytest.mark.parametrize("cut", [0.25, 0.5, 0.9, 0.99])
def test_truncated_video_is_a_decode_error(video, cut):
    _, data, _ = video
    with pytest.raises(DecodeError):
        decode_clips(data[: int(len(data) * cut)], frames=8, frame_step=5, target_fps=None, clips_per_video=1,
                     rng=np.random.default_rng(0))


def test_zeroed_bytes_mid_stream_are_a_decode_error(video):
    _, data, _ = video
    broken = bytearray(data)
    broken[len(data) // 2: len(data) // 2 + 2000] = bytes(2000)
    with pytest.raises(DecodeError, match="decoding failed"):
        decode_clips(bytes(broken), frames=8, frame_step=5, target_fps=None, clips_per_video=1,
                     rng=np.random.default_rng(0))


def test_shard_round_trip_and_corrupt_shard(tmp_path, video):
    _, data, meta = video
    uri = str(tmp_path / "s" / "shard-00000.tar")
    write_shard(uri, [Sample.from_video("a", data, meta), Sample.from_video("b", data)])
    first = (tmp_path / "s" / "shard-00000.tar").read_bytes()
    write_shard(uri, [Sample.from_video("a", data, meta), Sample.from_video("b", data)])
    assert (tmp_path / "s" / "shard-00000.tar").read_bytes() == first, "shards are byte-deterministic"
    got = list(iter_samples(uri))
    assert [s.key for s in got] == ["a", "b"] and got[0].meta == meta and got[0].video == data
    (tmp_path / "cut.tar").write_bytes(first[: len(first) // 2 + 700])
    out = list(iter_samples(str(tmp_path / "cut.tar")))
    errors = [o for o in out if isinstance(o, tuple)]
    assert len(errors) == 1 and "ends early or is corrupt" in errors[0][1]


def test_list_sources(tmp_path, video):
    _, data, _ = video
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/x.mp4", "d/sub/y.MOV", "d/notes.txt"):
        (tmp_path / name).write_bytes(data)
    assert [p.rsplit("/", 1)[-1] for p in list_sources([str(tmp_path / "d")])] == ["y.MOV", "x.mp4"]
    assert len(list_sources([str(tmp_path / "d" / "*.mp4")])) == 1
    with pytest.raises(DataSourceError, match=r"no video files or tar shards match .*nothing\*.mp4"):
        list_sources([str(tmp_path / "nothing*.mp4")])


def test_augment_crop_box_ranges_and_shape():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = crop_box(60, 80, (0.3, 1.0), (0.75, 1.35), rng)
        assert 0 <= top <= 60 - h and 0 <= left <= 80 - w
        assert 0.28 * 4800 <= h * w <= 4800
    clip = np.random.default_rng(1).integers(0, 255, (4, 60, 80, 3), dtype=np.uint8)
    out = augment_clip(clip, 32, AugmentConfig(), np.random.default_rng(2))
    assert out.shape == (4, 32, 32, 3) and out.dtype == np.uint8
    flipped = augment_clip(clip, 60, AugmentConfig(random_resized_crop=False, hflip=1.0), np.random.default_rng(0))
    assert np.array_equal(flipped, clip[:, :, 10:70][:, :, ::-1])


def test_shard_samples_keep_every_member_byte_for_byte(tmp_path, video):
    _, data, meta = video
    uri = str(tmp_path / "traj-00000.tar")
    members = {"mp4": data, "npz": b"\x93NUMPY actions", "json": b'{"task": "push"}'}
    write_shard(uri, [Sample("ep/000", dict(members)), Sample.from_video("ep/001", data, meta)])
    got = list(iter_samples(uri))
    assert [(s.key, s.members) for s in got] == [
        ("ep/000", members), ("ep/001", {"mp4": data, "json": json.dumps(meta, sort_keys=True).encode()})]
    assert got[0].video == data and got[0].meta == {"task": "push"} and got[0].source == f"{uri}#ep/000"
    assert Sample("k", {"npz": b"x"}).video == b"" and Sample("k", {"npz": b"x"}).meta == {}
    with pytest.raises(ValueError, match=r"sample key 'clip.v2'.*rename the key"):
        write_shard(str(tmp_path / "bad.tar"), [Sample("clip.v2", {"mp4": data})])


def _raw_tar(path, members: list[tuple[str, bytes]]) -> str:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def test_tar_keys_follow_the_webdataset_rule(tmp_path, video):
    _, data, _ = video
    # same file name in two folders: two keys; `clip.v2.mp4` is key `clip`, extension `v2.mp4`
    uri = _raw_tar(tmp_path / "s.tar", [("a/0001.mp4", data), ("b/0001.mp4", data), ("b/0001.json", b'{"x": 1}'),
                                        ("clip.v2.mp4", data), ("README", b"no extension: ignored")])
    got = list(iter_samples(uri))
    assert [(s.key, sorted(s.members)) for s in got] == [("a/0001", ["mp4"]), ("b/0001", ["json", "mp4"]),
                                                          ("clip", ["v2.mp4"])]
    assert all(s.video == data for s in got) and got[1].meta == {"x": 1}
    (tmp_path / "clip.v2.mp4").write_bytes(data)
    [loose] = iter_samples(str(tmp_path / "clip.v2.mp4"))
    assert loose.key == "clip" and loose.video == data


@pytest.mark.parametrize("text, kind", [(b"null", "NoneType"), (b"[1, 2]", "list"), (b"7", "int")])
def test_metadata_that_is_not_an_object_is_rejected_naming_the_file(text, kind):
    sample = Sample("k", {"mp4": b"v", "json": text}, source="s.tar#k")
    with pytest.raises(MetadataError, match=rf"s.tar#k.json: metadata must be a JSON object, got {kind}"):
        sample.meta


def test_brace_patterns_expand_as_webdataset_writes_them_and_name_missing_files(tmp_path):
    from vwm.data.shards import DataSourceError, expand_braces, list_sources

    assert expand_braces("s-{00008..00011}.tar") == ["s-00008.tar", "s-00009.tar", "s-00010.tar", "s-00011.tar"]
    assert expand_braces("{a,b}/{9..10}.tar") == ["a/9.tar", "a/10.tar", "b/9.tar", "b/10.tar"]
    assert expand_braces("plain.tar.gz") == ["plain.tar.gz"]
    with pytest.raises(DataSourceError, match="not a range"):
        expand_braces("s-{5..2}.tar")
    for i in range(3):
        (tmp_path / f"shard-{i:05d}.tar.gz").write_bytes(b"")
    assert list_sources([f"{tmp_path}/shard-{{00000..00002}}.tar.gz"]) == [
        f"{tmp_path}/shard-{i:05d}.tar.gz" for i in range(3)]
    with pytest.raises(DataSourceError, match=r"2 of the 5 files it names do not exist \(first: .*shard-00003"):
        list_sources([f"{tmp_path}/shard-{{00000..00004}}.tar.gz"])
