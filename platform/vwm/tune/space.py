"""Sweep files: a base pretrain config, a search space over its dotted keys, the search and the scheduler.

Every key of the space is checked against the base config before any trial starts.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import Field, model_validator

from vwm.config import ConfigError, _Strict
from vwm.configfile import load_config


class ParamSpec(_Strict):
    """``choice``/``grid`` take ``values``; ``uniform``/``loguniform`` take ``low`` and ``high``."""

    kind: Literal["choice", "grid", "uniform", "loguniform"]
    values: list[Any] | None = None
    low: float | None = None
    high: float | None = None

    @model_validator(mode="after")
    def _shape(self) -> ParamSpec:
        if self.kind in ("choice", "grid") and not self.values:
            raise ValueError(f"{self.kind} needs a non-empty values list")
        if self.kind in ("uniform", "loguniform"):
            if self.low is None or self.high is None or not self.low < self.high:
                raise ValueError(f"{self.kind} needs low < high")
            if self.kind == "loguniform" and self.low <= 0:
                raise ValueError("loguniform needs low > 0")
        return self


class SchedulerConfig(_Strict):
    kind: Literal["asha", "fifo", "pbt"] = "asha"
    grace_period: int = Field(1, ge=1, description="ASHA: reports before it may stop a trial")
    reduction_factor: float = Field(2.0, gt=1, description="ASHA")
    perturbation_interval: int = Field(1, ge=1, description="PBT: reports between exploit/explore steps")
    quantile_fraction: float = Field(0.25, gt=0, le=0.5, description="PBT: bottom share that clones the top")
    resample_probability: float = Field(0.25, ge=0, le=1, description="PBT: resample instead of perturb")


# PBT clones a better trial's checkpoint into a worse one with changed values: only keys that leave the
# parameters' shapes alone (optimizer schedules, the blocks of existing mask sets) can change mid-run.
_PBT_KEY = re.compile(r"^(optim\.|mask\.sets\.\d+\.)")


class SweepConfig(_Strict):
    name: str = "sweep"
    base: str = Field(description="the pretrain config every trial starts from")
    overrides: list[str] = Field(default_factory=list, description="--set style changes to the base for all trials")
    space: dict[str, ParamSpec]
    num_samples: int = Field(4, ge=1, description="trials (random search) or repeats of the grid")
    search: Literal["random", "grid", "optuna"] = "random"
    scheduler: SchedulerConfig = SchedulerConfig()
    metric: str = "eval/rankme"
    mode: Literal["max", "min"] = "max"
    max_concurrent_trials: int = Field(1, ge=1)
    trial_cpus: float = Field(0.5, gt=0, description="CPUs held by each trial's driver function (it only waits)")
    output_dir: str = "outputs/sweeps"

    @model_validator(mode="after")
    def _search_and_scheduler(self) -> SweepConfig:
        if self.search == "grid" and any(p.kind not in ("grid", "choice") for p in self.space.values()):
            raise ValueError("search=grid needs every space entry to be grid or choice")
        if self.scheduler.kind == "pbt":
            if self.search != "random":
                raise ValueError("scheduler pbt samples and mutates the space itself: use search: random")
            for key, spec in self.space.items():
                if spec.kind == "grid":
                    raise ValueError(f"space key {key!r}: scheduler pbt cannot mutate a grid; use choice")
                if not _PBT_KEY.match(key):
                    raise ValueError(f"space key {key!r}: PBT changes values mid-run from a cloned checkpoint, "
                                     "so only optim.* and mask.sets.N.* keys (schedules, mask blocks) may be in "
                                     "its space; sweep model shapes with asha or fifo")
        return self


def override(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value)}"


def check_space(cfg: SweepConfig) -> None:
    """Fail before any trial if a key of the space does not exist in the base config."""
    load_config(cfg.base, cfg.overrides)  # the base itself must be valid
    for key, spec in cfg.space.items():
        sample = spec.values[0] if spec.values else spec.low
        try:
            load_config(cfg.base, [*cfg.overrides, override(key, sample)])
        except ConfigError as e:
            if "unknown key" in str(e) or "not an index" in str(e) or "is a value, not a section" in str(e):
                raise ConfigError(f"sweep {cfg.name}: space key {key!r} is not in the base config {cfg.base}: "
                                  f"{e}") from None
            # a sampled value the model rejects is the trial's problem, not the sweep's


def distribution(spec: ParamSpec, search: str):
    from ray import tune

    if spec.kind == "grid":
        return tune.grid_search(spec.values)
    if spec.kind == "choice":
        if search == "grid":
            return tune.grid_search(spec.values)
        return tune.choice([json.dumps(v) for v in spec.values] if _encoded(spec, search) else spec.values)
    if spec.kind == "uniform":
        return tune.uniform(spec.low, spec.high)
    return tune.loguniform(spec.low, spec.high)


def _encoded(spec: ParamSpec, search: str) -> bool:
    """Optuna's categorical values must be scalars: lists (scales, aspect ratios) travel as JSON text."""
    return search == "optuna" and spec.kind == "choice" and any(isinstance(v, (list, dict)) for v in spec.values)


def decode_sample(cfg: SweepConfig, sampled: dict) -> dict:
    """A trial's sampled values as the sweep file wrote them."""
    return {k: json.loads(v) if _encoded(cfg.space[k], cfg.search) else v for k, v in sampled.items()}


def param_space(cfg: SweepConfig) -> dict:
    return {"space": {key: distribution(spec, cfg.search) for key, spec in cfg.space.items()}}
