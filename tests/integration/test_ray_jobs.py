"""`vwm submit` of the pretraining job against a token-authenticated Ray head started by
cluster/local/start.sh, tracking to the MLflow server it started; stopped by pid with stop.sh."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import REPO
from tests.integration.conftest import MLFLOW_NO_JOBS, free_port

pytestmark = pytest.mark.slow


def read_env_sh(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        name, _, value = line.removeprefix("export ").partition("=")
        out[name] = value
    return out


def test_vwm_submit_runs_pretraining_on_a_token_authenticated_head(tmp_path, ray_cluster):
    # ray_cluster: the suite's embedded Ray runs beside the head, as it does in CI
    bin_dir = str(Path(sys.executable).parent)
    ports = {"RAY_PORT": free_port(), "DASHBOARD_PORT": free_port(), "MLFLOW_PORT": free_port(),
             "AGENT_PORT": free_port()}  # the suite's own Ray may hold the default agent port
    env = {**os.environ, "VWM_CLUSTER_DIR": str(tmp_path / "cluster"), "PYTHON": sys.executable, "NUM_CPUS": "2",
           "PATH": bin_dir + os.pathsep + os.environ["PATH"], **{k: str(v) for k, v in ports.items()},
           **MLFLOW_NO_JOBS}
    for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    vwm = [f"{bin_dir}/vwm", "submit", "pretrain", "--config", "configs/pretrain/debug_cpu.yaml",
           # one worker: submission, auth and tracking are under test here; 2-rank training is elsewhere
           "--set", "train.steps=2", "--set", "train.checkpoint_every=2", "--set", "data.batch_size=4",
           "--set", "dist.num_workers=1", "--set", f"train.output_dir={tmp_path}/out",
           "--set", f"dist.storage_path={tmp_path}/ray", "--set", "tracking.backend=mlflow",
           "--set", "tracking.experiment=ray-jobs"]
    try:
        subprocess.run(["bash", "cluster/local/start.sh"], cwd=REPO, env=env, check=True, timeout=240)
        token = Path.home() / ".ray" / "auth_token"
        assert token.is_file() and token.stat().st_mode & 0o077 == 0  # the cluster's key: its owner's alone
        cluster_env = {**env, **read_env_sh(tmp_path / "cluster" / "env.sh")}
        address, mlflow_uri = cluster_env["RAY_API_SERVER_ADDRESS"], cluster_env["MLFLOW_TRACKING_URI"]
        assert cluster_env["RAY_ADDRESS"] == f"127.0.0.1:{ports['RAY_PORT']}"  # the GCS address, for drivers

        # a bad key is refused here, before any request (the job list below holds the two jobs sent)
        bad = subprocess.run([*vwm, "--set", "train.stepz=3"], cwd=REPO, env=cluster_env, capture_output=True,
                             text=True, timeout=120)
        assert bad.returncode == 2 and "train.stepz" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
        # a relative output folder would vanish with Ray's temporary working folder: refused
        relative = subprocess.run([*vwm, "--set", "train.output_dir=outputs"], cwd=REPO, env=cluster_env,
                                  capture_output=True, text=True, timeout=120)
        assert relative.returncode == 2 and "train.output_dir=outputs is relative" in relative.stderr
        # without the token the job server refuses, and vwm says what to do
        no_token = {**cluster_env, "HOME": str(tmp_path / "nohome")}
        refused = subprocess.run(vwm, cwd=REPO, env=no_token, capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2 and "token" in refused.stderr, refused.stderr[-2000:]

        # data that exists only where the job runs is checked there: the driver's exit code comes back
        missing = subprocess.run([*vwm, "--set", "data.source=shards", "--set", f"data.paths=[{tmp_path}/none]"],
                                 cwd=REPO, env=cluster_env, capture_output=True, text=True, timeout=300)
        assert missing.returncode == 2 and "FAILED" in missing.stdout, missing.stdout[-2000:]
        assert f"no video files or tar shards match {tmp_path}/none" in missing.stdout + missing.stderr

        # MLFLOW_TRACKING_URI comes from env.sh and reaches the job through its runtime env
        job = subprocess.run([*vwm, "--follow"], cwd=REPO, env=cluster_env, capture_output=True, text=True,
                             timeout=600)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "SUCCEEDED" in job.stdout
        assert "registered models:/vwm-jepa/1 (alias candidate)" in job.stdout  # the driver's log, followed
        lines = [line for line in job.stdout.splitlines() if line.strip()]
        # rank 0's progress, one line per log step (log_every 5 of 2 steps: the first and the last)
        progress = [m.group(1) for line in lines if (m := re.search(r"step (\d+)/2  loss ", line))]
        assert progress == ["1", "2"], job.stdout[-3000:]
        # the run ends with one summary, printed last: no worker line after it, the loss MLflow has
        first = next(i for i, line in enumerate(lines) if re.match(r"run debug_cpu-\S+: step 2, final loss", line))
        summary = lines[first:]
        assert not any(line.startswith("(") for line in summary), summary
        assert summary[-2].startswith("model: models:/vwm-jepa/1") and summary[-1].endswith(": SUCCEEDED")
        assert any(line.startswith(f"MLflow run: {mlflow_uri}/#/experiments/") for line in summary), summary
        assert "Reporting training result" not in job.stdout and "row/s]" not in job.stdout  # Ray's chatter off

        from ray.job_submission import JobSubmissionClient

        os.environ["RAY_AUTH_MODE"] = "token"
        try:
            jobs = [j for j in JobSubmissionClient(address).list_jobs()
                    if (j.submission_id or "").startswith("vwm-pretrain-")]
        finally:
            os.environ.pop("RAY_AUTH_MODE")
        assert sorted(j.status for j in jobs) == ["FAILED", "SUCCEEDED"]  # the refused ones never left here
        ok = next(j for j in jobs if j.status == "SUCCEEDED")
        assert ok.entrypoint.startswith("python -m vwm.cli pretrain --config configs/pretrain/debug_cpu.yaml")
        assert ok.runtime_env["env_vars"]["MLFLOW_TRACKING_URI"] == mlflow_uri
        assert ok.runtime_env["py_modules"]  # the package ships: an image without vwm runs the job

        client = MlflowClient(mlflow_uri)
        runs = client.search_runs([client.get_experiment_by_name("ray-jobs").experiment_id],
                                  order_by=["attributes.start_time DESC"])
        # the job that found no data stopped in its preflight, before opening a run: none is left RUNNING
        assert [r.info.status for r in runs] == ["FINISHED"]
        # the job's driver attached to the head (RAY_ADDRESS), it did not start an embedded cluster
        assert runs[0].data.tags["ray_address"] and not runs[0].data.tags["ray_address"].startswith("local:")
        losses = client.get_metric_history(runs[0].info.run_id, "train/loss")
        final = max(losses, key=lambda m: m.step)
        assert summary[0].endswith(f"final loss {final.value:.4f}") and final.step == 1
        assert (tmp_path / "out").is_dir()  # the run folder is where the config said, not in Ray's temp folder
    finally:
        subprocess.run(["bash", "cluster/local/stop.sh"], cwd=REPO, env=env, timeout=120)
    assert not (tmp_path / "cluster" / "ray.pid").exists()
