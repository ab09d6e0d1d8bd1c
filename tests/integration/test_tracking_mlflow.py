"""MLflow against a real ``mlflow server``: a tracked distributed run with a registered model, and a
tracker that keeps training unblocked while the server is down and delivers the metrics afterwards."""

from __future__ import annotations

import time

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from vwm.config import SyntheticConfig, TrackingConfig
from vwm.configfile import load_config
from tests.conftest import REPO
from tests.integration.conftest import free_port, start_mlflow, stop_pid

pytestmark = pytest.mark.slow


def test_distributed_run_on_shards_tracks_to_mlflow_and_registers_the_model(tmp_path, ray_cluster, mlflow_server):
    import vwm
    from vwm.data.tools import run_synth
    from vwm.tasks.jepa import run_pretrain

    run_synth(str(tmp_path / "shards"), num_videos=8, shards=2, seed=0,
              cfg=SyntheticConfig(video_frames=24, height=64, width=64))
    cfg = load_config(REPO / "configs" / "pretrain" / "debug_shards.yaml", [
        f"data.paths=[{tmp_path}/shards]", "data.batch_size=4", "train.steps=4", "train.checkpoint_every=2",
        "train.log_every=1", "dist.checksum_every=1", f"train.output_dir={tmp_path}/out", f"dist.storage_path={tmp_path}/ray",
        "tracking.backend=mlflow", f"tracking.tracking_uri={mlflow_server}", "tracking.experiment=vwm-test",
        "tracking.register_as=vwm-test-jepa", "train.device=cpu"])
    # the Ray Data iterator's prefetch thread runs beside training here: the EMA targets must stay
    # bit-identical anyway (compared after every step; a mismatch stops the run)
    result = run_pretrain(cfg)
    assert result.model_uri == "models:/vwm-test-jepa/1"

    client = MlflowClient(mlflow_server)
    run = client.get_run(result.tracker["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["model.dim"] == "96" and run.data.params["dist.zero_stage"] == "1"
    assert run.data.params["checkpoint.final"].endswith(result.checkpoint_path)
    assert {"git_commit", "ray_address", "workers", "zero_stage"} <= set(run.data.tags)
    assert run.data.tags["workers"] == "2"
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in losses] == [0, 1, 2, 3]
    for name in ("train/lr", "train/wd", "train/ema_momentum", "perf/samples_per_s", "perf/step_s",
                 "perf/data_wait_s", "repr/std", "repr/rankme", "data/skipped_videos"):
        assert client.get_metric_history(run.info.run_id, name), name
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "checkpoint", "world_model"} <= artifacts

    version = client.get_model_version_by_alias("vwm-test-jepa", "candidate")  # tracking.alias's default
    assert version.version == "1" and version.run_id == run.info.run_id
    for uri in ("models:/vwm-test-jepa@latest", "models:/vwm-test-jepa@candidate", result.model_uri):
        wm = vwm.load_world_model(uri, tracking_uri=mlflow_server)
        feats = wm.encode(torch.zeros(2, 8, 64, 64, 3, dtype=torch.uint8))
        assert feats.shape == (2, 4 * 8 * 8, 96) and torch.isfinite(feats).all()
    mlflow.set_tracking_uri(None)


def test_tracker_survives_a_server_outage_and_delivers_metrics_afterwards(tmp_path):
    from vwm.tracking.mlflow import MLflowTracker

    port = free_port()
    server = start_mlflow(tmp_path / "srv", port)
    uri = f"http://127.0.0.1:{port}"
    tracker = MLflowTracker(TrackingConfig(backend="mlflow", tracking_uri=uri, experiment="outage"),
                            run_name="outage")
    try:
        for step in range(5):
            tracker.log_metrics({"train/loss": 1.0 / (step + 1)}, step)
        time.sleep(3)  # the flusher sends these while the server is up
        stop_pid(server)
        t0 = time.monotonic()
        for step in range(5, 10):
            tracker.log_metrics({"train/loss": 1.0 / (step + 1)}, step)
        assert time.monotonic() - t0 < 1.0, "logging must not block while the server is down"
        time.sleep(4)  # the flusher fails and keeps the metrics
        assert tracker._pending, "metrics logged during the outage must be kept"
        server = start_mlflow(tmp_path / "srv", port)
        tracker.close(timeout_s=60)
    finally:
        stop_pid(server)
    server = start_mlflow(tmp_path / "srv", port)
    try:
        history = MlflowClient(uri).get_metric_history(tracker.run_id, "train/loss")
        assert sorted(m.step for m in history) == list(range(10))
    finally:
        stop_pid(server)


def test_load_world_model_resolves_the_tracking_uri_as_training_does(tmp_path):
    """An in-process run tracked to the embedded default (sqlite:///mlruns.db in the working folder)
    registers its model; the README's one-liner, run from the same folder, finds it there and leaves no
    stray MLflow store behind."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    train = subprocess.run([sys.executable, "-m", "vwm.cli", "pretrain", "--local", "-c",
                            str(REPO / "configs" / "pretrain" / "debug_cpu.yaml"), "--set", "train.steps=2",
                            "--set", "tracking.backend=mlflow", "--set", "train.output_dir=out"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    assert "model: models:/vwm-jepa/1" in train.stdout
    load = subprocess.run([sys.executable, "-c", "import vwm; wm = vwm.load_world_model('models:/vwm-jepa@candidate');"
                           " print(wm.kind, tuple(wm.encode(__import__('torch').zeros(8, 64, 64, 3, "
                           "dtype=__import__('torch').uint8)).shape))"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert load.returncode == 0, load.stderr[-3000:]
    assert "vjepa (1, 256, 96)" in load.stdout
    assert (tmp_path / "mlruns.db").is_file() and not (tmp_path / "mlflow.db").exists()
