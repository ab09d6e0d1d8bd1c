"""Preflight: a missing input, an unwritable folder, a missing device or a silent tracking server ends the job
with one line before Ray starts or a run opens."""

import socket
import subprocess
import sys
import time

import pytest
import torch

from vwm.config import ConfigError
from vwm.configfile import load_config
from vwm.data.shards import DataSourceError
from vwm.tasks.jepa import run_pretrain
from vwm.train.preflight import s3_failure
from tests.conftest import DEBUG_CONFIG, REPO


def _cfg(tmp_path, *extra):
    return load_config(DEBUG_CONFIG, [f"train.output_dir={tmp_path}/out", "train.device=cpu", "train.steps=2",
                                      "tracking.backend=jsonl", *extra])


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_distributed_job_with_a_missing_data_path_exits_2_before_ray_starts(tmp_path):
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "vwm.cli", "pretrain", "-c", str(DEBUG_CONFIG), "--set",
                          f"train.output_dir={tmp_path}/out", "--set", "data.source=shards", "--set",
                          f"data.paths=[{tmp_path}/nowhere]"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"{tmp_path}/nowhere" in out.stderr and "data.paths" in out.stderr and "Traceback" not in out.stderr
    assert "Ray" not in out.stdout + out.stderr  # no cluster was started (or attached to)
    assert not (tmp_path / "out").exists() and time.monotonic() - t0 < 60


def test_local_checks_name_the_key_and_open_no_run(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"train.output_dir=.*file/out: .*file is a file, not a folder"):
        run_pretrain(_cfg(tmp_path, f"train.output_dir={tmp_path}/file/out"), local=True)
    with pytest.raises(DataSourceError, match="no video files or tar shards match"):
        run_pretrain(_cfg(tmp_path, "data.source=shards", f"data.paths=[{tmp_path}/none]"), local=True)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="train.device=cuda but this host has no usable CUDA device"):
            run_pretrain(_cfg(tmp_path, "train.device=cuda"), local=True)
    port = _closed_port()
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=rf"tracking server http://127.0.0.1:{port} .*does not answer"):
        run_pretrain(_cfg(tmp_path, "tracking.backend=mlflow", f"tracking.tracking_uri=http://127.0.0.1:{port}"),
                     local=True)
    assert time.monotonic() - t0 < 15
    assert not (tmp_path / "out").exists()  # no run folder, no tracked run


@pytest.mark.parametrize("message,says", [
    ("AWS Error NO_SUCH_BUCKET during HeadBucket operation", "does not exist"),
    ("AWS Error ACCESS_DENIED during HeadBucket operation: HTTP status 403", "access denied"),
    ("AWS Error UNKNOWN (HTTP status 403) during HeadBucket operation: No response body.", "access denied"),
    ("AWS Error INVALID_ACCESS_KEY_ID during HeadBucket operation", "no valid credentials"),
    ("AWS Error NETWORK_CONNECTION during HeadBucket operation: curlCode: 7, Couldn't connect to server",
     "does not answer"),
])
def test_s3_failures_say_which_of_the_four_it_is(message, says):
    assert says in s3_failure(message)
