"""Ray Train + DeepSpeed on 2 CPU workers: ZeRO parity, identical EMA targets, resume (from S3), worker faults.
Resume on shards runs in test_tracking_mlflow.py, against its tracked run on the same shards."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from vwm.config import with_overrides
from vwm.configfile import load_config
from tests.conftest import DEBUG_CONFIG

pytestmark = pytest.mark.slow


def _cfg(tmp_path, *extra):
    return load_config(DEBUG_CONFIG, [f"train.output_dir={tmp_path}/out", f"dist.storage_path={tmp_path}/ray",
                                      "train.device=cpu", "tracking.backend=jsonl", "dist.checksum_every=1",
                                      "train.log_every=1", "data.batch_size=4", *extra])


def _loss(result) -> float:
    return float(result.metrics["train/loss"])


@pytest.fixture(scope="module")
def zero_runs(tmp_path_factory, ray_cluster):
    """8 steps on ZeRO stages 0, 1 and 2; stage 1 (the default) is also the uninterrupted run the resume test
    compares against."""
    from vwm.tasks.jepa import run_pretrain

    root = tmp_path_factory.mktemp("zero")
    return {stage: run_pretrain(_cfg(root / f"z{stage}", f"dist.zero_stage={stage}", "train.steps=8",
                                     "train.checkpoint_every=4")) for stage in (0, 1, 2)}


def test_zero_stages_0_1_2_agree_and_ema_targets_stay_identical(zero_runs):
    losses = {}
    for stage, result in zero_runs.items():
        losses[stage] = _loss(result)
        # the EMA checksum was compared across ranks after every step (dist.checksum_every=1); a
        # mismatch would have stopped the run with ReplicaMismatch
        assert result.metrics["step"] == 8
    assert losses[1] == pytest.approx(losses[0], abs=1e-5) and losses[2] == pytest.approx(losses[0], abs=1e-5)


def test_zero3_trains_gathers_ema_and_exports_the_model(tmp_path, ray_cluster):
    from vwm import load_world_model
    from vwm.tasks.jepa import run_pretrain

    result = run_pretrain(_cfg(tmp_path, "dist.zero_stage=3", "train.steps=3", "train.checkpoint_every=3"))
    assert result.metrics["step"] == 3 and torch.isfinite(torch.tensor(_loss(result)))
    wm = load_world_model(Path(result.checkpoint_path) / "world_model")
    feats = wm.encoder(torch.zeros(1, 3, 8, 64, 64))
    assert feats.shape == (1, 4 * 8 * 8, 96)


def test_run_stopped_with_checkpoints_on_s3_resumes_from_there_and_matches_an_uninterrupted_one(
        tmp_path, s3_bucket, zero_runs, mlflow_server):
    import s3fs
    from mlflow.tracking import MlflowClient

    from vwm.tasks.jepa import run_pretrain

    endpoint, bucket = s3_bucket
    host = endpoint.removeprefix("http://")
    storage = f"s3://{bucket}/runs?endpoint_override={host}&scheme=http"
    cfg = _cfg(tmp_path, "train.steps=8", "train.checkpoint_every=4", f"dist.storage_path={storage}",
               "train.run_name=s3run", "tracking.backend=mlflow", f"tracking.tracking_uri={mlflow_server}",
               "tracking.experiment=vwm-s3", "tracking.register_as=vwm-test-s3")
    first = run_pretrain(cfg, stop_at=4)
    assert first.metrics["step"] == 4
    fs = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=endpoint)
    ckpt_dir = first.checkpoint_path
    assert ckpt_dir.startswith(f"{bucket}/runs/{first.name}/checkpoint_")
    assert {"meta.json", "task.pt", "rng_rank0.pt", "rng_rank1.pt"} <= {p.rsplit("/", 1)[-1]
                                                                         for p in fs.ls(ckpt_dir)}
    rest = run_pretrain(with_overrides(cfg, {"train.run_name": first.name}), resume=True)
    assert rest.name == first.name and rest.metrics["step"] == 8
    # the model registered from the final checkpoint on S3; one point per step; the restart counted
    assert first.model_uri is None and rest.model_uri == "models:/vwm-test-s3/1"
    client = MlflowClient(mlflow_server)
    run_id = rest.tracker["run_id"]
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == list(range(8))
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "train/restarts")] == [(4, 1)]
    # the uninterrupted run: same config, stage 1, local checkpoints
    assert _loss(rest) == pytest.approx(_loss(zero_runs[1]), abs=1e-5)


def _registered(snapshot: Path) -> bool:
    try:
        return bool(json.loads(snapshot.read_text())["checkpoint_results"])
    except (OSError, ValueError, KeyError):
        return False


def test_bench_train_job_reports_ratios_with_intervals(tmp_path, ray_cluster):
    from vwm.config import BenchTrainConfig
    from vwm.tasks.jepa_bench import run_bench_train

    report = tmp_path / "perf.md"
    result = run_bench_train(BenchTrainConfig(
        rounds=2, steps=2, warmup=1, arms={"eager": ["optim.fused=false"], "fused": []}, zero_stages=[1],
        platform_steps=4, platform_warmup=1, cpus_per_worker=0.5, report=str(report),
        overrides=["train.device=cpu", "data.batch_size=4"]), out=tmp_path / "bench")
    steps = result["steps"]
    assert [(r["model"], r["arm"]) for r in steps] == [("debug", "eager"), ("debug", "fused")]
    assert steps[0]["speedup"] == (1.0, 1.0, 1.0) and steps[0]["loss_diff"] == 0.0
    mid, lo, hi = steps[1]["speedup"]
    assert 0 < lo <= mid <= hi and steps[1]["loss_diff"] < 1e-5  # the fused optimizer computes the same update
    platform = result["platform"]
    assert [r["what"] for r in platform] == ["bare PyTorch loop (1 process)", "Ray Train + DeepSpeed ZeRO-1, 1 worker"]
    assert platform[0]["ratio"] == (1.0, 1.0, 1.0) and platform[1]["ratio"][0] > 0 and platform[1]["clips_per_s"] > 0
    text = report.read_text()
    assert "<!-- bench_train:start -->" in text and "<!-- bench_train_step:start -->" in text


def test_workers_the_cluster_cannot_place_fail_at_once_before_the_run_opens(tmp_path, ray_cluster):
    """8 x 0.5 CPU on the session's 2-CPU cluster: before the check Ray waited for the CPUs forever."""
    from vwm.config import ConfigError
    from vwm.tasks.jepa import run_pretrain

    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=r"8 workers x 0.5 CPU do not fit .*room for 4.*dist.num_workers<=4"):
        run_pretrain(_cfg(tmp_path, "dist.num_workers=8", "train.steps=2"))
    assert time.monotonic() - t0 < 10
    assert not (tmp_path / "out").exists()  # no run folder, no tracked run
    with pytest.raises(ConfigError, match="room for 0"):
        run_pretrain(_cfg(tmp_path, "dist.num_workers=1", "dist.cpus_per_worker=3", "train.steps=2"))
