"""Trajectory episodes without Ray: the shard sample schema, statistics, aligned windows with frame skip,
the mirror augmentation, normalisation, and config errors of `vwm data collect`."""

from __future__ import annotations

import numpy as np
import pytest

from vwm.cli import main as cli_main
from vwm.config import CollectConfig, EnvConfig, PolicyConfig, TwoRoomsConfig
from vwm.configfile import load_config
from vwm.data.collect import episode_meta, rollout, split_episodes
from vwm.data.trajectories import (FORMAT, cut_window, decode_npz, episode_sample, episode_windows, merge_stats,
                                   mirror_window, moments, normalize_window, read_episode)
from vwm.envs import make_env
from vwm.envs.push_t import available
from tests.conftest import REPO

CFG = CollectConfig(env=EnvConfig(name="two_rooms", image_size=32), policy=PolicyConfig(expert_fraction=1.0),
                    episodes=10, steps=30, seed=5)


@pytest.fixture(scope="module")
def episode():
    env = make_env("two_rooms", obs_type="pixels", **CFG.env.kwargs())
    frames, actions, states, kind = rollout(env, CFG, 2)
    sample = episode_sample("ep-0000002", frames, actions, states, episode_meta(CFG, env, 2, "train", kind),
                            fps=CFG.fps, crf=CFG.crf)
    return env, frames, actions, states, sample


def test_episode_sample_follows_the_schema(episode):
    env, frames, actions, states, sample = episode
    assert set(sample.members) == {"mp4", "npz", "json"}
    meta = sample.meta
    assert meta["format"] == FORMAT and meta["env"] == "two_rooms" and meta["episode"] == 2
    assert (meta["frames"], meta["steps"], meta["action_dim"], meta["state_dim"]) == (31, 30, 2, 2)
    assert meta["policy"] == "expert" and meta["env_kwargs"]["image_size"] == 32
    arrays = decode_npz(sample.members["npz"])
    assert arrays["actions"].dtype == np.float32 and arrays["actions"].shape == (31, 2)
    assert np.isnan(arrays["actions"][-1]).all() and np.array_equal(arrays["actions"][:-1], actions[:-1])
    assert np.array_equal(arrays["states"], states)
    assert meta["stats"]["actions"]["count"] == 30
    assert np.allclose(meta["stats"]["states"]["mean"], states.mean(0), atol=1e-4)
    # the same episode encodes to the same bytes (npz members carry no timestamp)
    again = episode_sample("ep-0000002", frames, actions, states, episode_meta(CFG, env, 2, "train", meta["policy"]),
                           fps=CFG.fps, crf=CFG.crf)
    assert again.members == sample.members
    decoded, *_ = read_episode(sample)
    assert decoded.shape == frames.shape and np.abs(decoded.astype(int) - frames.astype(int)).mean() < 3


def test_merged_statistics_equal_those_of_the_concatenation():
    rng = np.random.default_rng(0)
    parts = [rng.normal(size=(n, 3)) * [1, 2, 3] + [0, 5, -1] for n in (7, 20, 1)]
    merged = merge_stats([moments(p) for p in parts])
    whole = np.concatenate(parts)
    assert merged["count"] == 28
    assert np.allclose(merged["mean"], whole.mean(0)) and np.allclose(merged["std"], whole.std(0))
    assert np.allclose(merged["min"], whole.min(0)) and np.allclose(merged["max"], whole.max(0))


def test_window_blocks_concatenate_the_actions_between_kept_frames():
    n, k, t = 23, 3, 5
    frames = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), dtype=np.uint8)
    actions = np.stack([np.arange(n), -np.arange(n)], 1).astype(np.float32)
    states = np.arange(n, dtype=np.float32)[:, None]
    w = cut_window(frames, actions, states, start=4, frames=t, frameskip=k)
    assert w["frames_THWC"][:, 0, 0, 0].tolist() == [4, 7, 10, 13, 16]
    assert w["states_TS"][:, 0].tolist() == [4, 7, 10, 13, 16]
    assert w["actions_TA"].shape == (4, 6)
    assert w["actions_TA"][0].tolist() == [4, -4, 5, -5, 6, -6]  # the 3 actions from frame 4 to frame 7
    assert w["actions_TA"][-1].tolist() == [13, -13, 14, -14, 15, -15]


def test_windows_follow_the_dynamics_and_the_mirror_keeps_them(episode):
    env, frames, actions, states, sample = episode
    k = 3
    windows = episode_windows(sample, frames=4, frameskip=k, count=6, rng=np.random.default_rng(0))
    assert len(windows) == 6
    for w in windows:
        moves = w["actions_TA"].reshape(3, k, 2) * env.action_scale
        steps = np.diff(w["states_TS"], axis=0)
        # a block's displacement is its actions' sum unless a wall stopped the agent (then it is shorter)
        assert np.all(np.abs(steps) <= np.abs(moves).sum(1) + 1e-4)
        # each kept frame shows the agent at its state
        for frame, state in zip(w["frames_THWC"], w["states_TS"]):
            assert np.abs(frame.astype(int) - env.draw(state).astype(int)).mean() < 4
        m = mirror_window(w, sample.meta["mirror"], k)
        assert np.allclose(m["states_TS"][:, 0], env.arena - w["states_TS"][:, 0])
        assert np.allclose(np.diff(m["states_TS"], axis=0)[:, 0], -steps[:, 0], atol=1e-4)
        assert np.array_equal(m["actions_TA"].reshape(3, k, 2)[..., 0], -w["actions_TA"].reshape(3, k, 2)[..., 0])
        assert np.array_equal(m["frames_THWC"], w["frames_THWC"][:, :, ::-1])
    exact = [np.allclose(np.diff(w["states_TS"], axis=0), (w["actions_TA"].reshape(3, k, 2) * env.action_scale).sum(1),
                         atol=1e-4) for w in windows]
    assert sum(exact) >= 4  # the expert rarely touches a wall


def test_normalised_windows_use_the_dataset_statistics(episode):
    *_, sample = episode
    stats = {k: sample.meta["stats"][k] for k in ("actions", "states")}
    [raw] = episode_windows(sample, frames=3, frameskip=5, count=1, rng=np.random.default_rng(1))
    [norm] = episode_windows(sample, frames=3, frameskip=5, count=1, rng=np.random.default_rng(1), stats=stats)
    assert raw["start"] == norm["start"]
    mean, std = np.tile(stats["actions"]["mean"], 5), np.tile(stats["actions"]["std"], 5)
    assert np.allclose(norm["actions_TA"], (raw["actions_TA"] - mean) / std, atol=1e-5)
    restored = norm["states_TS"] * stats["states"]["std"] + stats["states"]["mean"]
    assert np.allclose(restored, raw["states_TS"], atol=1e-3)
    assert normalize_window(raw, stats, 5)["actions_TA"].shape == (2, 10)
    assert episode_windows(sample, frames=8, frameskip=5, count=1, rng=np.random.default_rng(0)) == []  # too long


def test_split_is_by_episode_and_keyed_by_seed():
    cfg = CollectConfig(episodes=40, held_out_fraction=0.25, seed=1)
    split = split_episodes(cfg)
    assert len(split["held_out"]) == 10 and sorted(split["train"] + split["held_out"]) == list(range(40))
    assert split == split_episodes(cfg) and split != split_episodes(cfg.model_copy(update={"seed": 2}))


def test_collect_config_errors_exit_2_before_any_work(capsys):
    path = REPO / "configs" / "data" / "collect_two_rooms.yaml"
    assert load_config(path, [], CollectConfig).episodes == 2000
    assert load_config(REPO / "configs" / "data" / "collect_push_t.yaml", [], CollectConfig).env.name == "push_t"
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["data", "collect", "--config", str(path), "--set", "policy.expert_fractoin=0.2"])
    assert exit_info.value.code == 2
    assert "did you mean policy.expert_fraction?" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["data", "collect", "--config", str(path), "--set", "env.image_size=33"])
    assert "env.image_size=33 is odd" in capsys.readouterr().err
    with pytest.raises(ValueError, match="door_width=3.0 must exceed"):
        TwoRoomsConfig(door_width=3.0)


@pytest.mark.skipif(not available(), reason="gym-pusht is not installed (pip install -e '.[pusht]')")
def test_push_t_episode_has_seven_state_dims_and_no_mirror():
    cfg = CollectConfig(env=EnvConfig(name="push_t", image_size=32), policy=PolicyConfig(expert_fraction=1.0),
                        steps=10, seed=0)
    env = make_env("push_t", obs_type="pixels", **cfg.env.kwargs())
    frames, actions, states, kind = rollout(env, cfg, 0)
    assert frames.shape == (11, 32, 32, 3) and actions.shape == (11, 2) and states.shape == (11, 7)
    meta = episode_meta(cfg, env, 0, "train", kind)
    sample = episode_sample("ep-0000000", frames, actions, states, meta, fps=10, crf=18)
    meta = sample.meta
    assert meta["mirror"] is None and meta["state_names"][4] == "block_angle" and meta["state_dim"] == 7
    [w] = episode_windows(sample, frames=3, frameskip=5, count=1, rng=np.random.default_rng(0), hflip=1.0)
    assert np.allclose(w["states_TS"], states[[0, 5, 10]]) and np.array_equal(w["actions_TA"][1], actions[5:10].ravel())
