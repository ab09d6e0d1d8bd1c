"""The Tracker interface, a no-op, and a JSON-lines tracker that needs no server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from vwm.config import TrackingConfig


class Tracker(Protocol):
    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None: ...
    def close(self, status: str = "FINISHED") -> None: ...
    def flush(self) -> None: ...  # send buffered metrics now
    def handle(self) -> dict: ...  # what a worker process needs to log into the same run


class NoopTracker:
    """For ranks other than 0 and for runs with tracking off."""

    def log_params(self, params):
        pass

    def log_metrics(self, metrics, step):
        pass

    def log_artifact(self, path, artifact_path=None):
        pass

    def close(self, status="FINISHED"):
        pass

    def flush(self):
        pass

    def handle(self):
        return {"backend": "none"}


class JsonlTracker:
    """Metrics as one JSON object per line in ``run_dir/metrics.jsonl``; params in ``params.json``."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._metrics = (self.run_dir / "metrics.jsonl").open("a")

    def log_params(self, params):
        (self.run_dir / "params.json").write_text(json.dumps(params, indent=1, sort_keys=True, default=str))

    def log_metrics(self, metrics, step):
        self._metrics.write(json.dumps({"step": step, **metrics}) + "\n")
        self._metrics.flush()

    def log_artifact(self, path, artifact_path=None):
        pass  # the run's files already live in run_dir; checkpoints stay where Ray stored them

    def close(self, status="FINISHED"):
        self._metrics.close()

    def flush(self):
        self._metrics.flush()

    def handle(self):
        return {"backend": "jsonl", "run_dir": str(self.run_dir)}


def make_tracker(cfg: TrackingConfig, run_dir: str | Path, *, run_name: str | None = None,
                 tags: dict[str, str] | None = None) -> Tracker:
    """A new run's tracker (on the driver, or the single process of a local run)."""
    if cfg.backend == "jsonl":
        return JsonlTracker(run_dir)
    if cfg.backend == "mlflow":
        from vwm.tracking.mlflow import MLflowTracker

        return MLflowTracker(cfg, run_name=run_name or Path(run_dir).name, tags=tags)
    return NoopTracker()


def attach_tracker(cfg: TrackingConfig, handle: dict, owner: bool = False) -> Tracker:
    """A tracker logging into the run that ``handle`` (from ``Tracker.handle()``) names: a worker's, or
    (``owner=True``) a resumed driver's, which ends the run when it closes."""
    if handle["backend"] == "jsonl":
        return JsonlTracker(handle["run_dir"])
    if handle["backend"] == "mlflow":
        from vwm.tracking.mlflow import MLflowTracker

        tracker = MLflowTracker(cfg, run_id=handle["run_id"], tracking_uri=handle["tracking_uri"])
        tracker.owns_run = owner
        return tracker
    return NoopTracker()
