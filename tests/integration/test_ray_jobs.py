"""`ray job submit` of the pretraining job against a token-authenticated Ray head started by
cluster/local/start.sh, tracking to the MLflow server it started; stopped by pid with stop.sh."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO
from tests.integration.conftest import MLFLOW_NO_JOBS, free_port

pytestmark = pytest.mark.slow


def test_ray_job_submit_runs_pretraining_on_a_token_authenticated_head(tmp_path, ray_cluster):
    # ray_cluster: the suite's embedded Ray runs beside the head, as it does in CI
    bin_dir = str(Path(sys.executable).parent)
    ports = {"RAY_PORT": free_port(), "DASHBOARD_PORT": free_port(), "MLFLOW_PORT": free_port(),
             "AGENT_PORT": free_port()}  # the suite's own Ray may hold the default agent port
    env = {**os.environ, "VWM_CLUSTER_DIR": str(tmp_path / "cluster"), "PYTHON": sys.executable, "NUM_CPUS": "2",
           "PATH": bin_dir + os.pathsep + os.environ["PATH"], **{k: str(v) for k, v in ports.items()},
           **MLFLOW_NO_JOBS}
    env.pop("RAY_ADDRESS", None)
    address = f"http://127.0.0.1:{ports['DASHBOARD_PORT']}"
    mlflow_uri = f"http://127.0.0.1:{ports['MLFLOW_PORT']}"
    try:
        subprocess.run(["bash", "cluster/local/start.sh"], cwd=REPO, env=env, check=True, timeout=240)
        # without the token the job server refuses
        no_token = {**env, "HOME": str(tmp_path / "nohome"), "RAY_AUTH_MODE": "token"}
        refused = subprocess.run([f"{bin_dir}/ray", "job", "list", "--address", address], env=no_token,
                                 capture_output=True, text=True, timeout=120)
        assert refused.returncode != 0
        job = subprocess.run(
            [f"{bin_dir}/ray", "job", "submit", "--address", address, "--working-dir", ".",
             "--runtime-env", "cluster/runtime_env.yaml", "--",
             "python", "jobs/pretrain.py", "--config", "configs/pretrain/debug_cpu.yaml",
             # one worker: submission, auth and tracking are under test here; 2-rank training is elsewhere
             "--set", "train.steps=2", "--set", "train.checkpoint_every=2", "--set", "data.batch_size=4",
             "--set", "dist.num_workers=1",
             "--set", f"train.output_dir={tmp_path}/out", "--set", f"dist.storage_path={tmp_path}/ray",
             "--set", "tracking.backend=mlflow", "--set", f"tracking.tracking_uri={mlflow_uri}",
             "--set", "tracking.experiment=ray-jobs"],
            cwd=REPO, env={**env, "RAY_AUTH_MODE": "token"}, capture_output=True, text=True, timeout=600)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "succeeded" in (job.stdout + job.stderr).lower()
        assert "registered models:/vwm-jepa/1 (alias candidate)" in job.stdout
        client = MlflowClient(mlflow_uri)
        runs = client.search_runs([client.get_experiment_by_name("ray-jobs").experiment_id])
        assert len(runs) == 1 and runs[0].info.status == "FINISHED"
        # the job's driver attached to the head (RAY_ADDRESS), it did not start an embedded cluster
        assert runs[0].data.tags["ray_address"] and not runs[0].data.tags["ray_address"].startswith("local:")
        assert client.get_metric_history(runs[0].info.run_id, "train/loss")
    finally:
        subprocess.run(["bash", "cluster/local/stop.sh"], cwd=REPO, env=env, timeout=120)
    assert not (tmp_path / "cluster" / "ray.pid").exists()
