"""Real services for integration tests: a local Ray cluster and a moto S3 server, started here and
stopped by process id."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

FAKE_AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def stop_pid(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def aws_env():
    """Fake credentials in the environment before Ray starts, so Ray's workers inherit them."""
    saved = {k: os.environ.get(k) for k in FAKE_AWS}
    os.environ.update(FAKE_AWS)
    yield FAKE_AWS
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def s3_server(aws_env, tmp_path_factory):
    """A moto S3 server on a free loopback port; yields its endpoint URL."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_http(endpoint + "/moto-api/")
        yield endpoint
    finally:
        stop_pid(proc)
        log.close()


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh bucket on a reset server; yields (endpoint, bucket)."""
    import s3fs

    urllib.request.urlopen(urllib.request.Request(s3_server + "/moto-api/reset", method="POST"))
    fs = s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=s3_server)
    fs.call_s3("create_bucket", Bucket="vwm-test")
    yield s3_server, "vwm-test"


@pytest.fixture(scope="session")
def ray_cluster(aws_env):
    """One embedded Ray cluster for the session (dashboard on: Ray Train V2 needs its state API)."""
    import ray

    ray.init(address="local", num_cpus=2, log_to_driver=True)
    yield ray
    ray.shutdown()


# mlflow server's job runner (huey consumers for GenAI evaluation jobs, which vwm never submits) costs
# about 13 CPU seconds per server start; tracking and the model registry do not use it
MLFLOW_NO_JOBS = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def start_mlflow(root, port: int) -> subprocess.Popen:
    """A real ``mlflow server`` (SQLite backend, local artifacts) on loopback; stopped with stop_pid."""
    root.mkdir(parents=True, exist_ok=True)
    log = open(root / f"mlflow-{port}.log", "a")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                             f"sqlite:///{root}/mlflow.db", "--artifacts-destination", str(root / "artifacts"),
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, **MLFLOW_NO_JOBS})
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=90)
    except BaseException:  # a server that never answered is still running: stop it and its workers
        stop_pid(proc)
        raise
    return proc


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    proc = start_mlflow(root, port)
    yield f"http://127.0.0.1:{port}"
    stop_pid(proc)


@pytest.fixture(scope="session", autouse=True)
def clear_stale_extension_locks():
    """A DeepSpeed JIT build killed midway leaves a lock that hangs every later build."""
    from pathlib import Path

    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR", Path.home() / ".cache" / "torch_extensions"))
    for lock in root.glob("**/lock") if root.is_dir() else []:
        if time.time() - lock.stat().st_mtime > 600:
            lock.unlink(missing_ok=True)
