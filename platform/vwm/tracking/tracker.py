"""The Tracker interface, a no-op, and a JSON-lines tracker that needs no server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from vwm.config import TrackingConfig


class Tracker(Protocol):
    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def log_artifact(self, path: str | Path) -> None: ...
    def close(self) -> None: ...


class NoopTracker:
    """For ranks other than 0 and for runs with tracking off."""

    def log_params(self, params):
        pass

    def log_metrics(self, metrics, step):
        pass

    def log_artifact(self, path):
        pass

    def close(self):
        pass


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

    def log_artifact(self, path):
        pass  # artifacts already live in run_dir

    def close(self):
        self._metrics.close()


def make_tracker(cfg: TrackingConfig, run_dir: str | Path) -> Tracker:
    if cfg.backend == "jsonl":
        return JsonlTracker(run_dir)
    return NoopTracker()
