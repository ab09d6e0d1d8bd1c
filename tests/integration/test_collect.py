"""`vwm data collect` end to end on a real local Ray: TwoRooms episodes as Ray tasks into local and S3 shards
(byte-identical for a seed, whatever the worker count), inspected, and read back as aligned windows through
the Ray Data pipeline with actions matching the states' differences."""

from __future__ import annotations

import json

import numpy as np

from vwm.config import CollectConfig, EnvConfig, TrajectoryConfig
from vwm.data.shards import filesystem


def test_collect_two_rooms_end_to_end(ray_cluster, s3_bucket, tmp_path):
    import ray

    from vwm.data.collect import run_collect
    from vwm.data.pipeline import build_trajectory_dataset, skip_ledger
    from vwm.data.tools import run_inspect

    cfg = CollectConfig(out=str(tmp_path / "a"), env=EnvConfig(name="two_rooms", image_size=32), episodes=12,
                        steps=20, seed=3, held_out_fraction=0.25, episodes_per_shard=4, workers=2)
    a = run_collect(cfg, progress=False)
    assert a.episodes == {"train": 9, "held_out": 3}
    assert [u.rsplit("/", 2)[-2:] for u in a.shards["train"]] == [["train", f"shard-0000{i}.tar"] for i in range(3)]
    assert len(a.shards["held_out"]) == 1

    # deterministic for a seed: one worker instead of two, and S3 instead of a folder, give the same bytes
    b = run_collect(cfg.model_copy(update={"out": str(tmp_path / "b"), "workers": 1}), progress=False)
    endpoint, bucket = s3_bucket
    c = run_collect(cfg.model_copy(update={"out": f"s3://{bucket}/traj", "endpoint_url": endpoint}), progress=False)
    fs3, _ = filesystem(c.out, endpoint)
    for split in ("train", "held_out"):
        for ua, ub, uc in zip(a.shards[split], b.shards[split], c.shards[split]):
            data = open(ua, "rb").read()
            assert data == open(ub, "rb").read() == fs3.cat(uc.removeprefix("s3://"))

    summary = json.loads((tmp_path / "a" / "dataset.json").read_text())
    assert summary["episodes"] == {"train": 9, "held_out": 3} and summary["stats_split"] == "train"
    assert summary["stats"]["actions"]["count"] == 9 * 20

    report = run_inspect([str(tmp_path / "a")])
    t = report.trajectories
    assert (report.videos, t.episodes, t.steps, report.unreadable) == (12, 12, 240, [])
    assert sum(n for (env, split, _), n in t.by.items() if split == "held_out") == 3
    assert all(-1 <= lo < 0 < hi <= 1 for lo, hi in zip(t.action_min, t.action_max))
    assert "trajectory episodes: 12, env steps: 240" in report.text()

    traj = TrajectoryConfig(paths=[str(tmp_path / "a" / "train")], frames=3, frameskip=5, windows_per_episode=2,
                            normalize=False)
    ledger = skip_ledger("test-trajectories")
    rows = build_trajectory_dataset(traj, seed=0, epochs=[0], ledger=ledger).take_all()
    assert len(rows) == 18 and ray.get(ledger.count.remote()) == 0
    held_keys = {f"ep-{i:07d}" for i in range(12)} - {r["key"].rsplit("#", 1)[-1] for r in rows}
    assert len(held_keys) == 3  # held-out episodes never reach the train windows
    scale = cfg.env.two_rooms.action_scale
    exact = 0
    for r in rows:
        assert r["frames_THWC"].shape == (3, 32, 32, 3) and r["frames_THWC"].dtype == np.uint8
        assert r["actions_TA"].shape == (2, 10) and r["states_TS"].shape == (3, 2)
        moves = r["actions_TA"].reshape(2, 5, 2) * scale
        steps = np.diff(r["states_TS"], axis=0)
        assert np.all(np.abs(steps) <= np.abs(moves).sum(1) + 1e-4)  # walls only ever shorten a move
        exact += np.allclose(steps, moves.sum(1), atol=1e-4)
    # window starts are keyed by the shard path (a tmp folder), so the share varies from run to run (8 of
    # 18 in one run, at least 9 in others): random walks bounce off walls often
    assert exact >= len(rows) // 3, f"only {exact} of {len(rows)} windows move by their actions' sum"

    normed = TrajectoryConfig(paths=[str(tmp_path / "a" / "train")], frames=3, frameskip=5, windows_per_episode=2,
                              stats=str(tmp_path / "a" / "dataset.json"))
    rows_n = build_trajectory_dataset(normed, seed=0, epochs=[0], ledger=ledger).take_all()
    assert [r["start"] for r in rows_n] == [r["start"] for r in rows]
    states = np.concatenate([r["states_TS"] for r in rows_n])
    assert np.all(np.abs(states.mean(0)) < 1.0) and np.all(states.std(0) > 0.3)


def test_jobs_collect_main_and_a_missing_bucket(ray_cluster, s3_bucket, tmp_path, capsys):
    import importlib.util

    from tests.conftest import REPO

    spec = importlib.util.spec_from_file_location("collect_job", REPO / "jobs" / "collect.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    cfg = CollectConfig(out=str(tmp_path / "job"), env=EnvConfig(image_size=16), episodes=3, steps=5,
                        held_out_fraction=0.0)
    assert job.main(cfg) == 0
    assert "wrote 3 train and 0 held-out episodes" in capsys.readouterr().out
    assert (tmp_path / "job" / "train" / "shard-00000.tar").is_file()
    endpoint, _ = s3_bucket
    missing = cfg.model_copy(update={"out": "s3://no-such-bucket/x", "endpoint_url": endpoint})
    assert job.main(missing) == 2
    assert "bucket 'no-such-bucket' of out=s3://no-such-bucket/x does not exist" in capsys.readouterr().err
