"""What a training job checks before it starts Ray or opens a tracked run, in-process or distributed: the
task's inputs are there, the run's folders are writable, checkpoint storage answers, the device exists, the
tracking server answers. Each failure is one line naming the key and the fix (exit 2 from the CLI), seconds
after the command starts instead of a traceback after the cluster came up."""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

from vwm.config import ConfigError, TrainerConfig
from vwm.tracking.credentials import redact, secure_tracking_env

_TIMEOUT_S = 5.0


def preflight(cfg: TrainerConfig, task_cls, *, local: bool) -> list[dict]:
    """Raises ConfigError (or the task's DataSourceError) on the first problem; returns the task's inputs."""
    inputs = task_cls.check_inputs(cfg)
    writable_dir(cfg.train.output_dir, "train.output_dir")
    if local:
        device_available(cfg.train.device)
    else:
        storage_reachable(cfg.dist.storage_path)
    if cfg.tracking.backend == "mlflow":
        from vwm.tracking.mlflow import check_server

        check_server(secure_tracking_env(cfg.tracking.tracking_uri))
    return inputs


def writable_dir(path: str | Path, key: str) -> None:
    """The folder, or the nearest part of its path that exists, can be written (nothing is created here)."""
    root = Path(path).expanduser().resolve()
    there = root
    while not there.exists():
        there = there.parent
    if not there.is_dir():
        raise ConfigError(f"{key}={path}: {there} is a file, not a folder; point {key} at a folder")
    if not os.access(there, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={path}: {there} is not writable by this user; point {key} at a folder it can "
                          "write")


def device_available(device: str) -> None:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        built = "built without CUDA" if torch.version.cuda is None else f"CUDA {torch.version.cuda} build"
        raise ConfigError(f"train.device=cuda but this host has no usable CUDA device (torch {torch.__version__}, "
                          f"{built}); use train.device=auto or cpu")


def storage_reachable(storage: str) -> None:
    """``dist.storage_path``: a local folder must be writable; an s3:// URI's bucket must answer."""
    if "://" not in storage:
        writable_dir(storage, "dist.storage_path")
        return
    if not storage.startswith("s3://"):
        return  # other Ray storage filesystems: left to Ray
    import pyarrow.fs as pafs

    parsed = urllib.parse.urlparse(storage)
    query = dict(urllib.parse.parse_qsl(parsed.query))
    endpoint = query.get("endpoint_override") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
        "AWS_ENDPOINT_URL")
    scheme = query.get("scheme")
    if endpoint and "://" in endpoint:
        scheme, endpoint = endpoint.split("://", 1)
    fs = pafs.S3FileSystem(endpoint_override=endpoint, scheme=scheme or "https", region=query.get("region"),
                           connect_timeout=_TIMEOUT_S, request_timeout=_TIMEOUT_S,
                           retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1))
    bucket = parsed.netloc
    where = f"dist.storage_path={redact(storage)} (endpoint {endpoint or 'AWS default'})"
    try:
        info = fs.get_file_info(bucket)
    except OSError as e:
        raise ConfigError(f"{where}: {s3_failure(str(e))}") from None
    if info.type == pafs.FileType.NotFound:
        raise ConfigError(f"{where}: bucket {bucket!r} does not exist; create it or fix dist.storage_path")


def s3_failure(message: str) -> str:
    """Which of the four things that go wrong with S3 an error message says, and what to do about it."""
    m = message.lower()
    if "no_such_bucket" in m or "nosuchbucket" in m:
        return "the bucket does not exist; create it or fix dist.storage_path"
    if any(s in m for s in ("access_denied", "accessdenied", "forbidden", "http status 403")):
        return "access denied; give these credentials access to the bucket, or use another"
    if any(s in m for s in ("credentials", "invalid_access_key", "invalidaccesskeyid", "signaturedoesnotmatch",
                            "http status 401")):
        return ("no valid credentials; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE "
                "(or an instance role)")
    if any(s in m for s in ("network_connection", "curl", "connect", "timed out", "timeout", "resolve")):
        return "the endpoint does not answer; check endpoint_override (or AWS_ENDPOINT_URL) and the network"
    return f"S3 error: {message.splitlines()[0][:300]}"
