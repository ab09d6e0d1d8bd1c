"""The Tracker interface and the backends that need no server: no-op, JSON lines, and in-memory.

Callers use only this interface (the MLflow backend lives in ``vwm.tracking.mlflow``); ``make_tracker``
starts a run, ``attach_tracker`` logs into a run another process started, from its ``handle()``.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Protocol

from vwm.config import TrackingConfig
from vwm.tracking.credentials import redact

SPILL_FILE = "unsent_metrics.jsonl"  # in the run folder: metric values the server did not take before the end


class Tracker(Protocol):
    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def set_tags(self, tags: dict[str, str | None]) -> None: ...  # None deletes the tag
    def log_dict(self, data: dict | list, name: str) -> None: ...  # a JSON file in the run
    def log_table(self, rows: list[dict], name: str) -> None: ...  # rows of one schema, e.g. per-episode results
    def log_summary(self, metrics: dict[str, float]) -> None: ...  # final values of the run
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def log_inputs(self, inputs: list[dict]) -> None: ...  # the data a run reads (``dataset_input``)
    def child(self, run_name: str, tags: dict[str, str] | None = None) -> Tracker: ...  # a nested run
    def end_stopped_children(self, failed: set[str]) -> int: ...  # children left running: ended as KILLED
    def close(self, status: str = "FINISHED", timeout_s: float | None = None) -> None: ...
    def flush(self) -> None: ...  # send buffered metrics now
    def last_point(self, name: str) -> tuple[int, float] | None: ...  # (step, value) of the highest step logged
    def send_spilled(self) -> int: ...  # send what an earlier close could not (SPILL_FILE); how many
    def handle(self) -> dict: ...  # what a worker process needs to log into the same run


class NoopTracker:
    """For ranks other than 0 and for runs with tracking off."""

    def log_params(self, params):
        pass

    def log_metrics(self, metrics, step):
        pass

    def set_tags(self, tags):
        pass

    def log_dict(self, data, name):
        pass

    def log_table(self, rows, name):
        pass

    def log_summary(self, metrics):
        pass

    def log_artifact(self, path, artifact_path=None):
        pass

    def log_inputs(self, inputs):
        pass

    def child(self, run_name, tags=None):
        return NoopTracker()

    def end_stopped_children(self, failed):
        return 0

    def close(self, status="FINISHED", timeout_s=None):
        pass

    def flush(self):
        pass

    def last_point(self, name):
        return None

    def send_spilled(self):
        return 0

    def handle(self):
        return {"backend": "none"}


class DictTracker(NoopTracker):
    """Everything in memory, for tests and notebooks: ``metrics[name] -> [(step, value)]``."""

    def __init__(self, run_name: str = "run", tags: dict[str, str] | None = None):
        self.run_name, self.tags = run_name, dict(tags or {})
        self.params: dict[str, Any] = {}
        self.metrics: dict[str, list[tuple[int, float]]] = {}
        self.files: dict[str, Any] = {}
        self.summary: dict[str, float] = {}
        self.inputs: list[dict] = []
        self.children: list[DictTracker] = []
        self.status: str | None = None

    def log_params(self, params):
        self.params.update(params)

    def log_metrics(self, metrics, step):
        for k, v in metrics.items():
            self.metrics.setdefault(k, []).append((step, float(v)))

    def set_tags(self, tags):
        self.tags.update({k: str(v) for k, v in tags.items() if v is not None})
        for k in [k for k, v in tags.items() if v is None]:
            self.tags.pop(k, None)

    def log_dict(self, data, name):
        self.files[name] = json.loads(json.dumps(data, default=str))

    def log_table(self, rows, name):
        self.files[name] = [dict(r) for r in rows]

    def log_summary(self, metrics):
        self.summary.update({k: float(v) for k, v in metrics.items()})

    def log_inputs(self, inputs):
        self.inputs.extend(inputs)

    def child(self, run_name, tags=None):
        self.children.append(DictTracker(run_name, tags))
        return self.children[-1]

    def close(self, status="FINISHED", timeout_s=None):
        self.status = status

    def last_point(self, name):
        points = self.metrics.get(name)
        return max(points) if points else None

    def handle(self):
        return {"backend": "dict", "run_name": self.run_name}


class JsonlTracker(NoopTracker):
    """Metrics as one JSON object per line in ``run_dir/metrics.jsonl``; params, tags, summary and logged
    dicts as JSON files beside it; a child run is a subfolder."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._metrics = (self.run_dir / "metrics.jsonl").open("a")

    def _update_json(self, name: str, values: dict) -> None:
        path = self.run_dir / name
        current = {**(json.loads(path.read_text()) if path.is_file() else {}), **values}
        path.write_text(json.dumps({k: v for k, v in current.items() if v is not None}, indent=1, sort_keys=True,
                                   default=str))

    def log_params(self, params):
        self._update_json("params.json", params)

    def log_metrics(self, metrics, step):
        self._metrics.write(json.dumps({"step": step, **metrics}) + "\n")
        self._metrics.flush()

    def set_tags(self, tags):
        self._update_json("tags.json", tags)

    def log_dict(self, data, name):
        (self.run_dir / name).write_text(json.dumps(data, indent=1, default=str))

    def log_table(self, rows, name):
        (self.run_dir / name).write_text("".join(json.dumps(r, default=str) + "\n" for r in rows))

    def log_summary(self, metrics):
        self._update_json("summary.json", metrics)

    def log_inputs(self, inputs):
        (self.run_dir / "inputs.json").write_text(json.dumps(inputs, indent=1))

    def log_artifact(self, path, artifact_path=None):
        """A copy under ``run_dir/artifacts/[artifact_path]/``, as MLflow keeps a run's files."""
        path, target = Path(path), self.run_dir / "artifacts" / (artifact_path or "")
        target.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            shutil.copytree(path, target / path.name, dirs_exist_ok=True)
        else:
            shutil.copy2(path, target / path.name)

    def child(self, run_name, tags=None):
        child = JsonlTracker(self.run_dir / run_name)
        if tags:
            child.set_tags(tags)
        return child

    def close(self, status="FINISHED", timeout_s=None):
        self._metrics.close()
        self._update_json("tags.json", {"status": status})

    def flush(self):
        self._metrics.flush()

    def last_point(self, name):
        best = None
        path = self.run_dir / "metrics.jsonl"
        for line in path.read_text().splitlines() if path.is_file() else []:
            try:
                record = json.loads(line)
            except ValueError:  # a line cut short by a killed process
                continue
            if name in record and (best is None or record["step"] >= best[0]):
                best = (int(record["step"]), float(record[name]))
        return best

    def handle(self):
        return {"backend": "jsonl", "run_dir": str(self.run_dir)}


def make_tracker(cfg: TrackingConfig, run_dir: str | Path, *, run_name: str | None = None,
                 tags: dict[str, str] | None = None) -> Tracker:
    """A new run's tracker (on the driver, or the single process of a local run)."""
    if cfg.backend == "jsonl":
        tracker = JsonlTracker(run_dir)
        if tags:
            tracker.set_tags(tags)
        return tracker
    if cfg.backend == "mlflow":
        from vwm.tracking.mlflow import MLflowTracker

        return MLflowTracker(cfg, run_name=run_name or Path(run_dir).name, tags=tags,
                             spill_path=Path(run_dir).resolve() / SPILL_FILE)
    return NoopTracker()


def attach_tracker(cfg: TrackingConfig, handle: dict, owner: bool = False) -> Tracker:
    """A tracker logging into the run that ``handle`` (from ``Tracker.handle()``) names: a worker's, or
    (``owner=True``) a resumed driver's, which ends the run when it closes."""
    if handle["backend"] == "jsonl":
        return JsonlTracker(handle["run_dir"])
    if handle["backend"] == "mlflow":
        from vwm.tracking.mlflow import MLflowTracker

        tracker = MLflowTracker(cfg, run_id=handle["run_id"], tracking_uri=handle["tracking_uri"],
                                spill_path=handle.get("spill_path"), experiment_id=handle.get("experiment_id"))
        tracker.owns_run = owner
        return tracker
    return NoopTracker()


def nested_under(parent: dict) -> dict[str, str]:
    """Tags that make a run started in another process (a sweep's trial) a child of ``parent``'s run."""
    return {"mlflow.parentRunId": parent["run_id"]} if parent.get("backend") == "mlflow" else {}


def describe(handle: dict) -> list[str]:
    """Lines telling a person where a run's records are: the run's page in the MLflow UI (a served tracking
    URI), or how to serve a local store and the page the run will have there."""
    if handle.get("backend") == "mlflow":
        uri, run = redact(handle["tracking_uri"]), handle["run_id"]
        page = f"#/experiments/{handle.get('experiment_id', '0')}/runs/{run}"
        if uri.startswith(("http://", "https://")):
            return [f"MLflow run: {uri.rstrip('/')}/{page}"]
        return [f"MLflow run {run} in {uri}",
                f"browse it: mlflow ui --backend-store-uri {uri}  then http://127.0.0.1:5000/{page}"]
    if handle.get("backend") == "jsonl":
        return [f"metrics: {handle['run_dir']}/metrics.jsonl"]
    return []


# --redis-password=X, --token X, AWS_SECRET_ACCESS_KEY=X: values of options that name a secret
_SECRET_OPTION = re.compile(r"((?:password|passwd|token|secret|api[_-]?key|access[_-]?key)[\w-]*(?:=|\s+))\S+", re.I)


def run_tags(kind: str, name: str) -> dict[str, str]:
    """Where a run comes from, under MLflow's own system tag names (its UI shows them as source, user and
    commit): the command line (credentials masked), the user, the commit of the vwm checkout."""
    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv and sys.argv[0] else "python"
    command = _SECRET_OPTION.sub(r"\1***", command)
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        user = "unknown"
    return {"mlflow.source.name": redact(command)[:500], "mlflow.source.type": "LOCAL", "mlflow.user": user,
            "mlflow.source.git.commit": git_commit(), "task": kind, "run_name": name}


def dataset_input(name: str, context: str, sources: list[str], *, roots: list[str],
                  profile: dict[str, Any] | None = None) -> dict[str, Any]:
    """A run's input as trackers log it: the config's ``roots`` (made absolute), how many files they hold,
    and a digest of the file list and ``profile`` that changes when a file is added, removed or renamed."""
    profile = {"files": len(sources), **(profile or {})}
    digest = hashlib.sha256("\n".join([*sorted(sources), json.dumps(profile, sort_keys=True)]).encode())
    absolute = [r if "://" in r or r == "synthetic" else str(Path(r).resolve()) for r in roots]
    return {"name": name, "context": context, "source": redact(json.dumps(absolute)), "digest": digest.hexdigest()[:16],
            "profile": profile}


def git_commit() -> str:
    """The commit of the vwm checkout a run comes from (``unknown`` outside a git checkout): a run's provenance."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
