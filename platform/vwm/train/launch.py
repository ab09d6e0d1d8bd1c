"""``run_training``: the one driver of every training job, in-process (``local=True``) or on Ray Train.

Both paths share the run folder (``train.output_dir/NAME``: resolved config, tracker handle, in-process
checkpoints), the run-naming scheme, the checkpoint writer and reader, resume with the data position, and
publishing (checkpoint logged, world model registered). A job supplies a task class (``vwm.tasks``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from vwm.config import TrainerConfig, TrainConfig, with_overrides
from vwm.configfile import flatten, to_yaml
from vwm.tracking.credentials import redact, redact_all, secure_config
from vwm.tracking.registry import pin
from vwm.tracking.tracker import Tracker, attach_tracker, make_tracker, run_tags
from vwm.train import checkpoint as ckpt
from vwm.train.preflight import preflight
from vwm.train.publish import complete, final_checkpoint, publish_run
from vwm.train.trainer import RunEnv, RunSummary, Trainer, resolve_device, seed_everything

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    name: str
    run_dir: Path
    checkpoint_path: str | None  # the final checkpoint (a path inside the storage filesystem)
    tracker: dict  # the tracker's handle: backend, run id, tracking URI
    model_uri: str | None  # models:/NAME/VERSION when registered
    metrics: dict  # the last report: step, train/loss and any eval metrics
    summary: RunSummary | None = None  # in-process runs: every loss and monitor of this invocation


@dataclass
class Run:
    name: str
    dir: Path
    cfg: TrainerConfig  # with train.run_name set to ``name``
    tracker: Tracker
    provenance: dict
    inputs: list[dict]  # what the task said it reads (``Task.check_inputs``)


def storage_root(path: str) -> str:
    return path if "://" in path else str(Path(path).resolve())


def run_storage(storage: str, name: str) -> str:
    """``storage/name``, keeping a Ray storage URI's query (``?endpoint_override=...``) at the end."""
    base, sep, query = storage_root(storage).partition("?")
    return f"{base.rstrip('/')}/{name}{sep}{query}"


def run_name(cfg: TrainConfig, resume: bool) -> str:
    """A fresh run: ``RUN_NAME-YYYYmmdd-HHMMSS`` (``-1``, ``-2``... if taken), never an earlier run's folder.
    ``resume``: the newest run folder under ``train.output_dir`` named ``RUN_NAME`` or ``RUN_NAME-*``."""
    root, base = Path(cfg.output_dir).resolve(), cfg.run_name
    if resume:
        earlier = sorted((p for p in root.glob(f"{base}*") if p.is_dir() and (p.name == base or p.name.startswith(
            base + "-")) and (p / "config.yaml").is_file()), key=lambda p: p.stat().st_mtime)
        if earlier:
            return earlier[-1].name
        log.warning("--resume: no earlier run named %s* under %s; starting a fresh one", base, root)
    stamp = f"{base}-{time.strftime('%Y%m%d-%H%M%S')}"
    name, n = stamp, 0
    while (root / name).exists():
        n += 1
        name = f"{stamp}-{n}"
    return name


def open_run(cfg: TrainerConfig, *, kind: str, resume: bool, tags: dict[str, str] | None = None,
             inputs: list[dict] | None = None, local: bool = False) -> Run:
    """Name the run, make its folder, write the resolved config, start (or on resume, re-attach) its tracker;
    a new run logs the params that apply to it and its ``inputs``."""
    name = run_name(cfg.train, resume)
    cfg = with_overrides(cfg, {"train.run_name": name})
    run_dir = Path(cfg.train.output_dir).resolve() / name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(redact(to_yaml(cfg)))
    system = run_tags(kind, name)
    provenance = {"git_commit": system["mlflow.source.git.commit"]}
    handle_file = run_dir / "tracker.json"
    if resume and handle_file.is_file():  # continue the same tracked run
        tracker = attach_tracker(cfg.tracking, json.loads(handle_file.read_text()), owner=True)
        tracker.set_tags({"error": None, "interrupted": None})  # what ended the last attempt no longer holds
    else:
        tracker = make_tracker(cfg.tracking, run_dir, run_name=name, tags={**system, **(tags or {})})
        unused = cfg.unused_keys(local)
        tracker.log_params(redact_all({k: v for k, v in flatten(cfg).items() if not k.startswith(unused)}))
        if inputs:
            try:
                tracker.log_inputs(inputs)
            except Exception as e:  # a record about the run is not worth the run
                log.warning("could not log the run's inputs (%s: %s)", type(e).__name__, redact(str(e))[:200])
        tracker.log_artifact(run_dir / "config.yaml")
        handle_file.write_text(json.dumps(redact_all(tracker.handle())))
    return Run(name, run_dir, cfg, tracker, provenance, inputs or [])


def run_training(cfg: TrainerConfig, task_cls, *, local: bool = False, resume: bool = False,
                 stop_at: int | None = None, progress: bool = True, callbacks: list | None = None,
                 tags: dict[str, str] | None = None, init_from=None) -> TrainResult:
    """Train ``task_cls`` on ``cfg``. ``stop_at`` ends this invocation after that many steps (as a preemption
    would), schedules still laid out over ``train.steps``; ``resume=True`` continues the newest run of the
    name. ``init_from`` (Ray only) starts a fresh run from another run's checkpoint (PBT's clones)."""
    cfg = secure_config(cfg)  # before Ray starts: its workers inherit the environment the credentials move to
    if resume and cfg.train.init_weights:  # the version the run started from, not the one an alias names now
        cfg = with_overrides(cfg, {"train.init_weights": _started_from(cfg) or cfg.train.init_weights})
    inputs = preflight(cfg, task_cls, local=local)
    if cfg.train.init_weights:  # an alias pinned to its version now: every rank loads the same one
        cfg = with_overrides(cfg, {"train.init_weights": pin(cfg.train.init_weights, cfg.tracking.tracking_uri)})
    if not local:
        from vwm.raycluster import check_capacity, connect

        address = connect()
        d = cfg.dist  # before the run opens: workers that cannot be placed would wait forever
        check_capacity(d.num_workers, d.cpus_per_worker, 1 if _use_gpu(cfg.train.device) else 0, d.wait_for_nodes_s)
        tags = {"ray_address": address, "workers": str(cfg.dist.num_workers),
                "zero_stage": str(cfg.dist.zero_stage), **(tags or {})}
        if init_from is not None:
            tags["init_from"] = init_from.path
    run = open_run(cfg, kind=task_cls.kind, resume=resume, tags=tags, inputs=inputs, local=local)
    done = _finished_step(run, local) if resume else None
    if done is not None:
        print(f"run {run.name} is already at step {done} of train.steps={cfg.train.steps}: nothing to resume "
              "(raise train.steps to train it further)", flush=True)
        model_uri = complete(run.dir, run.tracker)  # what a tracking outage at its end left undone, if anything
        if model_uri is None:
            run.tracker.close(status="FINISHED")
        return TrainResult(run.name, run.dir, None, run.tracker.handle(), model_uri, {"step": done})
    status, result, final = "FAILED", None, None
    try:
        if local:
            result, final = _fit_local(run, task_cls, resume=resume, stop_at=stop_at, progress=progress)
        else:
            result, final = _fit_ray(run, task_cls, resume=resume, stop_at=stop_at, callbacks=callbacks,
                                     init_from=init_from, progress=progress)
        status = "FINISHED"
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C; Ray Train's own SIGINT handler ends fit() with SystemExit
        status = "KILLED"
        _tag(run, {"interrupted": time.strftime("%Y-%m-%d %H:%M:%S")})
        print(f"\ninterrupted: run {run.name} stopped; its checkpoints are kept. Continue it with the same "
              "command and --resume", flush=True)
        raise KeyboardInterrupt from None
    except BaseException as e:
        _tag(run, {"error": f"{type(e).__name__}: {e}"[:5000]})
        raise
    finally:
        summary = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))} if result else None
        model_uri = publish_run(cfg.tracking, run.tracker, run.dir, checkpoint=final, summary=summary,
                                status=status)
    result.model_uri = model_uri
    return result


def _started_from(cfg: TrainerConfig) -> str | None:
    """``train.init_weights`` as the newest run of this name recorded it (pinned when it started)."""
    from vwm.configfile import load_config

    folder = Path(cfg.train.output_dir).resolve() / run_name(cfg.train, resume=True) / "config.yaml"
    if not folder.is_file():
        return None
    try:
        return load_config(folder, model=type(cfg)).train.init_weights
    except Exception:  # an unreadable record: the configured value stands
        return None


def _tag(run: Run, tags: dict[str, str]) -> None:
    """Tags saying how a run ended; a tracking server that is down then must not hide the real error."""
    try:
        run.tracker.set_tags(tags)
    except Exception as e:
        log.warning("could not tag run %s with %s (%s)", run.name, ", ".join(tags), type(e).__name__)


def _finished_step(run: Run, local: bool) -> int | None:
    """The newest checkpoint's step when it is the last one: resuming a finished run must not train again
    (or register another model version)."""
    root = str(run.dir / "checkpoints") if local else run_storage(run.cfg.dist.storage_path, run.name)
    meta = ckpt.latest_meta(root)
    return meta["step"] if meta and meta["step"] >= run.cfg.train.steps else None


def _fit_local(run: Run, task_cls, *, resume: bool, stop_at: int | None,
               progress: bool) -> tuple[TrainResult, dict | None]:
    cfg = run.cfg
    device, autocast_dtype = resolve_device(cfg.train)
    seed_everything(cfg.train.seed)
    task = task_cls(cfg, rank=0, device=device, run_name=run.name, provenance=run.provenance)
    from vwm.train.engine import LocalEngine

    engine = LocalEngine(task.build(), cfg.optim, device)
    root = run.dir / "checkpoints"
    ckpt.sweep_temp(root)  # a save killed midway left its temporary folder
    start_step, position = 0, None
    latest = ckpt.latest_checkpoint(root) if resume else None
    if latest is not None:
        start_step, position = ckpt.read_checkpoint(latest, engine, task, rank=0)
        log.info("resumed from %s at step %d", latest, start_step)
    batches, skipped_videos = task.batches(start_step * cfg.optim.grad_accumulation, position, None)
    sink = ckpt.LocalSink(root, engine, task, keep=cfg.train.keep_checkpoints, total_steps=cfg.train.steps)
    env = RunEnv(rank=0, device=device, autocast_dtype=autocast_dtype, tracker=run.tracker, sink=sink,
                 skipped_videos=skipped_videos, progress="bar" if progress else "off", name=run.name,
                 restored=latest is not None)
    end = cfg.train.steps if stop_at is None else min(stop_at, cfg.train.steps)
    summary = Trainer(cfg, task, engine, env, run_dir=run.dir).fit(batches, start_step=start_step, end_step=end)
    final = None  # an invocation stopped early (stop_at) leaves the publishing to the one that finishes
    if summary.last_checkpoint is not None and summary.final_step >= cfg.train.steps:
        final = final_checkpoint(str(root), summary.last_checkpoint.name, log_files=True,
                                 description=recipe(run, summary.final_step, workers=1,
                                                    engine=f"in-process on {device.type}",
                                                    precision="bf16" if autocast_dtype else "fp32"))
    metrics = {"step": summary.final_step, "train/loss": summary.losses[-1] if summary.losses else float("nan")}
    return TrainResult(run.name, run.dir, str(summary.last_checkpoint) if summary.last_checkpoint else None,
                       run.tracker.handle(), None, metrics, summary), final


def recipe(run: Run, step: int, *, workers: int, engine: str, precision: str) -> str:
    """What a run read and how it trained, for its model card."""
    cfg = run.cfg
    data, o = getattr(cfg, "data", None), cfg.optim
    batch = f"batch {data.batch_size} x {workers} worker(s) x {o.grad_accumulation} accumulation" if data else ""
    read = "; ".join(f"{i['name']} {i['source']} ({i['profile']['files']} files, digest {i['digest']})"
                     for i in run.inputs)
    return (f"data: {read or 'none recorded'}\n- recipe: run {run.name}, {step} steps, {batch}, lr {o.lr.schedule} "
            f"peak {o.lr.peak:g}, precision {precision}, {engine}")


def _use_gpu(device: str) -> bool:
    """train.device=auto: GPU workers where the cluster has GPUs (the driver itself may have none)."""
    if device != "auto":
        return device == "cuda"
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def _fit_ray(run: Run, task_cls, *, resume: bool, stop_at: int | None, callbacks: list | None,
             init_from, progress: bool) -> tuple[TrainResult, dict | None]:
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig as RayRunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from vwm.train.distributed import train_loop_per_worker

    cfg = run.cfg
    position = None
    if resume:  # start the data where the checkpoint Ray will restore stopped reading
        meta = ckpt.latest_meta(run_storage(cfg.dist.storage_path, run.name))
        position = meta["data_position"]["position"] if meta else None
    dataset = task_cls.dataset(cfg, run.name, position)
    use_gpu = _use_gpu(cfg.train.device)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "task": task_cls, "tracker": run.tracker.handle(),
                           "stop_at": stop_at, "init_from": init_from, "provenance": run.provenance,
                           "has_dataset": dataset is not None, "progress": "lines" if progress else "off"},
        scaling_config=ScalingConfig(num_workers=cfg.dist.num_workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cfg.dist.cpus_per_worker}),
        run_config=RayRunConfig(name=run.name, storage_path=storage_root(cfg.dist.storage_path),
                                failure_config=FailureConfig(max_failures=cfg.dist.max_failures,
                                                             controller_failure_limit=cfg.dist.start_retries),
                                checkpoint_config=CheckpointConfig(num_to_keep=cfg.train.keep_checkpoints),
                                callbacks=callbacks,
                                # Ray Train's INFO lines (each report of each rank, worker-group start-up)
                                # would bury rank 0's progress lines; its warnings and errors still show
                                logging_config=LoggingConfig(log_level="WARNING")),
        datasets={"train": dataset} if dataset is not None else {},
    )
    result = trainer.fit()
    registered = [c.path for c, _ in result.best_checkpoints or []] + ([result.checkpoint.path] if result.checkpoint
                                                                       else [])
    if registered:
        ckpt.prune_unregistered(run_storage(cfg.dist.storage_path, run.name), registered)
    if result.error is not None:
        raise result.error
    final, step = None, (result.metrics or {}).get("step", cfg.train.steps)
    if result.checkpoint is not None and step >= cfg.train.steps:
        final = final_checkpoint(run_storage(cfg.dist.storage_path, run.name), Path(result.checkpoint.path).name,
                                 log_files="://" not in cfg.dist.storage_path,
                                 description=recipe(run, step, workers=cfg.dist.num_workers,
                                                    engine=f"DeepSpeed ZeRO-{cfg.dist.zero_stage} on "
                                                           f"{'cuda' if use_gpu else 'cpu'}",
                                                    precision="bf16" if cfg.train.precision == "bf16" or (
                                                        cfg.train.precision == "auto" and use_gpu) else "fp32"))
    return TrainResult(run.name, run.dir, result.checkpoint.path if result.checkpoint else None, run.tracker.handle(),
                       None, dict(result.metrics or {})), final
