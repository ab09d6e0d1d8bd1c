"""What a training job checks before it starts Ray or opens a tracked run, in-process or distributed: the
task's inputs are there, the run's folders are writable, checkpoint storage answers, the device exists, the
tracking server answers. Each failure is one line naming the key and the fix (exit 2 from the CLI), seconds
after the command starts instead of a traceback after the cluster came up."""

from __future__ import annotations

import base64
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from vwm.config import ConfigError, TrainerConfig
from vwm.tracking.credentials import redact, secure_tracking_env

_TIMEOUT_S = 5.0


def preflight(cfg: TrainerConfig, task_cls, *, local: bool) -> None:
    task_cls.check_inputs(cfg)
    writable_dir(cfg.train.output_dir, "train.output_dir")
    if local:
        device_available(cfg.train.device)
    else:
        storage_reachable(cfg.dist.storage_path)
    if cfg.tracking.backend == "mlflow":
        tracking_reachable(secure_tracking_env(cfg.tracking.tracking_uri))


def writable_dir(path: str | Path, key: str) -> None:
    root = Path(path).expanduser().resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".vwm-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"{key}={path} is not a writable folder ({e.strerror or type(e).__name__}); "
                          f"point {key} at one this user can write") from None


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


def tracking_reachable(uri: str | None) -> None:
    """An http(s) MLflow server answers an authenticated request within a few seconds (local file or sqlite
    stores need no server)."""
    if not uri or not uri.startswith(("http://", "https://")):
        return
    request = urllib.request.Request(f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1")
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
        request.add_header("Authorization", f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}")
    where = f"tracking server {uri} (tracking.tracking_uri or $MLFLOW_TRACKING_URI)"
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S):
            return
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise ConfigError(f"{where} refused the credentials (HTTP {e.code}); set MLFLOW_TRACKING_USERNAME and "
                              "MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)") from None
        if e.code < 500:
            return  # it answers; what it thinks of this request MLflow's client will say
        raise ConfigError(f"{where} answers HTTP {e.code}; check the server's log") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise ConfigError(f"{where} does not answer within {_TIMEOUT_S:g} s ({reason}); start it, fix the URI, "
                          "or set tracking.backend=jsonl") from None
