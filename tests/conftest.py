"""Shared fixtures. Tests build tiny models: the whole suite must run on 2 CPU cores."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vwm.config import PretrainConfig
from vwm.configfile import load_config

REPO = Path(__file__).resolve().parents[1]
DEBUG_CONFIG = REPO / "configs" / "pretrain" / "debug_cpu.yaml"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def debug_cfg(tmp_path) -> PretrainConfig:
    """The debug config with outputs under the test's tmp dir and a quiet tracker."""
    return load_config(DEBUG_CONFIG, [f"train.output_dir={tmp_path}", "train.device=cpu"])


def write_held_out(folder: Path, *, episodes: int, steps: int, seed: int, image: int = 64) -> str:
    """A held-out shard of TwoRooms trajectories, half random walks, half the door-crossing expert (as the
    collection's default), written in-process; returns the folder."""
    from vwm.config import CollectConfig, EnvConfig, PolicyConfig
    from vwm.data.collect import episode_meta, rollout
    from vwm.data.shards import write_shard
    from vwm.data.trajectories import episode_sample
    from vwm.envs import make_env

    cfg = CollectConfig(env=EnvConfig(name="two_rooms", image_size=image), policy=PolicyConfig(expert_fraction=0.5),
                        episodes=episodes, steps=steps, seed=seed)
    env = make_env("two_rooms", obs_type="pixels", **cfg.env.kwargs())
    samples = []
    for i in range(cfg.episodes):
        frames, actions, states, kind = rollout(env, cfg, i)
        samples.append(episode_sample(f"ep-{i:07d}", frames, actions, states,
                                      episode_meta(cfg, env, i, "held_out", kind), fps=cfg.fps, crf=cfg.crf))
    folder.mkdir(parents=True, exist_ok=True)
    write_shard(str(folder / "shard-00000.tar"), samples)
    return str(folder)


def tiny_ac_parts(image: int, frameskip: int = 5, pool: int = 2, max_frames: int = 8):
    """(model config, frame encoder, predictor, manifest fields) of an untrained TwoRooms world model."""
    from vwm.config import ModelConfig
    from vwm.models.ac_predictor import ACPredictor
    from vwm.models.ac_world_model import FrameEncoder

    torch.manual_seed(0)
    cfg = ModelConfig(preset="debug", dim=32, depth=1, heads=2, patch_size=8)
    encoder = FrameEncoder(cfg, image, pool, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
    predictor = ACPredictor(enc_dim=32, dim=32, depth=1, heads=2, mlp_ratio=2.0, grid_hw=(pool, pool),
                            max_frames=max_frames, action_dim=2 * frameskip, state_dim=2, pos_embed=cfg.pos_embed,
                            residual=False)
    fields = {"action_dim": 2 * frameskip, "state_dim": 2, "frameskip": frameskip, "env_action_dim": 2,
              "normalisation": {"action_mean": [0.0] * 2 * frameskip, "action_std": [1.0] * 2 * frameskip,
                                "state_mean": [32.0, 32.0], "state_std": [16.0, 16.0]}}
    return cfg, encoder, predictor, fields


def write_tiny_ac_model(folder: Path, image: int = 64, max_frames: int = 8) -> Path:
    """An untrained vjepa-ac artifact, as ``vwm posttrain`` exports one: what an evaluator loads."""
    from vwm.models.artifact import write_artifact

    cfg, encoder, predictor, fields = tiny_ac_parts(image, max_frames=max_frames)
    return write_artifact(folder, kind="vjepa-ac", model_config=cfg, frames=cfg.tubelet_size, crop=image,
                          weights={"encoder": encoder.encoder.state_dict(), "predictor": predictor.state_dict()},
                          extras={"ac": {"pool": 2, "max_frames": max_frames, "residual": False, "dim": 32,
                                         "depth": 1, "heads": 2, "mlp_ratio": 2.0}, **fields})
