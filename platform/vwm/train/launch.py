"""``run_pretrain``: the driver of distributed pretraining (Ray Data -> Ray Train + DeepSpeed -> MLflow)."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import ray
from ray.train import CheckpointConfig, FailureConfig, RunConfig as RayRunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from vwm.config import RunConfig
from vwm.configfile import flatten, to_yaml
from vwm.raycluster import connect
from vwm.tracking.tracker import attach_tracker, make_tracker
from vwm.train.distributed import ledger_name
from vwm.train.loop import train_loop_per_worker

log = logging.getLogger(__name__)


@dataclass
class PretrainResult:
    name: str
    storage_path: str
    checkpoint_path: str | None
    tracker: dict  # the tracker's handle: backend, run id, tracking URI
    model_uri: str | None  # models:/NAME@ALIAS when registered
    metrics: dict


def storage_root(path: str) -> str:
    return path if "://" in path else str(Path(path).resolve())


def run_name(cfg: RunConfig, resume: bool) -> str:
    """A fresh run gets a unique name (Ray silently resumes a reused one); ``resume`` takes the newest
    earlier run of this ``train.run_name`` under the storage path."""
    base, storage = cfg.train.run_name, cfg.dist.storage_path
    if resume and "://" not in storage:
        earlier = sorted((p for p in Path(storage_root(storage)).glob(f"{base}*") if p.is_dir()),
                         key=lambda p: p.stat().st_mtime)
        if earlier:
            return earlier[-1].name
        log.warning("--resume: no earlier run named %s* under %s; starting a fresh one", base, storage)
    elif resume:
        return base  # on object storage, name the run to resume exactly: --set train.run_name=NAME
    return f"{base}-{time.strftime('%Y%m%d-%H%M%S')}"


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _dataset_epochs(cfg: RunConfig, num_sources: int) -> int:
    """Passes over the shard list that surely cover the run (assuming as few as one video per file)."""
    if cfg.dist.dataset_epochs:
        return cfg.dist.dataset_epochs
    clips = cfg.train.steps * cfg.optim.grad_accumulation * cfg.data.batch_size * cfg.dist.num_workers
    return max(1, min(math.ceil(clips / max(1, num_sources * cfg.data.clips_per_video)) + 1, 10_000 // num_sources))


def run_pretrain(cfg: RunConfig, *, resume: bool = False, stop_at: int | None = None, callbacks: list | None = None,
                 tags: dict[str, str] | None = None, init_from: ray.train.Checkpoint | None = None) -> PretrainResult:
    """Train on Ray. ``stop_at`` ends this invocation after that many steps (as a preemption would), with
    schedules still laid out over ``train.steps``; ``resume=True`` continues the newest run of the name.
    ``init_from`` starts a fresh run from another run's checkpoint (its weights, optimizer state and step)."""
    cluster = connect()
    name = run_name(cfg, resume)
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"run_name": name})})
    run_dir = Path(cfg.train.output_dir).resolve() / name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    tags = {"git_commit": _git_commit(), "ray_address": cluster, "workers": str(cfg.dist.num_workers),
            "zero_stage": str(cfg.dist.zero_stage), "run_name": name, **(tags or {})}
    if init_from is not None:
        tags["init_from"] = init_from.path
    handle_file = run_dir / "tracker.json"
    if resume and handle_file.is_file():  # continue the same MLflow run
        tracker = attach_tracker(cfg.tracking, json.loads(handle_file.read_text()), owner=True)
    else:
        tracker = make_tracker(cfg.tracking, run_dir, run_name=name, tags=tags)
        tracker.log_params(flatten(cfg))
        tracker.log_artifact(run_dir / "config.yaml")
        handle_file.write_text(json.dumps(tracker.handle()))

    datasets = {}
    if cfg.data.source == "shards":
        from vwm.data.pipeline import build_dataset, skip_ledger
        from vwm.data.shards import list_sources

        epochs = _dataset_epochs(cfg, len(list_sources(cfg.data.paths, cfg.data.endpoint_url)))
        datasets["train"] = build_dataset(cfg.data, seed=cfg.train.seed, epochs=range(epochs),
                                          ledger=skip_ledger(ledger_name(cfg)))
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "tracker": tracker.handle(), "stop_at": stop_at,
                           "init_from": init_from},
        scaling_config=ScalingConfig(num_workers=cfg.dist.num_workers, use_gpu=cfg.dist.use_gpu,
                                     resources_per_worker={"CPU": cfg.dist.cpus_per_worker}),
        run_config=RayRunConfig(name=name, storage_path=storage_root(cfg.dist.storage_path),
                                failure_config=FailureConfig(max_failures=cfg.dist.max_failures),
                                checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
                                callbacks=callbacks),
        datasets=datasets,
    )
    status = "FAILED"
    try:
        result = trainer.fit()
        if result.error is not None:
            raise result.error
        model_uri = _publish(cfg, tracker, result)
        status = "FINISHED"
    except BaseException as e:
        if hasattr(tracker, "set_tags"):
            tracker.set_tags({"error": f"{type(e).__name__}: {e}"[:5000]})
        raise
    finally:
        tracker.close(status=status)
    ckpt_path = result.checkpoint.path if result.checkpoint else None
    return PretrainResult(name, storage_root(cfg.dist.storage_path), ckpt_path, tracker.handle(), model_uri,
                          dict(result.metrics or {}))


def _publish(cfg: RunConfig, tracker, result) -> str | None:
    """Log the final checkpoint (a reference when it lives on object storage) and register the model."""
    if result.checkpoint is None:
        return None
    tracker.log_params({"checkpoint.final": f"{result.checkpoint.filesystem.type_name}://{result.checkpoint.path}"})
    with result.checkpoint.as_directory() as d:
        d = Path(d)
        if cfg.tracking.log_checkpoints and "://" not in cfg.dist.storage_path:
            tracker.log_artifact(d, "checkpoint")
        if cfg.tracking.backend == "mlflow" and cfg.tracking.register_as and (d / "world_model").is_dir():
            uri = tracker.register_model(d / "world_model", cfg.tracking.register_as, cfg.tracking.alias)
            print(f"registered {uri}", flush=True)
            return uri
    return None
