"""``run_sweep``: Ray Tune over TorchTrainer trials (the Train V2 pattern: a Tune function wraps a trainer).

One MLflow parent run per sweep holds the space and the best config; every trial is a nested child run.
Trials report ``eval/rankme`` (label-free: JEPA losses do not compare across masking configs) at eval
steps, so ASHA can stop weak ones early. A failing trial is marked failed with its error; the sweep goes on.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from vwm.config import ConfigError, load_config, to_yaml
from vwm.raycluster import connect
from vwm.tracking.tracker import make_tracker
from vwm.tune.space import SweepConfig, check_space, override, param_space

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


def _trial(config: dict, *, sweep: SweepConfig, name: str, parent: dict) -> None:
    from vwm.train.launch import run_pretrain

    sampled = config["space"]
    trial_id = tune.get_context().get_trial_id()
    try:
        cfg = load_config(sweep.base, [*sweep.overrides, *(override(k, v) for k, v in sampled.items()),
                                       f"train.run_name={name}-{trial_id}"])
    except ConfigError as e:
        raise ValueError(f"trial {trial_id}: sampled values {sampled} are rejected: {e}") from None
    tags = {"mlflow.parentRunId": parent["run_id"], "sweep": name, "trial_id": trial_id} \
        if parent.get("backend") == "mlflow" else {"sweep": name, "trial_id": trial_id}
    run_pretrain(cfg, callbacks=[TuneReportCallback()], tags=tags)


def _remove_orphan_groups(before: set[str]) -> None:
    """Trials that ASHA stops can leave their trainer's placement group behind (seen with Ray 2.60), which
    holds CPUs for good. Once fit() has returned no trial of this sweep is alive, so groups created since
    it began and still standing are such orphans."""
    from ray.util.placement_group import PlacementGroup

    for group_id, info in ray.util.placement_group_table().items():
        if group_id not in before and info.get("state") == "CREATED":
            log.warning("removing placement group %s left by a stopped trial", group_id)
            ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(group_id))))


def run_sweep(sweep: SweepConfig) -> SweepResult:
    check_space(sweep)  # unknown keys fail here, before any trial
    base = load_config(sweep.base, sweep.overrides)
    if not base.train.eval_every and sweep.metric.startswith("eval/"):
        raise ConfigError(f"sweep {sweep.name}: metric {sweep.metric} needs train.eval_every in the base config")
    connect()
    name = f"{sweep.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = Path(sweep.output_dir).resolve() / name
    out.mkdir(parents=True, exist_ok=True)
    parent = make_tracker(base.tracking, out, run_name=name, tags={"sweep": name, "kind": "sweep"})
    parent.log_params({"sweep.space": json.dumps({k: v.model_dump() for k, v in sweep.space.items()})[:6000],
                       "sweep.search": sweep.search, "sweep.scheduler": sweep.scheduler.kind,
                       "sweep.metric": sweep.metric, "sweep.mode": sweep.mode, "sweep.base": sweep.base})
    scheduler = (ASHAScheduler(time_attr="training_iteration", grace_period=sweep.scheduler.grace_period,
                               reduction_factor=sweep.scheduler.reduction_factor, max_t=10_000)
                 if sweep.scheduler.kind == "asha" else FIFOScheduler())
    search_alg = None
    if sweep.search == "optuna":
        try:
            from ray.tune.search.optuna import OptunaSearch
        except ImportError:
            raise ConfigError("search=optuna needs the optuna package: pip install optuna") from None
        search_alg = OptunaSearch()
    # the trial function only waits on its TorchTrainer: half a CPU, so that on a small node the next
    # trial's workers fit even while a stopped trial's resources are still being released
    trainable = tune.with_resources(tune.with_parameters(_trial, sweep=sweep, name=name, parent=parent.handle()),
                                    {"cpu": sweep.trial_cpus})
    tuner = tune.Tuner(
        trainable,
        param_space=param_space(sweep),
        tune_config=tune.TuneConfig(metric=sweep.metric, mode=sweep.mode, scheduler=scheduler,
                                    search_alg=search_alg, num_samples=sweep.num_samples,
                                    max_concurrent_trials=sweep.max_concurrent_trials),
        run_config=tune.RunConfig(name=name, storage_path=str(out / "tune")),
    )
    status = "FAILED"
    groups_before = set(ray.util.placement_group_table())
    try:
        results = tuner.fit()
        _remove_orphan_groups(groups_before)
        errored = sum(r.error is not None for r in results)
        best = results.get_best_result(metric=sweep.metric, mode=sweep.mode, filter_nan_and_inf=True)
        best_overrides = best.config["space"]
        best_cfg = load_config(sweep.base, [*sweep.overrides, *(override(k, v) for k, v in best_overrides.items())])
        best_path = out / "best.yaml"
        best_path.write_text(to_yaml(best_cfg))
        parent.log_artifact(best_path)
        best_metric = (best.metrics or {}).get(sweep.metric)
        if best_metric is not None:
            parent.log_metrics({f"best/{sweep.metric}": best_metric}, 0)
        parent.log_params({"best." + k: v for k, v in best_overrides.items()})
        if hasattr(parent, "mark_stopped_children"):
            stopped = {r.metrics.get("trial_id") for r in results if r.error is None and r.metrics}
            parent.mark_stopped_children(stopped)
        status = "FINISHED"
    finally:
        parent.close(status=status)
    print(f"sweep {name}: {len(results)} trials ({errored} failed); best {sweep.metric}={best_metric} with "
          f"{best_overrides}; best config {best_path}")
    iterations = [int((r.metrics or {}).get("training_iteration", 0)) for r in results]
    return SweepResult(name, best_overrides, best_metric, best_path, parent.handle(), len(results), errored,
                       iterations)
