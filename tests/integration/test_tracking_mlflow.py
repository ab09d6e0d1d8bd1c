"""MLflow against a real ``mlflow server``: a tracked distributed run on shards with a registered model (also
the uninterrupted reference for a run stopped and resumed on the same shards), and a tracker that keeps
training unblocked while the server is down and delivers the metrics afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


def _shards_cfg(shards, out, *extra):
    return load_config(REPO / "configs" / "pretrain" / "debug_shards.yaml", [
        f"data.paths=[{shards}]", "data.batch_size=4", "data.shuffle_buffer=0", "train.steps=8",
        "train.checkpoint_every=4", "train.log_every=1", "dist.checksum_every=1", f"train.output_dir={out}",
        f"dist.storage_path={out}/ray", "train.device=cpu", *extra])


@pytest.fixture(scope="module")
def tracked_shards_run(tmp_path_factory, ray_cluster, mlflow_server):
    """One 2-worker run on shards tracked to the MLflow server: the tracking test checks what it logged and
    registered, the resume test compares its data positions with a stopped and resumed run's."""
    from vwm.data.tools import run_synth
    from vwm.tasks.jepa import run_pretrain

    root = tmp_path_factory.mktemp("tracked")
    run_synth(str(root / "shards"), num_videos=12, shards=3, seed=0,
              cfg=SyntheticConfig(video_frames=24, height=64, width=64))
    cfg = _shards_cfg(root / "shards", root / "out", "tracking.backend=mlflow",
                      f"tracking.tracking_uri={mlflow_server}", "tracking.experiment=vwm-test",
                      "tracking.register_as=vwm-test-jepa")
    # the Ray Data iterator's prefetch thread runs beside training here: the EMA targets must stay
    # bit-identical anyway (compared after every step; a mismatch stops the run)
    return root, run_pretrain(cfg)


def test_distributed_run_on_shards_tracks_to_mlflow_and_registers_the_model(tracked_shards_run, mlflow_server):
    import vwm

    root, result = tracked_shards_run
    assert result.model_uri == "models:/vwm-test-jepa/1"

    client = MlflowClient(mlflow_server)
    run = client.get_run(result.tracker["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["model.dim"] == "96" and run.data.params["dist.zero_stage"] == "1"
    assert run.data.params["checkpoint.final"].endswith(result.checkpoint_path)
    assert not any(k.startswith("data.synthetic.") for k in run.data.params)  # a shards run: only what applies
    assert {"ray_address", "workers", "zero_stage", "mlflow.source.git.commit", "mlflow.source.name",
            "mlflow.user"} <= set(run.data.tags)
    assert run.data.tags["workers"] == "2"
    assert client.get_experiment(run.info.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    (data,) = run.inputs.dataset_inputs
    assert data.dataset.name == "videos" and json.loads(data.dataset.profile)["files"] == 3
    assert json.loads(data.dataset.source) == [str(root / "shards")] and len(data.dataset.digest) == 16
    assert {t.key: t.value for t in data.tags}["mlflow.data.context"] == "training"
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert [m.step for m in losses] == list(range(8))
    for name in ("train/lr", "train/wd", "train/ema_momentum", "perf/samples_per_s", "perf/step_s",
                 "perf/data_wait_s", "repr/std", "repr/rankme", "data/skipped_videos"):
        assert client.get_metric_history(run.info.run_id, name), name
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    # the model and pictures, not the optimizer state (the checkpoint's URI is a param)
    assert artifacts == {"config.yaml", "world_model", "pictures"}
    pictures = {a.path for a in client.list_artifacts(run.info.run_id, "pictures")}
    assert pictures == {"pictures/masks.mp4", "pictures/pca_step_0000001.mp4", "pictures/pca_step_0000008.mp4"}

    version = client.get_model_version_by_alias("vwm-test-jepa", "candidate")  # tracking.alias's default
    assert version.version == "1" and version.run_id == run.info.run_id
    assert "ViT encoder dim 96" in version.description and "commit: " in version.description
    assert str(root / "shards") in version.description  # the model card names its data
    # an MLflow model: MLflow's own loader, in a fresh process, frames in and features out
    code = ("import mlflow, numpy as np; m = mlflow.pyfunc.load_model('models:/vwm-test-jepa@candidate'); "
            "print(m.predict(np.zeros((2, 8, 64, 64, 3), np.uint8)).shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_server})
    assert out.returncode == 0 and out.stdout.strip().endswith("(2, 256, 96)"), out.stderr[-2000:]
    for uri in ("models:/vwm-test-jepa@latest", "models:/vwm-test-jepa@candidate", result.model_uri):
        wm = vwm.load_world_model(uri, tracking_uri=mlflow_server)
        feats = wm.encode(torch.zeros(2, 8, 64, 64, 3, dtype=torch.uint8))
        assert feats.shape == (2, 4 * 8 * 8, 96) and torch.isfinite(feats).all()
    mlflow.set_tracking_uri(None)


def _positions(client, run_id) -> dict[int, tuple[int, int]]:
    epochs, files = ({m.step: int(m.value) for m in client.get_metric_history(run_id, k)}
                     for k in ("data/epoch", "data/file"))
    return {step: (epochs[step], files[step]) for step in epochs}


def test_resumed_run_on_shards_continues_at_its_data_position(tracked_shards_run, mlflow_server):
    """A distributed --resume on shards starts the data where the checkpoint stopped, as an uninterrupted
    run reads it, not at epoch 0, file 0."""
    import json

    from vwm.tasks.jepa import run_pretrain
    from vwm.train import checkpoint as ckpt

    root, full = tracked_shards_run
    cfg = _shards_cfg(root / "shards", root / "split", "tracking.backend=jsonl")
    first = run_pretrain(cfg, stop_at=4)
    saved = tuple(ckpt.latest_meta(str(root / "split" / "ray" / first.name))["data_position"]["position"])
    assert saved > (0, 0), saved  # 4 steps of 2 workers x 4 clips read past the first shard
    rest = run_pretrain(cfg, resume=True)
    assert rest.name == first.name and rest.metrics["step"] == 8
    rows = [json.loads(line) for line in (rest.run_dir / "metrics.jsonl").read_text().splitlines()]
    resumed = {r["step"]: (r["data/epoch"], r["data/file"]) for r in rows if "data/epoch" in r}
    uninterrupted = _positions(MlflowClient(mlflow_server), full.tracker["run_id"])
    assert resumed[4] >= saved, (resumed, saved)  # before the fix: epoch 0, file 0 again
    assert abs(resumed[7][0] - uninterrupted[7][0]) <= 1, (resumed, uninterrupted)


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
        # read back from the restarted server (a new process on the same store): steps 0-4 went to the first
        history = MlflowClient(uri).get_metric_history(tracker.run_id, "train/loss")
        assert sorted(m.step for m in history) == list(range(10))
    finally:
        stop_pid(server)


def test_an_outage_that_outlasts_the_run_loses_nothing_and_vwm_publish_finishes_it(tmp_path):
    """The server is stopped (by pid) after the first checkpoint and stays down past the end: the run still
    exits 0 within its publishing budget, keeps every unsent value and what is left to do in its folder, and
    ``vwm publish`` completes the run once the server is back: every step's loss, the model registered once."""
    import subprocess
    import sys

    port = free_port()
    server = start_mlflow(tmp_path / "srv", port)
    uri = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "vwm.cli", "pretrain", "--local", "-c", str(REPO / "configs" / "pretrain" /
           "debug_cpu.yaml"), "--set", "train.steps=60", "--set", "train.checkpoint_every=2", "--set",
           "train.keep_checkpoints=1", "--set", "train.log_every=1", "--set", "tracking.backend=mlflow", "--set",
           f"tracking.tracking_uri={uri}", "--set", "tracking.experiment=outlast", "--set",
           "tracking.register_as=vwm-outlast", "--set", "tracking.publish_timeout_s=3", "--set",
           f"train.output_dir={tmp_path}/out"]
    publish = [sys.executable, "-m", "vwm.cli", "publish"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("out/*/checkpoints/step_*/meta.json")) and time.monotonic() < deadline:
            time.sleep(0.2)
        stop_pid(server)
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-3000:]
        assert "training is done and nothing is lost" in out and "vwm publish" in out and "Traceback" not in out
        run_dir = next((tmp_path / "out").glob("debug_cpu-*"))
        todo = json.loads((run_dir / "unpublished.json").read_text())
        assert todo["status"] == "FINISHED" and todo["checkpoint"]["folder"] == "step_00000060"
        assert (run_dir / "unsent_metrics.jsonl").read_text().count("train/loss") > 0
        down = subprocess.run([*publish, str(run_dir)], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert down.returncode == 1 and "still unreachable" in down.stderr and "Traceback" not in down.stderr
        assert (run_dir / "unpublished.json").is_file() and (run_dir / "unsent_metrics.jsonl").is_file()

        server = start_mlflow(tmp_path / "srv", port)
        up = subprocess.run([*publish, str(run_dir)], cwd=REPO, capture_output=True, text=True, timeout=300)
        assert up.returncode == 0 and "model: models:/vwm-outlast/1" in up.stdout, up.stdout + up.stderr[-3000:]
        assert not (run_dir / "unpublished.json").exists() and not (run_dir / "unsent_metrics.jsonl").exists()
        client = MlflowClient(uri)
        run = client.get_run(json.loads((run_dir / "tracker.json").read_text())["run_id"])
        assert run.info.status == "FINISHED" and run.data.params["checkpoint.final"].endswith("step_00000060")
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss")) == list(range(60))
        again = subprocess.run([*publish, str(run_dir)], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0 and "nothing left to publish" in again.stdout
        assert len(client.search_model_versions("name = 'vwm-outlast'")) == 1
    finally:
        proc.kill()
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


class _AuthProxy:
    """Basic auth in front of a real ``mlflow server`` (which has none): 401 without the right credentials,
    otherwise the request is forwarded as it came."""

    def __init__(self, upstream: str, user: str, password: str):
        import base64
        import http.server
        import threading
        import urllib.error
        import urllib.request

        expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.denied = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _forward(self):
                if self.headers.get("Authorization") != expected:
                    proxy.denied += 1
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "authorization")}
                req = urllib.request.Request(upstream + self.path, data=body or None, headers=headers,
                                             method=self.command)
                try:
                    with urllib.request.urlopen(req, timeout=60) as r:
                        status, data, rh = r.status, r.read(), r.headers
                except urllib.error.HTTPError as e:
                    status, data, rh = e.code, e.read(), e.headers
                self.send_response(status)
                for k, v in rh.items():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def test_credentials_in_the_tracking_uri_reach_the_server_and_nothing_else(tmp_path, mlflow_server):
    """A password in MLFLOW_TRACKING_URI authenticates every request (through MLflow's own variables) and
    appears in no printed line, run file, param, tag or logged config."""
    import os
    import subprocess
    import sys

    secret = "s3cr3t-Pw"
    proxy = _AuthProxy(mlflow_server, "alice", secret)
    try:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://alice:{secret}@127.0.0.1:{proxy.port}"}
        train = subprocess.run([sys.executable, "-m", "vwm.cli", "pretrain", "--local", "-c",
                                str(REPO / "configs" / "pretrain" / "debug_cpu.yaml"), "--set", "train.steps=2",
                                "--set", "tracking.backend=mlflow", "--set", "tracking.experiment=vwm-secrets",
                                "--set", "tracking.register_as=vwm-secrets", "--set", f"train.output_dir={tmp_path}"],
                               cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert train.returncode == 0, train.stderr[-3000:]
        assert "model: models:/vwm-secrets/" in train.stdout and proxy.denied == 0
    finally:
        proxy.close()
    assert secret not in train.stdout + train.stderr
    assert "***@" not in train.stdout  # the URI printed is the plain one, its credentials moved out of it
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    client = MlflowClient(mlflow_server)
    run = client.search_runs([client.get_experiment_by_name("vwm-secrets").experiment_id])[0]
    assert not [k for k, v in {**run.data.params, **run.data.tags}.items() if secret in v]
    logged = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="config.yaml",
                                                 tracking_uri=mlflow_server, dst_path=str(tmp_path / "dl"))
    assert secret not in open(logged).read()
