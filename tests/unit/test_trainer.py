"""The shared trainer with a task that is not JEPA: it knows no model kind, hooks keep their own cadence,
the task's state goes into checkpoints, and configs derive and merge through validation."""

import itertools
from dataclasses import dataclass

import pytest
import torch

from vwm.config import BenchPosttrainConfig, ConfigError, PretrainConfig, TrainerConfig, with_overrides
from vwm.configfile import load_config
from vwm.tracking.tracker import DictTracker
from vwm.train import checkpoint as ckpt
from vwm.train.engine import LocalEngine
from vwm.train.trainer import Hook, RunEnv, Trainer
from tests.conftest import DEBUG_CONFIG, REPO


@dataclass
class _Batch:
    x_BF: torch.Tensor
    y_B: torch.Tensor
    position: tuple[int, int] | None = None


class Regression:
    """A linear regression task with a running mean of its weights as extra state."""

    samples_per_batch = 16

    def __init__(self):
        self.calls: list[int] = []
        self.mean_weight = torch.zeros(1, 3)

    def build(self):
        torch.manual_seed(0)
        self.model = torch.nn.Linear(3, 1)
        return self.model

    def batches(self, start_micro, position, shard):
        w = torch.tensor([[1.0, -2.0, 0.5]])

        def make(i):
            g = torch.Generator().manual_seed(i)
            x = torch.randn(16, 3, generator=g)
            return _Batch(x, (x @ w.T).squeeze(1), (0, i))
        return (make(i) for i in itertools.count(start_micro)), lambda: 0

    def loss(self, engine, batch, step):
        return (engine(batch.x_BF).squeeze(1) - batch.y_B).square().mean(), {"train/custom": float(step)}

    def after_step(self, engine, step):
        self.mean_weight = 0.9 * self.mean_weight + 0.1 * self.model.weight.detach()

    def hooks(self):
        return [Hook("every 3", 3, self._hook), Hook("evaluate", 4, lambda info: {"eval/x": 1.0}, report=True)]

    def _hook(self, info):
        self.calls.append(info.done)
        return {"monitor/step": float(info.done)}

    def state_dict(self):
        return {"mean_weight": self.mean_weight}

    def load_state_dict(self, state):
        self.mean_weight = state["mean_weight"]

    def export(self, directory, module_state):
        directory.mkdir(parents=True)
        torch.save(module_state, directory / "weights.pt")


def _cfg(**over):
    base = {"train.steps": 10, "train.log_every": 2, "train.checkpoint_every": 5, "optim.lr.warmup_steps": 0,
            "optim.lr.peak": 0.3, "optim.lr.start": 0.3, "optim.lr.final": 0.3}
    return with_overrides(TrainerConfig(), {**base, **over})


def _fit(tmp_path, task, cfg, start=0, end=10):
    engine = LocalEngine(task.build(), cfg.optim, torch.device("cpu"))
    sink = ckpt.LocalSink(tmp_path, engine, task, keep=2, total_steps=cfg.train.steps)
    if start:
        assert ckpt.read_checkpoint(ckpt.latest_checkpoint(tmp_path), engine, task, rank=0) == (start, (0, start - 1))
    tracker = DictTracker()
    env = RunEnv(rank=0, device=torch.device("cpu"), autocast_dtype=None, tracker=tracker, sink=sink, progress=False)
    batches, _ = task.batches(start, None, None)
    return Trainer(cfg, task, engine, env).fit(batches, start_step=start, end_step=end), tracker


def test_any_task_trains_with_hooks_on_their_own_cadence(tmp_path):
    task = Regression()
    summary, tracker = _fit(tmp_path, task, _cfg())
    assert summary.losses[-1] < 0.2 * summary.losses[0]
    assert task.calls == [3, 6, 9, 10]  # every 3 and the last step
    assert [s for s, _ in tracker.metrics["train/loss"]] == [0, 2, 4, 6, 8, 9]
    assert [s for s, _ in tracker.metrics["eval/x"]] == [3, 7, 9]
    assert tracker.metrics["train/custom"][1] == (2, 2.0)
    assert tracker.metrics["data/file"][-1] == (9, 9.0)
    final = ckpt.latest_checkpoint(tmp_path)
    assert final.name == "step_00000010" and (final / "world_model" / "weights.pt").is_file()


def test_task_state_is_checkpointed_and_resume_matches(tmp_path):
    full_task = Regression()
    full, _ = _fit(tmp_path / "full", full_task, _cfg())
    _fit(tmp_path / "split", Regression(), _cfg(), end=5)
    resumed_task = Regression()
    rest, _ = _fit(tmp_path / "split", resumed_task, _cfg(), start=5)
    torch.testing.assert_close(torch.tensor(rest.losses), torch.tensor(full.losses[5:]), rtol=0, atol=1e-6)
    torch.testing.assert_close(resumed_task.mean_weight, full_task.mean_weight)


def test_schedules_span_schedule_scale_times_the_run(tmp_path):
    """optim.schedule_scale=2: a 10-step run stops half way along its lr and weight-decay cosines."""
    cfg = _cfg(**{"optim.lr.final": 0.0, "optim.schedule_scale": 2.0})
    _, tracker = _fit(tmp_path, Regression(), cfg)
    assert tracker.metrics["train/lr"][-1] == (9, pytest.approx(0.15))
    assert tracker.metrics["train/wd"][-1] == (9, pytest.approx(0.22))


def test_derived_configs_are_validated_and_files_merge_in_order(tmp_path):
    cfg = load_config(DEBUG_CONFIG)
    assert with_overrides(cfg, {"train.steps": 7}).train.steps == 7
    with pytest.raises(ConfigError, match=r"data.crop=60 is not divisible"):
        with_overrides(cfg, {"data.crop": 60})
    with pytest.raises(ConfigError, match=r"train.nope is not a key"):
        with_overrides(cfg, {"train.nope": 1})
    overlay = tmp_path / "cluster.yaml"
    overlay.write_text("train: {steps: 99}\ndist: {num_workers: 4}\n")
    merged = load_config([DEBUG_CONFIG, overlay], ["dist.num_workers=3"])
    assert (merged.train.steps, merged.train.log_every, merged.dist.num_workers) == (99, cfg.train.log_every, 3)
    assert isinstance(merged, PretrainConfig)


def test_moved_keys_say_where_they_went():
    with pytest.raises(ConfigError, match=r"train.monitor_every moved to monitor.every"):
        load_config(DEBUG_CONFIG, ["train.monitor_every=5"])
    with pytest.raises(ConfigError, match=r"dist.use_gpu is gone: train.device"):
        load_config(DEBUG_CONFIG, ["dist.use_gpu=true"])
    with pytest.raises(ConfigError, match=r"plan_repeats is gone: .*set rounds instead"):
        load_config(REPO / "configs" / "bench" / "posttrain.yaml", ["plan_repeats=3"], BenchPosttrainConfig)


class _Payload:
    """What a crafted checkpoint file carries: unpickling it would run a command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_checkpoint_files_load_as_plain_data_and_a_crafted_one_runs_nothing(tmp_path, caplog):
    import pickle
    import random

    import numpy as np

    engine = LocalEngine(torch.nn.Linear(3, 2), TrainerConfig().optim, torch.device("cpu"))
    engine.module(torch.randn(4, 3)).sum().backward()
    engine.step(lr=1e-3, wd=0.0)
    engine.save(tmp_path)
    other = LocalEngine(torch.nn.Linear(3, 2), TrainerConfig().optim, torch.device("cpu"))
    other.load(tmp_path)  # weights only: model, optimizer state and the counter round-trip
    assert other.micro == 1 and torch.equal(other.module.weight, engine.module.weight)
    assert other.optimizer.state_dict()["state"][0]["step"] == engine.optimizer.state_dict()["state"][0]["step"]

    np.random.seed(3)
    random.seed(3)
    torch.save(ckpt.rng_state(), tmp_path / "rng.pt")
    expected = (np.random.rand(), random.random(), torch.rand(1))
    ckpt.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (np.random.rand(), random.random(), torch.rand(1)) == expected

    marker = tmp_path / "pwned"
    torch.save({"model": _Payload(marker)}, tmp_path / "engine.pt")
    with pytest.raises(pickle.UnpicklingError):
        other.load(tmp_path)
    assert not marker.exists()
