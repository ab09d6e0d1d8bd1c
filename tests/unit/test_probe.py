"""Probes on frozen features: the readouts, their intervals, clip-level labels, the labelled sets and the
probe configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import REPO
from vwm.config import AttentiveProbeConfig, ConfigError, ProbeEvalConfig, SyntheticConfig
from vwm.configfile import load_config
from vwm.data.decode import encode_mp4
from vwm.data.shards import DataSourceError, Sample, write_shard
from vwm.data.synthetic import clip_labels, render, render_video, video_spec
from vwm.eval.labelled import LabelError, Target, csv_rows, make_targets
from vwm.eval.probe import (AttentiveProbe, attend, attentive_predict, encoder_tokens, logistic_predict,
                            pixel_tokens, pooled, probe_scores, probe_set, ridge_predict)
from vwm.eval.stats import bootstrap_r2, r2_score

DEBUG = REPO / "configs" / "pretrain" / "debug_cpu.yaml"


def _tokens_with_label_in_one_token(n: int, classes: int, seed: int):
    """Noise tokens; one token per clip, at a random place, carries the class (a marker + a centroid)."""
    g = torch.Generator().manual_seed(seed)
    labels_B = torch.arange(n) % classes
    tokens_BND = torch.randn(n, 16, 24, generator=g)
    centres_KD = torch.randn(classes, 24, generator=g) * 3
    where_B = torch.randint(0, 16, (n,), generator=g)
    tokens_BND[torch.arange(n), where_B] = centres_KD[labels_B]
    tokens_BND[torch.arange(n), where_B, 0] = 8.0  # the marker attention can find
    return tokens_BND, labels_B


def test_attentive_probe_reads_a_label_one_token_carries_and_not_shuffled_labels():
    tokens_BND, labels_B = _tokens_with_label_in_one_token(400, 4, seed=0)
    cfg = AttentiveProbeConfig(steps=150, batch_size=64, lr=3e-3)
    real = Target("c", "class", labels_B, list("abcd"))
    shuffled = Target("c", "class", labels_B[torch.randperm(400, generator=torch.Generator().manual_seed(1))],
                      list("abcd"))
    pred_real, pred_shuffled = attentive_predict(tokens_BND, [real, shuffled], 300, cfg, seed=0)
    assert (pred_real == labels_B[300:]).double().mean() >= 0.95
    assert (pred_shuffled == shuffled.values[300:]).double().mean() < 0.45  # chance is 0.25
    again, _ = attentive_predict(tokens_BND, [real, shuffled], 300, cfg, seed=0)
    assert torch.equal(again, pred_real)  # deterministic for a seed


def test_attentive_probe_is_exactly_multi_head_cross_attention():
    torch.manual_seed(0)
    probes = [AttentiveProbe(24, 3, heads=4), AttentiveProbe(24, 2, heads=4)]
    x_BND = torch.nn.functional.layer_norm(torch.randn(5, 10, 24), (24,))
    for p, out in zip(probes, attend(probes, x_BND)):
        mha = torch.nn.MultiheadAttention(24, 4, batch_first=True)
        with torch.no_grad():
            mha.in_proj_weight.copy_(torch.cat([p.q.weight, p.k.weight, p.v.weight]))
            mha.in_proj_bias.copy_(torch.cat([p.q.bias, p.k.bias, p.v.bias]))
            mha.out_proj.weight.copy_(p.o.weight)
            mha.out_proj.bias.copy_(p.o.bias)
        q_B1D = p.query_D.expand(5, 1, 24)
        # our q projects the query itself; MultiheadAttention's too, from the same raw query
        x_BD = p.query_D + mha(q_B1D, x_BND, x_BND, need_weights=False)[0][:, 0]
        x_BD = x_BD + p.mlp(p.norm_mlp(x_BD))
        torch.testing.assert_close(out, p.head(p.norm_out(x_BD)), atol=1e-5, rtol=1e-5)


def test_linear_probes_fit_linear_targets_and_not_noise():
    g = torch.Generator().manual_seed(0)
    feats_BF = torch.randn(300, 12, generator=g)
    y_BK = feats_BF[:, :2] @ torch.tensor([[1.0, -2.0], [0.5, 1.0]]) + 0.05 * torch.randn(300, 2, generator=g)
    assert float(r2_score(ridge_predict(feats_BF, y_BK, 200), y_BK[200:].double())) > 0.98
    noise_BK = torch.randn(300, 2, generator=g)
    assert float(r2_score(ridge_predict(feats_BF, noise_BK, 200), noise_BK[200:].double())) < 0.1
    labels_B = (feats_BF[:, 0] > 0).long() + 2 * (feats_BF[:, 1] > 0).long()
    assert (logistic_predict(feats_BF, labels_B, 200) == labels_B[200:]).double().mean() > 0.9


def test_scores_carry_intervals_around_the_value():
    tokens_BND, labels_B = _tokens_with_label_in_one_token(200, 4, seed=3)
    targets = {"c": Target("c", "class", labels_B, list("abcd")),
               "r": Target("r", "regression", labels_B[:, None].double() + 0.1 * torch.randn(200, 1).double(), [])}
    rows = probe_scores(tokens_BND, 1, targets, "linear", 150, AttentiveProbeConfig(), seed=0, resamples=200)
    assert [(r["target"], r["metric"]) for r in rows] == [("c", "acc"), ("r", "r2")]
    for r in rows:
        assert r["ci_low"] <= r["value"] <= r["ci_high"] and r["n_test"] == 50
    lo, hi = bootstrap_r2(torch.zeros(50, 1), torch.randn(50, 1), resamples=200, seed=0)
    assert hi < 0.05  # predicting a constant explains nothing, and the interval says so


def test_clip_labels_follow_the_object_through_bounces():
    cfg = SyntheticConfig(min_objects=1, max_objects=1, min_speed=3.0, max_speed=3.0, height=32, width=32)
    spec = video_spec(cfg, seed=0, index=0)
    signs = set()
    for start in range(0, 60, 3):
        idx = start + np.arange(4) * 2
        labels = clip_labels(spec, idx, 32, 32)
        frames = render(spec, idx, 32, 32)
        ys, xs = np.nonzero((frames[1:3] != np.array(spec.background, np.uint8)).any(-1).any(0))
        # the painted object's centre over the clip's middle frames is where the label puts it
        assert abs(xs.mean() + 0.5 - labels["position"][0] * 32) < 3.0
        assert abs(ys.mean() + 0.5 - labels["position"][1] * 32) < 3.0
        assert labels["speed"] == pytest.approx(3.0)
        signs.add(tuple(np.sign(labels["velocity"])))
    assert len(signs) > 1  # the object bounced, and the labels turned with it


def test_main_object_is_the_largest():
    cfg = SyntheticConfig(min_objects=3, max_objects=4)
    for i in range(10):
        spec = video_spec(cfg, seed=0, index=i)
        assert spec.radii[0] == spec.radii.max()


def test_trainer_probe_set_labels_synthetic_clips_and_is_reproducible():
    cfg = load_config(DEBUG, ["train.eval_every=2", "monitor.probe.label=velocity", "monitor.probe.clips=12"])
    clips_BTHWC, target = probe_set(cfg.data, cfg.monitor.probe, seed=0)
    assert clips_BTHWC.shape == (12, cfg.data.frames, cfg.data.crop, cfg.data.crop, 3)
    assert target.kind == "regression" and target.values.shape == (12, 2)
    again_BTHWC, again = probe_set(cfg.data, cfg.monitor.probe, seed=0)
    assert torch.equal(clips_BTHWC, again_BTHWC) and torch.equal(target.values, again.values)

    from vwm.eval.probe import heldout_probe
    from vwm.models.jepa import build_models
    from vwm.models.vit import token_grid

    _, encoder = build_models(cfg.model, cfg.data.frames, cfg.data.crop, len(cfg.mask.sets))
    grid = token_grid(cfg.model, cfg.data.frames, cfg.data.crop)
    tokens_BND = encoder_tokens(encoder, clips_BTHWC, torch.device("cpu"), batch_size=5)
    assert tokens_BND.shape == (12, grid[0] * grid[1] * grid[2], cfg.model.dim)
    assert pooled(tokens_BND, grid[0]).shape == (12, grid[0] * cfg.model.dim)  # one vector per time slot
    assert pixel_tokens(clips_BTHWC, 8, 2).shape[:2] == tokens_BND.shape[:2]
    assert set(heldout_probe(encoder, clips_BTHWC, target, cfg.monitor.probe, grid, torch.device("cpu"))) == \
        {"eval/probe_r2"}


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
    clips_BTHWC, target = probe_set(cfg.data, cfg.monitor.probe, seed=0)
    assert clips_BTHWC.shape[0] == 8 and len(target.values) == 8 and target.kind == "class"


def test_shard_without_the_label_fails_naming_the_file_and_key(tmp_path):
    _labelled_shard(tmp_path / "probe-00000.tar", 3, meta_key="motion")
    cfg = load_config(DEBUG, ["train.eval_every=2", "monitor.probe.label=direction",
                              f"monitor.probe.paths=[{tmp_path}]"])
    with pytest.raises(DataSourceError, match=r"probe-00000.tar.*no 'direction' in its metadata.*motion"):
        probe_set(cfg.data, cfg.monitor.probe, seed=0)


def test_csv_folder_labels_and_its_errors(tmp_path):
    cfg = SyntheticConfig(num_videos=4, video_frames=24, height=32, width=32)
    lines = ["path,direction,speed"]
    for i in range(4):
        frames, meta = render_video(cfg, 5, i)
        (tmp_path / f"v{i}.mp4").write_bytes(encode_mp4(frames, cfg.fps))
        lines.append(f"v{i}.mp4,{meta['direction']},{meta['speed']}")
    lines.append("missing.mp4,left,1.5")
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    clips, rows, sources = csv_rows(str(tmp_path), ["direction", "speed"], frames=4, frame_step=2, crop=32,
                                    count=10, seed=0)
    assert clips.shape == (4, 4, 32, 32, 3) and len(sources) == 4  # the missing video is skipped
    targets = make_targets(rows, ["direction", "speed"], "labels.csv")
    assert targets["speed"].kind == "regression" and targets["direction"].kind == "class"
    with pytest.raises(LabelError, match=r"labels.csv: no column 'colour'.*columns"):
        csv_rows(str(tmp_path), ["colour"], frames=4, frame_step=2, crop=32, count=4, seed=0)
    with pytest.raises(LabelError, match="1 distinct 'x' value"):
        make_targets([{"x": "a"}, {"x": "a"}], ["x"], "somewhere")


def test_probe_config_errors_say_how_to_fix():
    with pytest.raises(ConfigError, match="train.eval_every is not"):
        load_config(DEBUG, ["monitor.probe.label=direction"])
    with pytest.raises(ConfigError, match=r"label 'colour'.*monitor.probe.paths"):
        load_config(DEBUG, ["train.eval_every=2", "monitor.probe.label=colour"])
    probe_debug = REPO / "configs" / "eval" / "probe_debug.yaml"
    cfg = load_config(probe_debug, model=ProbeEvalConfig)
    assert cfg.encoders[0].uri == "models:/vwm-jepa@candidate" and cfg.controls == ["random", "pixels"]
    with pytest.raises(ConfigError, match=r"targets \['colour'\]: synthetic clips carry"):
        load_config(probe_debug, ["targets=[colour]"], ProbeEvalConfig)
    with pytest.raises(ConfigError, match="distinct names"):
        load_config(probe_debug, ["encoders=[random]"], ProbeEvalConfig)
    plain = ProbeEvalConfig.model_validate({"encoders": ["outputs/some/world_model"]})
    assert plain.encoders[0].name == "outputs/some/world_model"


def test_learning_bench_verdicts_and_config():
    from vwm.config import BenchLearningConfig
    from vwm.eval.learning_bench import bar_verdicts, rankme_verdict

    bench = load_config(REPO / "configs" / "bench" / "learning.yaml", model=BenchLearningConfig)
    assert bench.probe.config == "configs/eval/probe_debug.yaml" and bench.budget_minutes == 30

    def row(target, encoder, value, lo, hi, control):
        return {"target": target, "encoder": encoder, "probe": "attentive", "metric": "acc", "value": value,
                "ci_low": lo, "ci_high": hi, "control": control}

    rows = [row("direction", "pretrained", 0.85, 0.81, 0.89, False), row("direction", "random", 0.5, 0.45, 0.55, True),
            row("velocity", "pretrained", 0.75, 0.6, 0.8, False), row("velocity", "pixels", 0.5, 0.4, 0.65, True)]
    (_, direction_ok), (_, velocity_ok) = bar_verdicts(rows, bench, "pretrained")
    assert direction_ok and not velocity_ok  # 0.75 >= 0.70, but its interval overlaps the pixels'
    ok, text = rankme_verdict([(0, 37.0), (10, 30.0), (50, 24.0), (90, 25.0)], warmup=10, keep=0.9)
    assert not ok and "30.0 at step 10" in text and "lowest 24.0" in text
    assert rankme_verdict([(10, 30.0), (50, 29.0)], warmup=10, keep=0.9)[0]
    assert rankme_verdict([(50, 29.0)], warmup=10, keep=0.9)[0] is None
