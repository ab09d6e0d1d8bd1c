"""The linear-probe objective: the classifier, the labelled probe sets, and their config checks."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import REPO
from vwm.config import ConfigError, SyntheticConfig
from vwm.configfile import load_config
from vwm.data.decode import encode_mp4
from vwm.data.shards import DataSourceError, Sample, write_shard
from vwm.data.synthetic import render_video
from vwm.eval.probe import linear_probe_accuracy, pooled_features, probe_set

DEBUG = REPO / "configs" / "pretrain" / "debug_cpu.yaml"


def test_probe_separates_separable_features_and_not_noise():
    g = torch.Generator().manual_seed(0)
    labels_B = torch.arange(200) % 4
    centres_KF = torch.randn(4, 16, generator=g) * 3
    feats_BF = centres_KF[labels_B] + torch.randn(200, 16, generator=g)
    assert linear_probe_accuracy(feats_BF, labels_B, train_fraction=0.75, steps=50) == 1.0
    from vwm.eval.rankme import rankme

    assert rankme(torch.full((8, 4), float("nan"))) != rankme(torch.full((8, 4), float("nan")))  # NaN, no SVD error
    noise_BF = torch.randn(200, 16, generator=g)
    assert linear_probe_accuracy(noise_BF, labels_B, train_fraction=0.75, steps=50) < 0.5


def test_synthetic_probe_set_carries_metadata_labels_and_is_reproducible():
    cfg = load_config(DEBUG, ["train.eval_every=2", "monitor.probe.label=num_objects", "monitor.probe.clips=12"])
    clips_BTHWC, labels_B = probe_set(cfg.data, cfg.monitor.probe, seed=0)
    assert clips_BTHWC.shape == (12, cfg.data.frames, cfg.data.crop, cfg.data.crop, 3)
    assert clips_BTHWC.dtype == torch.uint8 and labels_B.dtype == torch.int64
    assert 1 < len(set(labels_B.tolist())) <= cfg.data.synthetic.max_objects
    again_BTHWC, again_B = probe_set(cfg.data, cfg.monitor.probe, seed=0)
    assert torch.equal(clips_BTHWC, again_BTHWC) and torch.equal(labels_B, again_B)

    from vwm.models.jepa import build_models
    from vwm.models.vit import token_grid

    _, target = build_models(cfg.model, cfg.data.frames, cfg.data.crop, len(cfg.mask.sets))
    grid = token_grid(cfg.model, cfg.data.frames, cfg.data.crop)
    feats_BF = pooled_features(target, clips_BTHWC, grid, torch.device("cpu"), batch_size=5)
    assert feats_BF.shape == (12, grid[0] * cfg.model.dim)  # one pooled vector per time slot
    assert torch.isfinite(feats_BF).all()


def _labelled_shard(path, n: int, meta_key: str = "direction", corrupt: int | None = None):
    cfg = SyntheticConfig(num_videos=n, video_frames=24, height=32, width=32)
    samples = []
    for i in range(n):
        frames, meta = render_video(cfg, 3, i)
        video = b"not a video" if i == corrupt else encode_mp4(frames, cfg.fps)
        samples.append(Sample.from_video(f"v{i:03d}", video, {meta_key: meta["direction"]}))
    write_shard(str(path), samples)


def test_shard_probe_set_reads_labels_and_skips_unreadable_videos(tmp_path):
    _labelled_shard(tmp_path / "probe-00000.tar", 10, corrupt=4)
    cfg = load_config(DEBUG, ["train.eval_every=2", "monitor.probe.label=direction", "monitor.probe.clips=8",
                              f"monitor.probe.paths=[{tmp_path}]"])
    clips_BTHWC, labels_B = probe_set(cfg.data, cfg.monitor.probe, seed=0)
    assert clips_BTHWC.shape[0] == 8 and len(labels_B) == 8  # 10 videos, one corrupt, 8 asked for


def test_shard_without_the_label_fails_naming_the_file_and_key(tmp_path):
    _labelled_shard(tmp_path / "probe-00000.tar", 3, meta_key="motion")
    cfg = load_config(DEBUG, ["train.eval_every=2", "monitor.probe.label=direction", f"monitor.probe.paths=[{tmp_path}]"])
    with pytest.raises(DataSourceError, match=r"probe-00000.tar.*no 'direction' in its metadata.*motion"):
        probe_set(cfg.data, cfg.monitor.probe, seed=0)


def test_probe_config_errors_say_how_to_fix():
    with pytest.raises(ConfigError, match="train.eval_every is not"):
        load_config(DEBUG, ["monitor.probe.label=direction"])
    with pytest.raises(ConfigError, match=r"label 'colour'.*monitor.probe.paths"):
        load_config(DEBUG, ["train.eval_every=2", "monitor.probe.label=colour"])
