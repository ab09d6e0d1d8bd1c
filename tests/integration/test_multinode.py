"""A run on a distributed engine, not one process pretending: a head and two worker nodes, shards and
checkpoints on the S3 server, MLflow on a real server; a worker node is lost mid-run and another joins."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO
from tests.integration.conftest import free_port
from vwm.config import SyntheticConfig

# 4-5 minutes on 2 cores, which `make test` cannot spare: `make test-cluster` runs it
pytestmark = [pytest.mark.slow, pytest.mark.cluster]
STEPS, EVERY = 12, 4


def test_a_run_across_nodes_resumes_from_its_checkpoint_when_a_node_is_lost(s3_bucket, mlflow_server, ray_cluster,
                                                                           tmp_path):
    from vwm.data.tools import run_synth

    endpoint, bucket = s3_bucket
    run_synth(f"s3://{bucket}/shards", num_videos=8, shards=2, seed=0, endpoint_url=endpoint,
              cfg=SyntheticConfig(video_frames=24, height=64, width=64, fps=15))
    host = endpoint.removeprefix("http://")
    args = {"endpoint": endpoint, "storage_prefix": f"{bucket}/runs", "gcs_port": free_port(),
            "dashboard_port": free_port(), "config": str(REPO / "configs/pretrain/debug_shards.yaml"),
            "overrides": [
                f"data.paths=[s3://{bucket}/shards]", f"data.endpoint_url={endpoint}", "data.batch_size=4",
                "data.shuffle_buffer=8", "data.decode_num_cpus=0.5", f"train.steps={STEPS}",
                f"train.checkpoint_every={EVERY}", "train.log_every=1", f"train.output_dir={tmp_path}/out",
                "train.run_name=multinode", "dist.num_workers=2", "dist.cpus_per_worker=1.5", "dist.max_failures=2",
                f"dist.storage_path=s3://{bucket}/runs?endpoint_override={host}&scheme=http", "monitor.every=100",
                "tracking.backend=mlflow", f"tracking.tracking_uri={mlflow_server}",
                "tracking.experiment=multinode", "tracking.register_as=vwm-multinode"]}
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen([sys.executable, str(REPO / "tests/integration/multinode_driver.py"), json.dumps(args)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=540)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    reports = [line[7:] for line in out.splitlines() if line.startswith("REPORT ")]
    assert proc.returncode == 0 and reports, out[-4000:]
    report = json.loads(reports[-1])

    # before the loss, the two trainers ran on the two worker nodes, not on the head
    assert sorted(report["train_worker_nodes"]) == sorted(report["worker_nodes"])
    assert report["removed"] in report["worker_nodes"] and report["added"] not in report["worker_nodes"]
    assert report["final_step"] == STEPS and report["model_uri"] == "models:/vwm-multinode/1", out[-4000:]

    client = MlflowClient(mlflow_server)
    run = client.search_runs([client.get_experiment_by_name("multinode").experiment_id])[0]
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    # one point per step: the steps the restarted group redid after its checkpoint were not logged twice
    assert sorted(m.step for m in history) == list(range(STEPS))
    # the restart is counted once, at the checkpoint it resumed from: the newest one Ray had registered (the
    # one seen on S3 before the loss; when the loss fell between its upload and its registration, an earlier
    # one, or none: step 0)
    restarts = client.get_metric_history(run.info.run_id, "train/restarts")
    assert [m.value for m in restarts] == [1] and restarts[0].timestamp > report["removed_at_ms"]
    resumed_from = restarts[0].step
    assert resumed_from % EVERY == 0, (restarts, report)
    # ...and nothing was lost: every step before that checkpoint was logged before the loss
    before = {m.step for m in history if m.timestamp <= report["removed_at_ms"]}
    assert set(range(resumed_from)) <= before, (sorted(before), resumed_from)
    version = client.get_model_version("vwm-multinode", "1")
    assert version.run_id == run.info.run_id and run.data.params["checkpoint.final"].startswith("s3://")

    # every checkpoint left on S3 is complete: the engine's shards, each rank's RNG streams, the task state
    import s3fs
    import torch

    fs = s3fs.S3FileSystem(endpoint_url=endpoint)
    folders = sorted(p for p in fs.glob(f"{bucket}/runs/{report['run']}/checkpoint_*") if fs.isdir(p))
    assert 1 <= len(folders) <= 2  # train.keep_checkpoints of debug_shards.yaml
    for folder in folders:
        step = json.loads(fs.cat(f"{folder}/meta.json"))["step"]
        assert step % EVERY == 0 and fs.isdir(f"{folder}/engine") and fs.exists(f"{folder}/rng_rank1.pt")
        with fs.open(f"{folder}/task.pt", "rb") as f:
            assert "target" in torch.load(f, weights_only=True)
