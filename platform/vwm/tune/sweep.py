"""``run_sweep``: Ray Tune over TorchTrainer trials (the Train V2 pattern: a Tune function wraps a trainer).

One MLflow parent run per sweep holds the space and the best config; every trial is a nested child run.
Trials report ``eval/rankme`` (label-free: JEPA losses do not compare across masking configs) or
``eval/probe_acc`` at eval steps, so ASHA can stop weak ones early and PBT can clone strong ones' checkpoints.
A failing trial is marked failed with its error; the sweep goes on. See docs/sweeps.md.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining
from ray.util.queue import Empty, Queue

from vwm.config import ConfigError, PretrainConfig, with_overrides
from vwm.configfile import load_config, to_yaml
from vwm.raycluster import connect
from vwm.raycompat import TrainToTune, check_ray_version, remove_orphaned_groups
from vwm.tracking.credentials import secure_config
from vwm.tracking.tracker import make_tracker, nested_under, run_tags
from vwm.tune.space import SweepConfig, check_space, decode_sample, distribution, override, param_space

log = logging.getLogger(__name__)


@dataclass
class SweepResult:
    name: str
    best_overrides: dict
    best_metric: float | None
    best_config_path: Path
    parent: dict  # the parent run's tracker handle
    trials: int
    errored: int
    iterations: list[int]  # reports per trial: fewer than the others means the scheduler stopped it early


def _trial(config: dict, *, sweep: SweepConfig, base_path: Path, name: str, parent: dict, out: Path,
           sweep_source: str) -> None:
    """One trial: a TorchTrainer run in a thread, its reports relayed to Tune from this (the trial's) thread.
    ``base_path`` is the sweep's base config with its paths made absolute (Tune runs trials in their own
    folders)."""
    from vwm.tasks.jepa import run_pretrain

    sampled = decode_sample(sweep, config["space"])
    trial_id = tune.get_context().get_trial_id()
    # a trial runs in a Ray worker, whose command line is Ray's: the sweep's is the run's source
    tags = {"sweep": name, "trial_id": trial_id, **nested_under(parent), "mlflow.source.name": sweep_source}
    try:
        cfg = load_config(base_path, [*(override(k, v) for k, v in sampled.items()),
                                      f"train.run_name={name}-{trial_id}"])
    except ConfigError as e:
        error = f"trial {trial_id}: sampled values {sampled} are rejected: {e}"
        _record_rejected(load_config(base_path), out / trial_id, f"{name}-{trial_id}", tags,
                         sampled, error)
        raise ValueError(error) from None
    init_from = tune.get_checkpoint()  # set when PBT restarts this trial from a better trial's checkpoint
    if init_from is not None:
        with init_from.as_directory() as d:
            cloned_step = json.loads((Path(d) / "meta.json").read_text())["step"]
        if cloned_step >= cfg.train.steps:  # PBT cloned a finished trial at its last report: nothing to train
            return
    relay = Queue(maxsize=1, actor_options={"num_cpus": 0})
    outcome: dict = {}

    def fit() -> None:
        try:
            run_pretrain(cfg, callbacks=[TrainToTune(relay)], tags=tags, init_from=init_from, progress=False)
        except BaseException as e:  # re-raised in the trial's thread, so Tune marks the trial failed
            outcome["error"] = e

    trainer = threading.Thread(target=fit, name=f"trainer-{trial_id}", daemon=True)
    trainer.start()
    while trainer.is_alive() or not relay.empty():
        try:
            metrics, checkpoint = relay.get(timeout=0.5)
        except Empty:
            continue
        # only PBT clones checkpoints: other schedulers need no copy of each one in Tune's storage
        keep = checkpoint is not None and sweep.scheduler.kind == "pbt"
        tune.report(metrics, checkpoint=tune.Checkpoint(checkpoint.path, checkpoint.filesystem) if keep else None)
    if "error" in outcome:
        raise outcome["error"]


def _pinned(base: PretrainConfig, parent: dict) -> PretrainConfig:
    """The base with every local path made absolute where the sweep was started: trials run in Tune's
    trial folders, where relative paths (outputs/, sqlite:///mlruns.db, shard folders) meant other places."""
    def pin(path: str) -> str:
        return path if "://" in path else str(Path(path).resolve())

    return with_overrides(base, {
        "data.paths": [pin(p) for p in base.data.paths], "train.output_dir": pin(base.train.output_dir),
        "monitor.probe.paths": [pin(p) for p in base.monitor.probe.paths],
        "dist.storage_path": pin(base.dist.storage_path),
        "tracking.tracking_uri": parent.get("tracking_uri", base.tracking.tracking_uri),
        # the experiment as the driver resolved it ($MLFLOW_EXPERIMENT_NAME may not reach trial processes)
        "tracking.experiment": base.tracking.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "vwm"})


def _record_rejected(base, run_dir: Path, run_name: str, tags: dict, sampled: dict, error: str) -> None:
    """A trial whose sampled values fail validation never reaches run_pretrain: give it a run anyway,
    failed, with its values and the reason, so the sweep's runs show every trial."""
    tracker = make_tracker(base.tracking, run_dir, run_name=run_name, tags=tags)
    tracker.log_params(sampled)
    tracker.set_tags({"error": error[:5000]})
    tracker.close(status="FAILED")


class _SweepMonitor(tune.Callback):
    """Frees stopped trials' placement groups while the sweep runs (on a small cluster the next trial, or a
    PBT clone, would otherwise wait for their CPUs forever) and notes which trials errored."""

    def __init__(self, every_s: float = 2.0):
        self.every_s, self._last = every_s, 0.0
        self.errored: set[str] = set()

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        if time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            remove_orphaned_groups()

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self.errored.add(trial.trial_id)


def _clip_to_space(config: dict, *, space: dict) -> dict:
    """PBT perturbs a continuous value by x0.8 or x1.2 with no regard for its range (an EMA momentum of
    0.99 became 1.19): bring it back inside the sweep file's [low, high]."""
    for key, spec in space.items():
        if spec.kind in ("uniform", "loguniform"):
            config["space"][key] = min(max(config["space"][key], spec.low), spec.high)
    return config


def _scheduler(sweep: SweepConfig):
    s = sweep.scheduler
    if s.kind == "asha":
        return ASHAScheduler(time_attr="training_iteration", grace_period=s.grace_period,
                             reduction_factor=s.reduction_factor, max_t=10_000)
    if s.kind == "pbt":
        return PopulationBasedTraining(
            time_attr="training_iteration", perturbation_interval=s.perturbation_interval,
            quantile_fraction=s.quantile_fraction, resample_probability=s.resample_probability,
            hyperparam_mutations={"space": {k: distribution(v, sweep.search) for k, v in sweep.space.items()}},
            custom_explore_fn=functools.partial(_clip_to_space, space=sweep.space))
    return FIFOScheduler()


def run_sweep(sweep: SweepConfig) -> SweepResult:
    check_ray_version()
    check_space(sweep)  # unknown keys fail here, before any trial
    # credentials in the tracking URI move to the environment before Ray starts; base.yaml holds none
    base = secure_config(load_config(sweep.base, sweep.overrides))
    if not base.train.eval_every and sweep.metric.startswith("eval/"):
        raise ConfigError(f"sweep {sweep.name}: metric {sweep.metric} needs train.eval_every in the base config")
    if sweep.scheduler.kind == "pbt" and base.train.checkpoint_every != base.train.eval_every:
        raise ConfigError(f"sweep {sweep.name}: scheduler pbt clones the checkpoint of each report, so the base "
                          f"needs train.checkpoint_every == train.eval_every (now {base.train.checkpoint_every} and "
                          f"{base.train.eval_every}); add train.checkpoint_every={base.train.eval_every} to overrides")
    search_alg = None
    if sweep.search == "optuna":
        try:
            from ray.tune.search.optuna import OptunaSearch
            import optuna  # noqa: F401  (OptunaSearch imports, but only fails on use without it)
        except ImportError:
            raise ConfigError("search: optuna needs the optuna package: pip install 'vwm[optuna]'") from None
        search_alg = OptunaSearch()  # TPE
    connect()
    name = f"{sweep.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = Path(sweep.output_dir).resolve() / name
    out.mkdir(parents=True, exist_ok=True)
    parent = make_tracker(base.tracking, out, run_name=name, tags={**run_tags("sweep", name), "sweep": name,
                                                                   "kind": "sweep"})
    parent.log_params({"sweep.space": json.dumps({k: v.model_dump() for k, v in sweep.space.items()})[:6000],
                       "sweep.search": sweep.search, "sweep.scheduler": sweep.scheduler.kind,
                       "sweep.metric": sweep.metric, "sweep.mode": sweep.mode, "sweep.base": sweep.base})
    scheduler = _scheduler(sweep)
    base_path = out / "base.yaml"
    base_path.write_text(to_yaml(_pinned(base, parent.handle())))
    # the trial function only waits on its TorchTrainer: half a CPU, so that on a small node the next
    # trial's workers fit even while a stopped trial's resources are still being released
    trainable = tune.with_resources(
        tune.with_parameters(_trial, sweep=sweep, base_path=base_path, name=name, parent=parent.handle(), out=out,
                             sweep_source=run_tags("sweep", name)["mlflow.source.name"]),
        {"cpu": sweep.trial_cpus})
    monitor = _SweepMonitor()
    tuner = tune.Tuner(
        trainable,
        param_space=param_space(sweep),
        tune_config=tune.TuneConfig(metric=sweep.metric, mode=sweep.mode, scheduler=scheduler,
                                    search_alg=search_alg, num_samples=sweep.num_samples,
                                    max_concurrent_trials=sweep.max_concurrent_trials,
                                    reuse_actors=False),  # a stopped trial's actor must go with its trainer
        # no num_to_keep: PBT clones a checkpoint while its trial runs on, and with num_to_keep=4 a donor's
        # was pruned before its clone read it (only PBT sweeps hand checkpoints to Tune at all)
        run_config=tune.RunConfig(name=name, storage_path=str(out / "tune"), callbacks=[monitor]),
    )
    status = "FAILED"
    try:
        results = tuner.fit()
        remove_orphaned_groups()
        errored = sum(r.error is not None for r in results)
        best = results.get_best_result(metric=sweep.metric, mode=sweep.mode, filter_nan_and_inf=True)
        best_overrides = decode_sample(sweep, best.config["space"])
        best_cfg = load_config(sweep.base, [*sweep.overrides, *(override(k, v) for k, v in best_overrides.items())])
        best_path = out / "best.yaml"
        best_path.write_text(to_yaml(best_cfg))
        parent.log_artifact(best_path)
        best_metric = (best.metrics or {}).get(sweep.metric)
        if best_metric is not None:
            parent.log_metrics({f"best/{sweep.metric}": best_metric}, 0)
        parent.log_params({"best." + k: v for k, v in best_overrides.items()})
        # Tune's ids, not results' metrics: a PBT clone's result carries the donor's trial_id
        parent.end_stopped_children(monitor.errored)
        status = "FINISHED"
    finally:
        parent.close(status=status)
    print(f"sweep {name}: {len(results)} trials ({errored} failed); best {sweep.metric}={best_metric} with "
          f"{best_overrides}; best config {best_path}")
    iterations = [int((r.metrics or {}).get("training_iteration", 0)) for r in results]
    return SweepResult(name, best_overrides, best_metric, best_path, parent.handle(), len(results), errored,
                       iterations)
