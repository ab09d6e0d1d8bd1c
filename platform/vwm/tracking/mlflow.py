"""The MLflow backend of the Tracker interface: the only module that imports mlflow.

Metrics are buffered and sent by a background thread, so training never waits on the tracking server: if
the server goes away, the thread warns, keeps the metrics, and sends them when the server is back.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from vwm.config import ConfigError, TrackingConfig
from vwm.tracking.credentials import redact, secure_tracking_env

log = logging.getLogger(__name__)
_BATCH = 500  # MLflow's log_batch limit for metrics
_FLUSH_S = 2.0
# MLflow 3's UI opens an experiment without this tag in its GenAI (traces) view
_EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def resolve_tracking_uri(cfg: TrackingConfig) -> str:
    """Config, else $MLFLOW_TRACKING_URI, else ``sqlite:///mlruns.db`` made absolute (workers run elsewhere);
    a user and password in the URI move to MLflow's environment variables (vwm.tracking.credentials)."""
    uri = secure_tracking_env(cfg.tracking_uri) or "sqlite:///mlruns.db"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    return uri


class MLflowTracker:
    """One MLflow run. ``run_id=None`` creates it (the driver); a worker attaches with the driver's run id."""

    def __init__(self, cfg: TrackingConfig, *, run_name: str | None = None, run_id: str | None = None,
                 tags: dict[str, str] | None = None, tracking_uri: str | None = None,
                 spill_path: str | Path | None = None, experiment_id: str | None = None):
        self.cfg = cfg
        self.spill_path = Path(spill_path) if spill_path else None  # where unsent metrics go at close
        self.uri = secure_tracking_env(tracking_uri) if tracking_uri else resolve_tracking_uri(cfg)
        # short HTTP retries: the flusher thread retries on its own schedule and must not hang on a dead server
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        self.client = MlflowClient(self.uri)
        self.experiment_id = experiment_id  # known to the run's creator; an attached one is told (its handle)
        if run_id is None:
            self.experiment_id = self._experiment(cfg.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "vwm")
            run_id = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags or {}).info.run_id
            self.owns_run = True
        else:
            self.owns_run = False  # a worker attached to the driver's run: the driver ends it
        self.run_id = run_id
        self._pending: list[Metric] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._failing_since: float | None = None
        self._thread = threading.Thread(target=self._flush_loop, name="mlflow-flush", daemon=True)
        self._thread.start()

    def _experiment(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            try:
                return self.client.create_experiment(name, tags=_EXPERIMENT_KIND)
            except mlflow.exceptions.MlflowException as e:  # another run created it meanwhile (a sweep's trials)
                if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
                    raise
                exp = self.client.get_experiment_by_name(name)
        if not exp.tags.get("mlflow.experimentKind"):
            for k, v in _EXPERIMENT_KIND.items():
                self.client.set_experiment_tag(exp.experiment_id, k, v)
        return exp.experiment_id

    def handle(self) -> dict:
        """What a worker needs to log into this run."""
        handle = {"backend": "mlflow", "tracking_uri": self.uri, "run_id": self.run_id}
        if self.experiment_id:
            handle["experiment_id"] = self.experiment_id
        return {**handle, "spill_path": str(self.spill_path)} if self.spill_path else handle

    def log_inputs(self, inputs: list[dict]) -> None:
        """Each input (``vwm.tracking.tracker.dataset_input``) as an MLflow dataset: the run page's Datasets."""
        self.client.log_inputs(self.run_id, datasets=[
            DatasetInput(Dataset(name=i["name"], digest=i["digest"], source_type=_source_type(i["source"]),
                                 source=i["source"], profile=json.dumps(i["profile"])),
                         tags=[InputTag("mlflow.data.context", i["context"])]) for i in inputs])

    def log_params(self, params: dict[str, Any]) -> None:
        items = [Param(k, redact(str(v))[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def set_tags(self, tags: dict[str, str | None]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, redact(str(v))) for k, v in tags.items()
                                                   if v is not None])
        for k in [k for k, v in tags.items() if v is None]:
            try:
                self.client.delete_tag(self.run_id, k)
            except mlflow.exceptions.MlflowException:  # not set: nothing to delete
                pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        with self._lock:
            self._pending.extend(Metric(k, float(v), now, step) for k, v in metrics.items())

    def flush(self, timeout_s: float = 5.0) -> None:
        """Send what is buffered now (best effort, bounded): before a report, after which a scheduler may
        stop the trial and the buffer would be lost."""
        deadline = time.monotonic() + timeout_s
        while self._pending and time.monotonic() < deadline and self._flush():
            pass

    def last_point(self, name: str) -> tuple[int, float] | None:
        """What the server holds (None when it cannot be asked: the caller then logs as if nothing were)."""
        try:
            history = self.client.get_metric_history(self.run_id, name)
        except Exception as e:  # server down: not worth failing a run over
            log.warning("MLflow server %s: could not read %s back (%s)", redact(self.uri), name, type(e).__name__)
            return None
        return max(((m.step, m.value) for m in history), default=None)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, name: str) -> None:
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / name).write_text(text)
            self.client.log_artifact(self.run_id, str(Path(d) / name))

    def log_dict(self, data: dict | list, name: str) -> None:
        self.log_text(json.dumps(data, indent=1, default=str), name)

    def log_table(self, rows: list[dict], name: str) -> None:
        """Rows as MLflow's table artifact (a JSON of columns), which the UI's artifact view renders."""
        columns = list(dict.fromkeys(k for r in rows for k in r))
        self.log_text(json.dumps({"columns": columns, "data": [[r.get(c) for c in columns] for r in rows]},
                                 default=str), name)

    def log_summary(self, metrics: dict[str, float]) -> None:
        self.flush()
        self.client.log_batch(self.run_id, metrics=[Metric(f"summary/{k}", float(v), int(time.time() * 1000), 0)
                                                    for k, v in metrics.items()])

    def child(self, run_name: str, tags: dict[str, str] | None = None) -> MLflowTracker:
        return MLflowTracker(self.cfg, run_name=run_name, tracking_uri=self.uri,
                             tags={**(tags or {}), "mlflow.parentRunId": self.run_id})

    def end_stopped_children(self, failed: set[str]) -> int:
        """Nested runs of trials a scheduler stopped or paused end as KILLED, tagged ``stopped_by``: such a
        run was left RUNNING (its process was killed) or FAILED on its killed trainer. Runs of the trials
        in ``failed`` (Tune's ids of errored trials) keep their FAILED status."""
        experiment = self.client.get_run(self.run_id).info.experiment_id
        children = self.client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{self.run_id}'")
        marked = 0
        for child in children:
            stopped = child.data.tags.get("trial_id") not in failed and child.info.status == "FAILED"
            if child.info.status == "RUNNING" or stopped:
                self.client.set_tag(child.info.run_id, "stopped_by", "scheduler")
                self.client.set_terminated(child.info.run_id, status="KILLED")
                marked += 1
        return marked

    def _flush(self) -> bool:
        with self._lock:
            batch, self._pending = self._pending[:_BATCH], self._pending[_BATCH:]
        if not batch:
            return True
        try:
            self.client.log_batch(self.run_id, metrics=batch)
        except Exception as e:  # server down, timeouts: keep the metrics and try again later
            with self._lock:
                self._pending = batch + self._pending
            if self._failing_since is None:
                self._failing_since = time.monotonic()
                log.warning("MLflow server %s unreachable (%s); metrics are kept and retried", redact(self.uri),
                            type(e).__name__)
            return False
        if self._failing_since is not None:
            log.warning("MLflow server %s is back after %.0f s; sending buffered metrics", redact(self.uri),
                        time.monotonic() - self._failing_since)
            self._failing_since = None
        return True

    def _flush_loop(self) -> None:
        while not self._stop.wait(_FLUSH_S):
            while self._pending and self._flush():
                pass

    def close(self, status: str = "FINISHED", timeout_s: float | None = None) -> None:
        """Send what is buffered (retrying for up to ``timeout_s``, default ``tracking.publish_timeout_s``);
        what still could not be sent goes to the spill file (``vwm publish`` sends it later). Then end the run
        if we created it: raises when the server cannot be told, the caller records that for later."""
        self._stop.set()
        self._thread.join()
        deadline = time.monotonic() + (self.cfg.publish_timeout_s if timeout_s is None else timeout_s)
        while self._pending and time.monotonic() < deadline:
            if not self._flush():
                time.sleep(1.0)
        if self._pending:
            self._spill()
        if self.owns_run:
            self.client.set_terminated(self.run_id, status=status)

    def _spill(self) -> None:
        if self.spill_path is None:
            log.error("MLflow: %d metric values could not be sent to %s", len(self._pending), redact(self.uri))
            return
        self.spill_path.parent.mkdir(parents=True, exist_ok=True)
        with self.spill_path.open("a") as f:
            for m in self._pending:
                f.write(json.dumps({"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step}) + "\n")
        log.error("MLflow server %s unreachable: %d metric values kept in %s (vwm publish sends them)",
                  redact(self.uri), len(self._pending), self.spill_path)
        self._pending = []

    def send_spilled(self) -> int:
        """Send the metrics a closed attempt spilled (raises if the server is still down); returns how many."""
        if self.spill_path is None or not self.spill_path.is_file():
            return 0
        rows = []
        for line in self.spill_path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:  # a line cut short by a killed process
                continue
        metrics = [Metric(r["key"], float(r["value"]), int(r["timestamp"]), int(r["step"])) for r in rows]
        for i in range(0, len(metrics), _BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + _BATCH])
        self.spill_path.unlink()
        return len(metrics)


def _source_type(source: str) -> str:
    schemes = {root.split("://", 1)[0] if "://" in root else "local" for root in json.loads(source)}
    return schemes.pop() if len(schemes) == 1 else "mixed"


class WorldModelFeatures(mlflow.pyfunc.PythonModel):
    """A registered world model under MLflow's pyfunc flavour: uint8 RGB frames in, token features out
    (the model's ``encode``), so ``mlflow.pyfunc.load_model(URI).predict(frames)`` works wherever vwm is
    installed. The vwm artifact itself rides along as the model's ``world_model`` artifact."""

    def load_context(self, context) -> None:
        from vwm.models.artifact import read_world_model

        self.wm = read_world_model(context.artifacts["world_model"])

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        return self.wm.encode(np.asarray(model_input)).float().cpu().numpy()


_PYFUNC_INNER = "artifacts/world_model"  # where save_pyfunc puts the vwm artifact (named by its folder)
# MLflow's models-from-code: the model is this script run at load time, so nothing is unpickled
_MODEL_CODE = """from mlflow.models import set_model

from vwm.tracking.mlflow import WorldModelFeatures

set_model(WorldModelFeatures())
"""


def _signature(artifact: Path):
    """Frames (B, T, H, W, 3) uint8 -> features (B, N, D) for a V-JEPA model; an action-conditioned one
    encodes single frames (B, H, W, 3) -> (B, N, D)."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    manifest = json.loads((artifact / "manifest.json").read_text())
    dim, grid = manifest["model_config"]["dim"], manifest["geometry"]["grid"]
    if manifest["kind"] == "vjepa":
        frames, tokens = (-1, manifest["geometry"]["frames"], -1, -1, 3), grid[0] * grid[1] * grid[2]
    else:
        frames, tokens = (-1, -1, -1, 3), -1  # tokens per frame follow the model's pooling
    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), frames)]),
                          outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, tokens, dim))]))


def save_pyfunc(artifact: Path, into: Path) -> Path:
    """The vwm artifact folder ``artifact`` as an MLflow model folder ``into`` (MLmodel, code, environment,
    the artifact under ``artifacts/``)."""
    import torch

    code = into.parent / "vwm_world_model.py"
    code.write_text(_MODEL_CODE)
    if artifact.name != "world_model":  # MLflow keeps the folder's name: _PYFUNC_INNER is where loaders look
        artifact = Path(shutil.copytree(artifact, into.parent / "stage" / "world_model"))
    bar = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # a bar for copying two local files
    try:
        with warnings.catch_warnings():  # the signature stands in for an input example (which would run it)
            warnings.filterwarnings("ignore", message=".*input example", category=UserWarning)
            # vwm itself is not named: it is not on a package index, and an environment manager would install
            # whatever package took the name; the model's code needs vwm installed where it loads
            mlflow.pyfunc.save_model(str(into), python_model=str(code), artifacts={"world_model": str(artifact)},
                                     signature=_signature(artifact),
                                     pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
    finally:
        if bar is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = bar
    return into


class MLflowRegistry:
    """The model registry of an MLflow server: versions of a named model, each with an alias."""

    def __init__(self, cfg: TrackingConfig, tracking_uri: str | None = None):
        self.uri = secure_tracking_env(tracking_uri) if tracking_uri else resolve_tracking_uri(cfg)
        self.client = MlflowClient(self.uri)

    def register(self, handle: dict, directory: str | Path, name: str, alias: str | None = None,
                 description: str | None = None) -> str:
        """Log the vwm artifact ``directory`` as the run's ``world_model``, an MLflow pyfunc model, register
        it as a new version of ``name``, point ``alias`` at it; returns the exact ``models:/NAME/VERSION``."""
        run_id = handle["run_id"]
        with tempfile.TemporaryDirectory(prefix="vwm-pyfunc-") as tmp:
            self.client.log_artifacts(run_id, str(save_pyfunc(Path(directory), Path(tmp) / "world_model")),
                                      "world_model")
        try:
            self.client.create_registered_model(name)
        except mlflow.exceptions.MlflowException as e:
            if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code):
                raise
        source = f"{self.client.get_run(run_id).info.artifact_uri}/world_model"
        version = self.client.create_model_version(name, source=source, run_id=run_id,
                                                   description=description).version
        if alias:
            self.client.set_registered_model_alias(name, alias, version)
        self.client.set_tag(run_id, "registered_model", f"models:/{name}/{version}")
        return f"models:/{name}/{version}"

    def download(self, uri: str) -> Path:
        from vwm.tracking.registry import vwm_folder

        return vwm_folder(download_artifacts(uri, self.uri))


def _model_version(client: MlflowClient, uri: str, tracking: str):
    """The registered version a ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``models:/NAME@latest`` names."""
    ref = uri[len("models:/"):]
    name, sep, alias = ref.partition("@")
    if not sep:
        name, _, alias = ref.partition("/")
    if alias.lower() == "latest":
        versions = client.search_model_versions(f"name = '{name}'")
        if not versions:
            raise FileNotFoundError(f"{uri}: no registered model {name!r} at {tracking}")
        return max(versions, key=lambda v: int(v.version))
    if sep:
        return client.get_model_version_by_alias(name, alias)
    return client.get_model_version(name, alias)


def _artifact_uri(uri: str, tracking: str) -> tuple[str, str]:
    """(the artifact location, ``uri`` pinned: an alias replaced by the exact ``models:/NAME/VERSION``)."""
    if not uri.startswith("models:/"):
        return uri, uri
    version = _model_version(MlflowClient(tracking, registry_uri=tracking), uri, tracking)
    return version.source, f"models:/{version.name}/{version.version}"


def pin_model_uri(uri: str, tracking_uri: str | None = None) -> str:
    """``models:/NAME@ALIAS`` as the exact ``models:/NAME/VERSION`` it names now (other URIs unchanged), so
    that processes loading it later load the same version even if the alias moves."""
    tracking = secure_tracking_env(tracking_uri) if tracking_uri else resolve_tracking_uri(TrackingConfig())
    return _artifact_uri(uri, tracking)[1]


def download_artifacts(uri: str, tracking_uri: str | None = None, member: str | None = None) -> Path:
    """A local folder with the contents of a ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, ``runs:/`` or
    artifact URI (``member``: only that file of it, e.g. the manifest before the weights). Nothing global
    is set: the client names its tracking and registry URI itself (MLflow's ``set_registry_uri`` would also
    leak into every child process through the environment).

    MLflow reserves the alias ``latest``; ``models:/NAME@latest`` and ``models:/NAME/latest`` give the
    newest version.
    """
    tracking = secure_tracking_env(tracking_uri) if tracking_uri else resolve_tracking_uri(TrackingConfig())
    source, _ = _artifact_uri(uri, tracking)
    if not member:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=source, tracking_uri=tracking))
    # a registered pyfunc model carries the vwm artifact under artifacts/world_model; older versions are one
    for inner in (f"{_PYFUNC_INNER}/{member}", member):
        try:
            return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{source.rstrip('/')}/{inner}",
                                                            tracking_uri=tracking))
        except (mlflow.exceptions.MlflowException, OSError) as e:
            missing = e
    raise missing


def check_server(uri: str | None, timeout_s: float = 5.0) -> None:
    """Before a run starts: an http(s) MLflow server answers an authenticated request within ``timeout_s``
    (ConfigError, one line, otherwise); local file or sqlite stores need no server."""
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
        with urllib.request.urlopen(request, timeout=timeout_s):
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
        raise ConfigError(f"{where} does not answer within {timeout_s:g} s ({reason}); start it, fix the URI, "
                          "or set tracking.backend=jsonl") from None
