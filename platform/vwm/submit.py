"""``vwm submit VERB ...``: validate a job's config here, then run it on a Ray cluster through Ray Jobs.

Nothing is sent before the config validates and every path the job shares with the cluster is one the
cluster can reach: a relative path or a sqlite tracking store would land inside Ray's temporary working
folder on the head (and vanish with it), so they are refused with what to use instead. The job ships the
working folder (configs, jobs) and the installed ``vwm`` package; it gets ``MLFLOW_TRACKING_URI`` and the
S3 endpoint from here, never credentials: those come from the cluster's own environment or secrets.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from vwm.config import ConfigError
from vwm.configfile import flatten, load_config

# Kept in step with cluster/runtime_env.yaml (for `ray job submit`); a test compares the two. Ray applies
# them to the vwm package too (shipped as py_modules), so none may name one of its folders (data/, models/):
# videos and shards are left out by their suffixes instead.
EXCLUDES = [".git/", ".venv/", "outputs/", "mlruns/", "mlruns.db", "mlflow.db", "*.tar", "*.tar.gz", "*.mp4",
            ".pytest_cache/", "__pycache__/"]
# non-secret settings the job needs to reach tracking and storage the way this machine does
FORWARDED_ENV = ["MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
                 "AWS_DEFAULT_REGION", "AWS_REGION"]
_SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|CREDENTIAL|API_KEY|SESSION", re.I)
_REMOTE = ("s3://", "gs://", "abfs://", "hdfs://")
_REGISTRY = ("models:/", "runs:/")
_TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


class SubmitError(ValueError):
    """The submission cannot go as asked: one line naming the key, path or setting and what to use."""


@dataclass
class Job:
    """What goes to Ray Jobs: the command the cluster runs and its runtime environment."""

    verb: list[str]  # e.g. ["pretrain"] or ["evaluate", "probe"]
    argv: list[str]  # vwm's own arguments after the verb, config paths relative to the working folder
    working_dir: Path
    env_vars: dict[str, str] = field(default_factory=dict)

    @property
    def entrypoint(self) -> str:
        return shlex.join(["python", "-m", "vwm.cli", *self.verb, *self.argv])

    def runtime_env(self) -> dict:
        import vwm

        # py_modules puts the package on every worker's path, so an image without vwm installed runs it
        return {"working_dir": str(self.working_dir), "excludes": EXCLUDES,
                "py_modules": [str(Path(vwm.__file__).parent)], "env_vars": self.env_vars}


def config_model(verb: list[str]) -> type:
    from vwm.config import CollectConfig, EvalConfig, PosttrainConfig, PretrainConfig, ProbeEvalConfig
    from vwm.tune.space import SweepConfig

    return {("pretrain",): PretrainConfig, ("posttrain",): PosttrainConfig, ("sweep",): SweepConfig,
            ("evaluate", "plan"): EvalConfig, ("evaluate", "probe"): ProbeEvalConfig,
            ("data", "collect"): CollectConfig}[tuple(verb)]


def _shared_path(key: str, value: str, *, remote_ok: bool, registry_ok: bool) -> None:
    if value.startswith(_REGISTRY):
        if registry_ok:
            return
        raise SubmitError(f"{key}={value}: a registry URI is not a folder; give s3://... or an absolute path")
    if value.startswith(_REMOTE):
        if remote_ok:
            return
        raise SubmitError(f"{key}={value}: this key takes a folder, not {value.split(':')[0]}://; give an absolute "
                          "path on storage every node mounts (e.g. /mnt/shared/vwm)")
    if "://" in value:
        raise SubmitError(f"{key}={value}: a scheme the cluster's storage does not read; use s3:// or an absolute path")
    if not os.path.isabs(value):
        where = "s3://BUCKET/PREFIX or " if remote_ok else ""
        raise SubmitError(f"{key}={value} is relative: on a cluster it would land in Ray's temporary working folder "
                          f"on the head and be lost with it; give {where}an absolute path on storage every node "
                          "mounts (e.g. --set " + key + "=/mnt/shared/vwm/...)")


# dotted keys (a regex over flatten()'s keys) -> (s3 allowed, registry URI allowed)
_PATH_KEYS = [
    (re.compile(r"(^|\.)output_dir$"), False, False),  # run folders: resume reads them back as files
    (re.compile(r"^dist\.storage_path$"), True, False),
    (re.compile(r"^out$"), True, False),
    (re.compile(r"(^|\.)(paths|heldout_paths)$"), True, False),
    (re.compile(r"(^|\.)(model_uri|encoder_uri|uri)$"), True, True),
]


def check_shared_paths(cfg) -> list[str]:
    """Raise SubmitError for the first path the cluster could not share; return the keys checked."""
    checked = []
    for key, value in flatten(cfg).items():
        for pattern, remote_ok, registry_ok in _PATH_KEYS:
            if not pattern.search(key) or key.endswith("tracking_uri"):
                continue
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, str) and item:
                    _shared_path(key, item, remote_ok=remote_ok, registry_ok=registry_ok)
            checked.append(key)
    return checked


def _has_credentials(uri: str) -> bool:
    return bool(re.match(r"^[a-z+]+://[^/@]*:[^/@]*@", uri)) or bool(re.search(r"[?&](token|password|key)=", uri, re.I))


def check_tracking(cfg, env: dict[str, str]) -> str | None:
    """The tracking URI the job will use, checked: an MLflow server, not a file inside the job's folder."""
    tracking = getattr(cfg, "tracking", None)
    uses_registry = any(isinstance(v, str) and v.startswith(_REGISTRY) for v in _flat_values(cfg))
    if tracking is None or (tracking.backend != "mlflow" and not uses_registry):
        return None
    uri = tracking.tracking_uri or env.get("MLFLOW_TRACKING_URI")
    key = "tracking.tracking_uri" if tracking.tracking_uri else "MLFLOW_TRACKING_URI"
    if not uri:
        raise SubmitError("tracking.backend=mlflow (or a models:/ URI) but no tracking URI: set MLFLOW_TRACKING_URI "
                          "or --set tracking.tracking_uri=http://MLFLOW_HOST:5000 "
                          "(an `mlflow server` the cluster reaches)")
    if _has_credentials(uri):
        raise SubmitError(f"{key} carries credentials, which would travel in plain text with the job: give the URI "
                          "without them and set MLFLOW_TRACKING_USERNAME/PASSWORD (or TOKEN) in the cluster's "
                          "environment")
    if not uri.startswith(("http://", "https://", "databricks")):
        raise SubmitError(f"{key}={uri}: a file store on a cluster lives in the job's temporary folder on the head; "
                          "run an `mlflow server` the cluster reaches and give its http:// URI")
    return uri


def _flat_values(cfg):
    for value in flatten(cfg).values():
        yield from value if isinstance(value, list) else [value]


def relative_config(path: str, working_dir: Path) -> str:
    p = Path(path).resolve()
    if not p.is_file():
        raise SubmitError(f"--config {path}: no such file")
    try:
        return str(p.relative_to(working_dir))
    except ValueError:
        raise SubmitError(f"--config {path} is outside the working folder {working_dir}, which is what ships with "
                          "the job: move it under that folder or pass --working-dir") from None


def forwarded_env(env: dict[str, str], extra: list[str], tracking_uri: str | None) -> dict[str, str]:
    out = {k: env[k] for k in FORWARDED_ENV if env.get(k)}
    for item in extra:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SubmitError(f"--env {item}: expected NAME=VALUE")
        if _SECRET_NAME.search(name):
            raise SubmitError(f"--env {name}: secrets must not travel in the job's runtime env (it is stored in "
                              "plain text); put them in the cluster's environment (a Kubernetes Secret, the "
                              "launcher's env)")
        out[name] = value
    if tracking_uri:
        out["MLFLOW_TRACKING_URI"] = tracking_uri
    for name, value in out.items():
        if name.startswith("MLFLOW_TRACKING_URI") and _has_credentials(value):
            raise SubmitError(f"{name} carries credentials: give the URI without them and set them on the cluster")
    out.setdefault("PYTHONUNBUFFERED", "1")  # logs reach `--follow` as they are written
    return out


def prepare(verb: list[str], configs: list[str], overrides: list[str], *, resume: bool = False,
            working_dir: str | None = None, extra_env: list[str] = (), env: dict[str, str] | None = None) -> Job:
    """Validate everything that can be validated here and build the job; raises ConfigError or SubmitError."""
    env = dict(os.environ if env is None else env)
    root = Path(working_dir or os.getcwd()).resolve()
    cfg = load_config(configs, overrides, config_model(verb))
    check_shared_paths(cfg)
    tracking_uri = check_tracking(cfg, env)
    if verb == ["sweep"]:  # every trial runs the base config: its paths and tracking go to the cluster too
        from vwm.config import PretrainConfig

        relative_config(cfg.base, root)  # the base ships with the job, so it must lie in the working folder
        base = load_config([str(Path(cfg.base).resolve())], cfg.overrides, PretrainConfig)
        check_shared_paths(base)
        tracking_uri = check_tracking(base, env) or tracking_uri
    argv = [a for c in configs for a in ("--config", relative_config(c, root))]
    argv += [a for o in overrides for a in ("--set", o)]
    if resume:
        argv.append("--resume")
    return Job(verb, argv, root, forwarded_env(env, list(extra_env), tracking_uri))


def resolve_address(address: str | None, env: dict[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    found = address or env.get("RAY_API_SERVER_ADDRESS") or env.get("RAY_ADDRESS")
    if not found:
        raise SubmitError("no Ray job server: pass --address http://HEAD:8265 or set RAY_API_SERVER_ADDRESS "
                          "(cluster/local/start.sh writes it to its env.sh)")
    if "://" not in found:
        raise SubmitError(f"Ray address {found}: Ray Jobs needs the dashboard's http address (http://HEAD:8265), "
                          "not the GCS address; set RAY_API_SERVER_ADDRESS or pass --address")
    return found


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as e:  # Ray raises ConnectionError / RuntimeError with a long text
        text = str(e)
        if "401" in text or "auth" in text.lower() or "token" in text.lower():
            raise SubmitError(f"the Ray job server at {address} refused the request: it needs the cluster's token "
                              "(export RAY_AUTH_MODE=token and put the token in ~/.ray/auth_token or "
                              "RAY_AUTH_TOKEN)") from None
        raise SubmitError(f"no Ray job server answers at {address}: is the head up, and is this its dashboard "
                          f"port? ({text.splitlines()[0] if text else type(e).__name__})") from None


def submit(job: Job, address: str, *, follow: bool, wait: bool, out=sys.stdout) -> int:
    """Submit, then (unless ``wait`` is off) wait for the end, streaming logs with ``follow``; the job's
    exit status is the return value (its driver's exit code where Ray knows it)."""
    client = _client(address)
    job_id = f"vwm-{'-'.join(job.verb)}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"
    try:
        client.submit_job(entrypoint=job.entrypoint, runtime_env=job.runtime_env(), submission_id=job_id,
                          metadata={"vwm_verb": " ".join(job.verb)})
    except Exception as e:
        raise SubmitError(f"the Ray job server at {address} did not take the job: {str(e).splitlines()[0]}") from None
    print(f"submitted {job_id} to {address}: {job.entrypoint}", file=out, flush=True)
    print(f"  follow: ray job logs -f {job_id} --address {address}    stop: ray job stop {job_id} --address {address}",
          file=out, flush=True)
    if not wait:
        return 0
    return wait_for(client, job_id, follow=follow, out=out, address=address)


def wait_for(client, job_id: str, *, follow: bool, out, address: str, poll_s: float = 1.0) -> int:
    shown, status = 0, None
    try:
        while True:
            info = client.get_job_info(job_id)
            if follow:
                logs = client.get_job_logs(job_id)
                out.write(logs[shown:])
                out.flush()
                shown = len(logs)
            now = getattr(info.status, "value", str(info.status))
            if now != status:
                status = now
                if not follow or status in _TERMINAL:
                    print(f"job {job_id}: {status}", file=out, flush=True)
            if status in _TERMINAL:
                break
            time.sleep(poll_s)
    except KeyboardInterrupt:
        print(f"\nstopped following; the job runs on. Stop it with: ray job stop {job_id} --address {address}",
              file=out, flush=True)
        return 130
    if status == "SUCCEEDED":
        return 0
    code = getattr(info, "driver_exit_code", None)
    if status == "FAILED" and info.message:
        print(f"job {job_id} failed: {info.message.strip().splitlines()[-1]}", file=out, flush=True)
    return code if isinstance(code, int) and code > 0 else 1


def main(args) -> int:
    """``vwm submit`` (argparse namespace from vwm.cli)."""
    verb = [args.verb] + ([args.what] if args.verb in ("evaluate", "data") else [])
    try:
        job = prepare(verb, args.config, args.overrides, resume=getattr(args, "resume", False),
                      working_dir=args.working_dir, extra_env=args.env)
        address = resolve_address(args.address)
        return submit(job, address, follow=args.follow, wait=not args.no_wait)
    except (ConfigError, SubmitError) as e:
        print(f"vwm submit: {e}", file=sys.stderr)
        return 2
