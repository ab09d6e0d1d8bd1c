"""The end of a run on its tracking server — the final checkpoint logged, the world model registered, the
summary written, the run ended — bounded by ``tracking.publish_timeout_s`` and never fatal.

A server that stays down past the budget loses nothing: metric values it did not take are in the run
folder's ``unsent_metrics.jsonl``, and what is left to do in ``unpublished.json`` (the checkpoint to
register, the summary, the status to end the run with). ``vwm publish RUN_DIR``, or ``--resume`` of the
finished run, does it once the server is back.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from vwm.config import TrackingConfig
from vwm.tracking.credentials import redact, redact_all
from vwm.tracking.registry import make_registry
from vwm.tracking.tracker import Tracker, attach_tracker
from vwm.train import checkpoint as ckpt

log = logging.getLogger(__name__)

PENDING_FILE = "unpublished.json"
_RETRY_S = 2.0


class PublishError(RuntimeError):
    """The tracking server still cannot take what a run left to publish."""


def final_checkpoint(storage: str, folder: str, *, log_files: bool, description: str) -> dict:
    """What publishing needs to find a final checkpoint again, in this process or a later one: its run's
    storage (a folder, or a Ray storage URI with its query) and its folder name there."""
    return {"storage": storage, "folder": folder, "log_files": log_files, "description": description}


def publish_run(tracking: TrackingConfig, tracker: Tracker, run_dir: Path, *, checkpoint: dict | None,
                summary: dict[str, float] | None, status: str) -> str | None:
    """Register ``checkpoint`` (``final_checkpoint``), log ``summary``, end the run with
    ``status``; retry for ``tracking.publish_timeout_s``, then leave what is not done to ``vwm publish``.
    Returns the registered model's URI (None when nothing was registered)."""
    deadline = time.monotonic() + tracking.publish_timeout_s
    todo: dict[str, Any] = {"status": status}
    if checkpoint is not None:
        todo["checkpoint"] = checkpoint
    if summary:
        todo["summary"] = summary
    model_uri, error = None, None
    while True:
        try:
            model_uri = _do(tracking, tracker, todo, deadline) or model_uri
            _forget(run_dir)
            return model_uri
        except Exception as e:  # the server: down, timing out, refusing
            if error is None:
                log.warning("publishing to the tracking server failed (%s: %s); retrying for %g s",
                            type(e).__name__, redact(str(e))[:300], tracking.publish_timeout_s)
            error = e
        if time.monotonic() + _RETRY_S >= deadline:
            break
        time.sleep(_RETRY_S)
    try:  # what the tracker still holds goes to its spill file; telling the server the status fails again
        tracker.close(status=status, timeout_s=1.0)
    except Exception:
        pass
    _remember(run_dir, tracking, todo, error)
    what = "training is done and nothing is lost" if status == "FINISHED" else f"the run ended {status}"
    where = f" (final checkpoint: {redact(checkpoint['storage'])} {checkpoint['folder']})" if checkpoint else ""
    print(f"tracking server unreachable for {tracking.publish_timeout_s:g} s ({type(error).__name__}): {what}"
          f"{where}; when the server is back run: vwm publish {run_dir}", flush=True)
    return None


def complete(run_dir: str | Path, tracker: Tracker | None = None) -> str | None:
    """``vwm publish``: send the metrics and do what ``run_dir``'s end could not. Raises PublishError when
    the server still cannot take it (nothing is lost: run it again later)."""
    run_dir = Path(run_dir).resolve()
    pending_file = run_dir / PENDING_FILE
    if not pending_file.is_file():
        return None
    todo = json.loads(pending_file.read_text())
    tracking = TrackingConfig(**todo.pop("tracking"))
    todo.pop("error", None)
    try:
        if tracker is None:
            tracker = attach_tracker(tracking, json.loads((run_dir / "tracker.json").read_text()), owner=True)
        uri = _do(tracking, tracker, todo, time.monotonic() + tracking.publish_timeout_s)
    except Exception as e:
        _remember(run_dir, tracking, todo, e)  # without what this attempt did do (a model registered once)
        raise PublishError(f"tracking server still unreachable ({type(e).__name__}: {redact(str(e))[:200]}); "
                           f"nothing is lost: run vwm publish {run_dir} again later") from None
    _forget(run_dir)
    return uri


def _do(tracking: TrackingConfig, tracker: Tracker, todo: dict, deadline: float) -> str | None:
    """Each part removed from ``todo`` once done, so a retry does not repeat it (no second model version)."""
    uri = None
    sent = tracker.send_spilled()
    if sent:
        log.info("sent %d metric values an earlier attempt could not", sent)
    if "checkpoint" in todo:
        uri = _register(tracking, tracker, todo["checkpoint"])
        todo["model_uri"] = uri
        del todo["checkpoint"]
    if "summary" in todo:
        tracker.log_summary(todo["summary"])
        del todo["summary"]
    tracker.close(status=todo["status"], timeout_s=max(1.0, deadline - time.monotonic()))
    return uri or todo.get("model_uri")


def _register(tracking: TrackingConfig, tracker: Tracker, checkpoint: dict) -> str | None:
    uri = f"{checkpoint['storage'].partition('?')[0].rstrip('/')}/{checkpoint['folder']}"
    tracker.log_params({"checkpoint.final": uri})
    registry = make_registry(tracking, tracker.handle().get("tracking_uri"))
    log_files = tracking.log_checkpoints and checkpoint["log_files"]
    if registry is None and not log_files:
        return None
    with tempfile.TemporaryDirectory(prefix="vwm-publish-") as tmp:
        directory = _local_copy(checkpoint, Path(tmp))
        if log_files:
            tracker.log_artifact(directory, "checkpoint")
        artifact = directory / ckpt.ARTIFACT_DIR
        if registry is None or not artifact.is_dir():
            return None
        model_uri = registry.register(tracker.handle(), artifact, tracking.register_as, tracking.alias,
                                      description=model_card(artifact, checkpoint["description"], uri))
    print(f"registered {model_uri}" + (f" (alias {tracking.alias})" if tracking.alias else ""), flush=True)
    return model_uri


def model_card(artifact: Path, recipe: str, checkpoint_uri: str) -> str:
    """The registered version's description (Markdown, as MLflow's UI renders it): what the model is, what
    it takes, how it was made, where its full checkpoint is."""
    manifest = json.loads((artifact / "manifest.json").read_text())
    g, m = manifest.get("geometry", {}), manifest.get("model_config", {})
    megabytes = sum(f.stat().st_size for f in artifact.rglob("*") if f.is_file()) / 1e6
    lines = [f"**{manifest.get('kind', 'world model')}**: ViT encoder dim {m.get('dim')}, depth {m.get('depth')}, "
             f"heads {m.get('heads')} ({m.get('preset')}), {megabytes:.1f} MB",
             (f"- input: single {g.get('crop')}x{g.get('crop')} RGB frames, actions ({manifest.get('action_dim')}) "
              f"and states ({manifest.get('state_dim')}); predictor pool {manifest.get('ac', {}).get('pool')}"
              if manifest.get("kind") == "vjepa-ac" else
              f"- input: {g.get('frames')} frames of {g.get('crop')}x{g.get('crop')} RGB, patch {g.get('patch_size')}, "
              f"tubelet {g.get('tubelet_size')}, token grid {g.get('grid')}"),
             f"- {recipe}", f"- commit: {manifest.get('git_commit', 'unknown')}",
             f"- full checkpoint (optimizer state included): {redact(checkpoint_uri)}",
             "- load: `vwm.load_world_model(URI)` or `mlflow.pyfunc.load_model(URI)`"]
    if manifest.get("parent_uri"):
        lines.insert(1, f"- encoder from: {manifest['parent_uri']}")
    return "\n".join(lines)


def _local_copy(checkpoint: dict, tmp: Path) -> Path:
    """The checkpoint folder, or from object storage its world model only (what registration reads)."""
    storage, folder = checkpoint["storage"], checkpoint["folder"]
    if "://" not in storage:
        return Path(storage) / folder
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(storage)
    source = f"{path.rstrip('/')}/{folder}/{ckpt.ARTIFACT_DIR}"
    for info in fs.get_file_info(pafs.FileSelector(source, recursive=True, allow_not_found=True)):
        if info.type == pafs.FileType.File:
            target = tmp / ckpt.ARTIFACT_DIR / info.path[len(source) + 1:]
            target.parent.mkdir(parents=True, exist_ok=True)
            with fs.open_input_stream(info.path) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst)
    return tmp


def _remember(run_dir: Path, tracking: TrackingConfig, todo: dict, error: BaseException | None) -> None:
    record = {"tracking": redact_all(tracking.model_dump(mode="json")), **todo,
              "error": redact(f"{type(error).__name__}: {error}")[:500]}
    (run_dir / PENDING_FILE).write_text(json.dumps(record, indent=1))


def _forget(run_dir: Path) -> None:
    (run_dir / PENDING_FILE).unlink(missing_ok=True)
