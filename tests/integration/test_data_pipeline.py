"""Ray Data ingestion end to end: synthetic shards, local and S3, corrupt files, determinism, Ray Train."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vwm.config import DataConfig, MaskConfig, SyntheticConfig
from vwm.data.decode import encode_mp4
from vwm.data.shards import DataSourceError, list_sources
from vwm.data.synthetic import render_video
from vwm.masks.collate import MaskCollator

SYN = SyntheticConfig(video_frames=32, height=48, width=48, fps=15)


def _data_cfg(paths, **kw) -> DataConfig:
    base = dict(source="shards", paths=paths, frames=8, frame_step=2, crop=32, batch_size=4, clips_per_video=2,
                shuffle_buffer=8, prefetch_batches=1)
    base.update(kw)
    return DataConfig(**base)


def _collate(rank=0):
    return MaskCollator(MaskConfig(), (4, 4, 4), seed=0, rank=rank, steps_per_epoch=100)


@pytest.fixture(scope="module")
def local_shards(tmp_path_factory, ray_cluster):
    from vwm.data.tools import run_synth

    out = tmp_path_factory.mktemp("shards")
    uris = run_synth(str(out), num_videos=12, shards=3, seed=0, cfg=SYN)
    return out, uris


def test_synth_writes_deterministic_shards_and_inspect_counts_them(local_shards, tmp_path):
    from vwm.data.tools import run_inspect, run_synth

    out, uris = local_shards
    assert [u.rsplit("/", 1)[-1] for u in uris] == ["shard-00000.tar", "shard-00001.tar", "shard-00002.tar"]
    again = run_synth(str(tmp_path), num_videos=12, shards=3, seed=0, cfg=SYN)
    assert all(open(a, "rb").read() == open(b, "rb").read() for a, b in zip(uris, again))
    report = run_inspect([str(out)])
    assert report.videos == 12 and report.frames == 12 * 32 and report.unreadable == []
    assert report.seconds == pytest.approx(12 * 32 / 15, rel=0.01)
    assert dict(report.resolutions) == {(48, 48): 12} and dict(report.fps) == {15.0: 12}


def test_pipeline_skips_and_counts_bad_videos(local_shards, tmp_path):
    from vwm.data.pipeline import build_dataset, clip_batches, skip_ledger

    out, uris = local_shards
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "zero.mp4").write_bytes(b"")
    (bad / "garbage.mp4").write_bytes(b"\x00not a video" * 100)
    short, _ = render_video(SyntheticConfig(video_frames=6, height=48, width=48), 0, 0)
    (bad / "short.mp4").write_bytes(encode_mp4(short, 15))
    whole = open(uris[0], "rb").read()
    (bad / "cut.tar").write_bytes(whole[: len(whole) // 2])
    ledger = skip_ledger("test-skips")
    cfg = _data_cfg([str(out), str(bad)])
    ds = build_dataset(cfg, seed=0, epochs=range(2), ledger=ledger)
    batches = list(clip_batches(ds, _collate(), cfg, seed=0, rank=0))
    import ray

    skipped = dict(ray.get(ledger.logged.remote()))
    assert ray.get(ledger.count.remote()) == 4, skipped
    assert "empty file" in skipped[str(bad / "zero.mp4")]
    assert "not a readable video container" in skipped[str(bad / "garbage.mp4")]
    assert "too short" in skipped[str(bad / "short.mp4")]
    assert "ends early or is corrupt" in skipped[str(bad / "cut.tar")]
    # 12 good videos + the cut shard's readable prefix, 2 clips each, 2 epochs, batches of 4
    assert len(batches) >= (12 * 2 * 2) // 4
    for b in batches:
        assert tuple(b.clips_BTHWC.shape) == (4, 8, 32, 32, 3) and str(b.clips_BTHWC.dtype) == "torch.uint8"
        assert [tuple(c.shape[:1]) for c, _ in b.masks] == [(4,), (4,)]


def test_real_world_videos_are_decoded_and_only_lost_ones_counted(tmp_path, ray_cluster):
    """Issue 9's inputs in one run: a resolution change, variable frame rate, Matroska/WebM with a longer
    audio track, a gzip shard with folders and dotted names, warnings that lose nothing, a corrupt header."""
    import gzip
    import io
    import tarfile

    import ray

    from tests.unit.test_ingest_defects import grey_mp4, matroska_with_long_audio, mixed_size_video, vfr_video
    from vwm.data.pipeline import build_dataset, skip_ledger
    from vwm.data.shards import Sample, write_shard

    d = tmp_path / "videos"
    d.mkdir()
    (d / "mixed.mp4").write_bytes(mixed_size_video())
    (d / "vfr.mp4").write_bytes(vfr_video([0, 100, 133, 166, 266, 300, 333, 433, 466, 500, 600, 633, 666, 700]))
    (d / "long.mkv").write_bytes(matroska_with_long_audio())
    (d / "long.webm").write_bytes(matroska_with_long_audio(fmt="webm"))
    write_shard(str(d / "warn.tar"), [Sample("a", {"mp4": grey_mp4(), "json": b"null"}),
                                      Sample("orphan", {"json": b"{}"}), Sample("b", {"mp4": grey_mp4(), "txt": b"x"})])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in ("a/0001.mp4", "b/0001.mp4", "clip.v2.mp4"):
            info = tarfile.TarInfo(name)
            data = grey_mp4(16 + len(tar.getmembers()))
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (d / "folders.tar.gz").write_bytes(gzip.compress(buf.getvalue(), mtime=0))
    write_shard(str(d / "bad.tar"), [Sample.from_video(f"k{i:02d}", grey_mp4(12 + i)) for i in range(16)])
    with tarfile.open(d / "bad.tar") as tar:
        at = tar.getmembers()[2].offset
    broken = bytearray((d / "bad.tar").read_bytes())
    broken[at: at + 512] = b"\xab" * 512
    (d / "bad.tar").write_bytes(bytes(broken))

    ledger = skip_ledger("test-real-world")
    cfg = _data_cfg([str(d)], frame_step=1, clips_per_video=1)
    keys = [r["key"] for r in build_dataset(cfg, seed=0, epochs=range(1), ledger=ledger).iter_rows()]
    assert sorted(k.removeprefix(str(d) + "/") for k in keys) == [
        "bad.tar#k00", "bad.tar#k01", "folders.tar.gz#a/0001", "folders.tar.gz#b/0001", "folders.tar.gz#clip",
        "long.mkv",
        "long.webm", "mixed.mp4", "vfr.mp4", "warn.tar#a", "warn.tar#b"]
    skipped = dict(ray.get(ledger.logged.remote()))
    assert ray.get(ledger.count.remote()) == 1 and "corrupt" in skipped[str(d / "bad.tar")], skipped
    assert sorted(ray.get(ledger.warnings.remote())) == [f"{d}/warn.tar#a.json", f"{d}/warn.tar#orphan"]


def test_same_seed_and_epoch_give_the_same_clips_in_the_same_order(local_shards):
    from vwm.data.pipeline import build_dataset, clip_batches, skip_ledger

    out, _ = local_shards
    cfg = _data_cfg([str(out)])
    ledger = skip_ledger("test-determinism")

    def run(seed, epochs):
        ds = build_dataset(cfg, seed=seed, epochs=epochs, ledger=ledger)
        return [b.clips_BTHWC.numpy() for b in clip_batches(ds, _collate(), cfg, seed=seed, rank=0)]

    a, b = run(0, range(1)), run(0, range(1))
    assert len(a) == len(b) == 6 and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, run(0, range(1, 2))))
    assert not all(np.array_equal(x, y) for x, y in zip(a, run(1, range(1))))


def test_s3_shards_through_moto(s3_bucket, ray_cluster):
    from vwm.data.pipeline import build_dataset, clip_batches, skip_ledger
    from vwm.data.tools import run_synth

    endpoint, bucket = s3_bucket
    uris = run_synth(f"s3://{bucket}/synth", num_videos=6, shards=2, seed=0, cfg=SYN, endpoint_url=endpoint)
    assert uris == [f"s3://{bucket}/synth/shard-00000.tar", f"s3://{bucket}/synth/shard-00001.tar"]
    assert list_sources([f"s3://{bucket}/synth"], endpoint) == uris
    assert list_sources([f"s3://{bucket}/synth/*.tar"], endpoint) == uris
    cfg = _data_cfg([f"s3://{bucket}/synth"], endpoint_url=endpoint, shuffle_buffer=0)
    ledger = skip_ledger("test-s3")
    batches = list(clip_batches(build_dataset(cfg, seed=0, epochs=range(1), ledger=ledger), _collate(), cfg,
                                seed=0, rank=0))
    import ray

    assert len(batches) == 3 and ray.get(ledger.count.remote()) == 0
    assert tuple(batches[0].clips_BTHWC.shape) == (4, 8, 32, 32, 3)


def test_missing_bucket_and_empty_prefix_fail_at_start_naming_them(s3_bucket):
    endpoint, bucket = s3_bucket
    with pytest.raises(DataSourceError, match=r"bucket 'no-such-bucket' of s3://no-such-bucket/x does not exist"):
        list_sources(["s3://no-such-bucket/x"], endpoint)
    with pytest.raises(DataSourceError, match=rf"no video files or tar shards match s3://{bucket}/empty"):
        list_sources([f"s3://{bucket}/empty"], endpoint)


def test_checkpoint_storage_that_cannot_be_used_fails_before_the_cluster_says_why(s3_bucket, tmp_path):
    from vwm.config import ConfigError
    from vwm.configfile import load_config
    from vwm.tasks.jepa import run_pretrain
    from tests.conftest import DEBUG_CONFIG
    from tests.integration.conftest import free_port

    endpoint, bucket = s3_bucket
    host = endpoint.removeprefix("http://")

    def start(storage):
        return run_pretrain(load_config(DEBUG_CONFIG, [f"train.output_dir={tmp_path}/out", "train.device=cpu",
                                                       f"dist.storage_path={storage}", "tracking.backend=jsonl"]))

    with pytest.raises(ConfigError, match=r"dist.storage_path=s3://no-such-bucket/runs.*bucket 'no-such-bucket' "
                                          r"does not exist"):
        start(f"s3://no-such-bucket/runs?endpoint_override={host}&scheme=http")
    with pytest.raises(ConfigError, match=r"endpoint does not answer"):
        start(f"s3://{bucket}/runs?endpoint_override=127.0.0.1:{free_port()}&scheme=http")
    assert not list((tmp_path / "out").glob("*"))


def test_pipeline_feeds_a_two_worker_ray_train_loop(local_shards, tmp_path):
    import ray.train
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from vwm.data.pipeline import build_dataset, clip_batches, skip_ledger

    out, _ = local_shards
    cfg = _data_cfg([str(out)])
    ds = build_dataset(cfg, seed=0, epochs=range(2), ledger=skip_ledger("test-train"))

    def loop(config):
        import torch.distributed as dist

        rank = ray.train.get_context().get_world_rank()
        collate = MaskCollator(MaskConfig(), (4, 4, 4), seed=0, rank=rank, steps_per_epoch=100)
        shard = ray.train.get_dataset_shard("train")
        keys, shapes = 0, set()
        for batch in clip_batches(shard, collate, config["data"], seed=0, rank=rank):
            shapes.add(tuple(batch.clips_BTHWC.shape))
            keys += batch.clips_BTHWC.shape[0]
        dist.barrier()  # the process group is real: both ranks meet here
        (config["out"] / f"rank{rank}.json").write_text(json.dumps({"clips": keys, "shapes": sorted(shapes)}))

    trainer = TorchTrainer(loop, train_loop_config={"data": cfg, "out": tmp_path},
                           scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
                           run_config=RunConfig(name="data-to-train", storage_path=str(tmp_path / "ray")),
                           datasets={"train": ds})
    trainer.fit()
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(s["shapes"] == [[4, 8, 32, 32, 3]] for s in seen)
    # 12 videos x 2 clips x 2 epochs = 48 clips split between the two workers (whole batches only)
    assert all(s["clips"] >= 16 for s in seen) and sum(s["clips"] for s in seen) <= 48


def test_local_pretraining_on_shards_resumes_at_its_data_position(local_shards, tmp_path):
    from vwm.configfile import load_config
    from vwm.tasks.jepa import run_pretrain
    from tests.conftest import REPO

    def run_local(cfg, **kwargs):
        return run_pretrain(cfg, local=True, progress=False, **kwargs).summary

    out, _ = local_shards
    cfg = load_config(REPO / "configs" / "pretrain" / "debug_shards.yaml",
                      [f"data.paths=[{out}]", f"train.output_dir={tmp_path}", "train.steps=8",
                       "train.checkpoint_every=4", "data.batch_size=4", "train.device=cpu", "tracking.backend=jsonl"])
    first = run_local(cfg, stop_at=4)
    meta = json.loads((first.last_checkpoint / "meta.json").read_text())
    epoch, order = meta["data_position"]["position"]
    assert epoch == 0 and 0 <= order < 3
    rest = run_local(cfg, resume=True)
    assert rest.start_step == 4 and rest.final_step == 8
    assert all(np.isfinite(first.losses + rest.losses))
    rows = [json.loads(line) for line in (first.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["data/skipped_videos"] == 0


def test_bench_data_job_runs_and_writes_its_table(tmp_path, ray_cluster):
    from vwm.config import BenchDataConfig
    from vwm.data.bench import run_bench_data

    report = tmp_path / "perf.md"
    report.write_text("# Performance\n")
    cfg = BenchDataConfig(num_videos=4, shards=2, out=str(tmp_path / "bench"), cpus=[1, 2], report=str(report),
                          synthetic=SyntheticConfig(video_frames=32, height=48, width=48),
                          data=_data_cfg([str(tmp_path / "bench")], shuffle_buffer=0))
    rows = run_bench_data(cfg)
    assert [(r["what"], r["cpus"]) for r in rows] == [("single-process PyAV loop", 1),
                                                      ("bare processes, no Ray (ceiling)", 2),
                                                      ("Ray Data pipeline", 1), ("Ray Data pipeline", 2)]
    assert all(r["clips"] == 4 * 2 for r in rows) and all(r["clips_per_s"] > 0 for r in rows)
    text = report.read_text()
    assert text.startswith("# Performance") and "| Ray Data pipeline | 2 | 8 |" in text


def test_a_packed_folder_of_videos_with_a_csv_trains(tmp_path, ray_cluster, capsys):
    """`vwm data pack`: loose videos in nested folders (dots in names) and a CSV of labels become shards
    whose KEY.json holds each video's row; a brace pattern of them trains."""
    from vwm.cli import main
    from vwm.configfile import load_config
    from vwm.data.shards import iter_samples
    from vwm.tasks.jepa import run_pretrain
    from tests.conftest import REPO

    videos = tmp_path / "videos"
    names = ["cam1/clip.a.mp4", "cam1/clip_b.mp4", "cam2/c.mp4", "cam2/deep/d.mp4", "e.mp4"]
    for i, name in enumerate(names):
        frames_THWC, _ = render_video(SYN, 3, i)
        (videos / name).parent.mkdir(parents=True, exist_ok=True)
        (videos / name).write_bytes(encode_mp4(frames_THWC, SYN.fps))
    (videos / "notes.txt").write_text("not a video")
    (tmp_path / "labels.csv").write_text("path,action,speed\ncam1/clip.a.mp4,wave,1.5\ncam1/clip_b.mp4,run,2\n"
                                         "cam2/c.mp4,wave,0.5\ne.mp4,sit,3\ngone/missing.mp4,run,1\n")
    code = main(["data", "pack", "--videos", str(videos), "--labels", str(tmp_path / "labels.csv"),
                 "--out", str(tmp_path / "packed"), "--shard-videos", "3"])
    out = capsys.readouterr().out
    assert code == 0 and "wrote 5 videos (4 labelled; 1 label rows named no video) in 2 shards" in out, out
    pattern = f"{tmp_path}/packed/shard-{{00000..00001}}.tar"
    assert f'data.paths=["{pattern}"]' in out  # quoted: braces are YAML's too
    samples = {s.key: s for u in list_sources([pattern]) for s in iter_samples(u)}
    assert sorted(samples) == ["cam1/clip_a", "cam1/clip_b", "cam2/c", "cam2/deep/d", "e"]
    assert samples["cam1/clip_a"].meta == {"action": "wave", "speed": 1.5}
    assert samples["e"].meta == {"action": "sit", "speed": 3} and samples["cam2/deep/d"].meta == {}
    assert samples["cam2/c"].video == (videos / "cam2/c.mp4").read_bytes()  # stored as it was, not re-encoded

    cfg = load_config(REPO / "configs" / "pretrain" / "debug_shards.yaml",
                      [f'data.paths=["{pattern}"]', f"train.output_dir={tmp_path}/out", "train.steps=3",
                       "data.batch_size=2", "train.device=cpu", "tracking.backend=jsonl"])
    result = run_pretrain(cfg, local=True, progress=False)
    assert result.summary.final_step == 3 and all(np.isfinite(result.summary.losses))
    inputs = json.loads((result.run_dir / "inputs.json").read_text())
    assert inputs[0]["profile"]["files"] == 2 and json.loads(inputs[0]["source"]) == [pattern]
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["data/skipped_videos"] == 0
