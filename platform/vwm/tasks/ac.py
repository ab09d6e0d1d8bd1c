"""Action-conditioned post-training (V-JEPA 2-AC) as a task of the shared trainer.

The encoder comes from a pretraining run's artifact (``ac.encoder_uri``). ``ac.encoder: frozen`` (the
reference) keeps it fixed and trains the predictor alone; ``ema`` trains it with the predictor against an
EMA copy that makes the targets (the seeds' action-conditioned JEPA: Pred(s_t, a_t) vs SG(target(x_t+1))).
Loss: teacher-forcing L1 on the next frame's layer-normed features + an autoregressive rollout L1 over
``ac.rollout_steps`` + an L1 on the predicted next state, weighted by ``ac.loss_weights``.
"""

from __future__ import annotations

import copy
import itertools
import math
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vwm.config import PosttrainConfig
from vwm.eval.geometry import cost_rank_correlation
from vwm.eval.rankme import feature_std, rankme, token_sample
from vwm.models.ac_predictor import ACPredictor
from vwm.models.ac_world_model import ACModule, FrameEncoder, rollout
from vwm.models.artifact import read_world_model, write_artifact
from vwm.models.flops import ac_step_flops
from vwm.tracking.registry import local_path
from vwm.tracking.tracker import dataset_input
from vwm.train.ema import EMATarget, submodule_state
from vwm.train.trainer import Hook, StepInfo


@dataclass
class WindowBatch:
    frames_BTHWC: torch.Tensor  # uint8
    actions_BTA: torch.Tensor  # T - 1 rows, normalised
    states_BTS: torch.Tensor  # normalised
    position: tuple[int, int] | None = None


def collate_windows(batch: dict[str, np.ndarray]) -> WindowBatch:
    position = None
    if "epoch" in batch and "order" in batch:
        position = max(zip(batch["epoch"].tolist(), batch["order"].tolist()))
    return WindowBatch(torch.as_tensor(np.ascontiguousarray(batch["frames_THWC"])),
                       torch.as_tensor(np.ascontiguousarray(batch["actions_TA"]), dtype=torch.float32),
                       torch.as_tensor(np.ascontiguousarray(batch["states_TS"]), dtype=torch.float32), position)


def l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().mean()


def variance_hinge(z_BTND: torch.Tensor, target: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """VICReg's variance term: mean over tokens and channels of relu(target - std across the B x T frames).
    Per token, so that with the full grid a patch whose content never changes is not asked to vary
    through another patch's variance."""
    std_ND = (z_BTND.flatten(0, 1).float().var(dim=0) + eps).sqrt()
    return torch.relu(target - std_ND).mean()


class ACTask:
    kind = "ac"
    config_cls = PosttrainConfig
    progress_metrics = {"rankme": ("repr/rankme",), "vs_copy@1": ("eval/rollout_vs_copy@1",)}

    def __init__(self, cfg: PosttrainConfig, *, rank: int, device: torch.device, run_name: str, provenance: dict):
        self.cfg, self.rank, self.device, self.run_name, self.provenance = cfg, rank, device, run_name, provenance
        self.samples_per_batch = cfg.data.batch_size
        self.parent = read_world_model(local_path(cfg.ac.encoder_uri, cfg.tracking.tracking_uri))
        self.stats = window_stats(cfg)
        self.target: FrameEncoder | None = None  # frozen encoder, or the EMA target of the online one
        self.last_z: torch.Tensor | None = None

    @staticmethod
    def check_inputs(cfg: PosttrainConfig) -> list[dict]:
        """Before any cluster work: trajectory shards, held-out shards and an encoder folder are there.
        Returns what the run reads, for its tracker."""
        from vwm.config import ConfigError
        from vwm.data.shards import DataSourceError, list_sources

        if cfg.train.init_weights:
            raise ConfigError("train.init_weights (--init-from) starts a pretraining run from a model's weights; "
                              "post-training takes its encoder from ac.encoder_uri")
        inputs = [dataset_input("trajectories", "training", list_sources(cfg.data.paths, cfg.data.endpoint_url),
                                roots=cfg.data.paths)]
        if cfg.monitor.heldout_paths:
            inputs.append(dataset_input("held-out trajectories", "evaluation",
                                        list_sources(cfg.monitor.heldout_paths, cfg.data.endpoint_url),
                                        roots=cfg.monitor.heldout_paths))
        uri = cfg.ac.encoder_uri
        if ":/" not in uri and not Path(uri).expanduser().exists():
            raise DataSourceError(f"ac.encoder_uri={uri}: no such folder; give a world_model folder, "
                                  "runs:/RUN_ID/world_model or models:/vwm-jepa@ALIAS")
        return inputs

    # ---------------------------------------------------------------------------------------- model
    def _frame_encoder(self) -> FrameEncoder:
        p = self.parent.manifest
        enc = FrameEncoder(self.parent.model_config, p["geometry"]["crop"], self.cfg.ac.pool,
                           p["preprocessing"]["mean"], p["preprocessing"]["std"])
        enc.encoder.load_state_dict(self.parent.encoder.state_dict())
        return enc

    def _predictor(self, enc: FrameEncoder) -> ACPredictor:
        c, m = self.cfg, self.parent.model_config
        pool = c.ac.pool
        return ACPredictor(enc_dim=m.dim, dim=c.ac.predictor.dim, depth=c.ac.predictor.depth,
                           heads=c.ac.predictor.heads, mlp_ratio=c.ac.predictor.mlp_ratio,
                           grid_hw=(pool, pool) if pool else enc.grid_hw, max_frames=c.data.frames,
                           action_dim=self.stats["action_dim"], state_dim=self.stats["state_dim"],
                           pos_embed=m.pos_embed, qkv_bias=m.qkv_bias, init_std=m.init_std, residual=c.ac.residual)

    def build(self) -> torch.nn.Module:
        enc = self._frame_encoder()
        online = enc if self.cfg.ac.encoder == "ema" else None
        # frozen: a fixed copy; ema: follows the online encoder after every update
        self.ema = EMATarget(copy.deepcopy(enc).to(self.device), "encoder", self.cfg.optim, self.cfg.train.steps)
        self.target = self.ema.module
        probe = self.stats["state_dim"] if self.cfg.ac.loss_weights.state_probe else None
        return ACModule(self._predictor(enc), online, state_dim=probe)

    def loss(self, engine, batch: WindowBatch, step: int) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
        ac, d = self.cfg.ac, self.device
        frames, actions, states = batch.frames_BTHWC.to(d), batch.actions_BTA.to(d), batch.states_BTS.to(d)
        with torch.no_grad():
            target_BTND = self.target(frames)  # the frozen encoder's features, or the EMA target's
        # frozen: the predictor reads the same features it is scored against; ema: the online encoder's
        z_BTND, pred_BTND, spred_BTS, roll_BRND, probe_BTS = engine(target_BTND, actions, states, ac.rollout_steps,
                                                                    frames if ac.encoder == "ema" else None)
        loss_tf = l1(pred_BTND, target_BTND[:, 1:])
        loss_roll = l1(roll_BRND, target_BTND[:, 1:ac.rollout_steps + 1])
        loss_state = l1(spred_BTS, states[:, 1:])
        w = ac.loss_weights
        loss = w.teacher_forcing * loss_tf + w.rollout * loss_roll + w.state * loss_state
        self.last_z = z_BTND.detach()
        extras = {"train/loss_tf": loss_tf.detach(), "train/loss_rollout": loss_roll.detach(),
                  "train/loss_state": loss_state.detach()}
        if probe_BTS is not None:
            loss_probe = l1(probe_BTS, states)
            loss = loss + w.state_probe * loss_probe
            extras["train/loss_state_probe"] = loss_probe.detach()
        if w.variance:  # the online encoder's features (ac.encoder: ema, checked by the config)
            loss_var = variance_hinge(z_BTND)
            loss = loss + w.variance * loss_var
            extras["train/loss_variance"] = loss_var.detach()
        if ac.encoder == "ema":
            extras["train/ema_momentum"] = self.ema.momentum(step)
        return loss, extras

    def after_step(self, engine, step: int) -> None:
        if self.cfg.ac.encoder == "ema":
            self.ema.update(engine, step)

    def hot_modules(self, module: torch.nn.Module) -> list[torch.nn.Module]:
        return [m for m in (module.predictor, module.encoder, self.target) if m is not None]

    def step_flops(self, batch: WindowBatch) -> int:
        c, B, T = self.cfg.ac, *batch.frames_BTHWC.shape[:2]
        p = {"dim": c.predictor.dim, "depth": c.predictor.depth, "mlp_ratio": c.predictor.mlp_ratio}
        enc_tokens = math.prod(self.target.grid_hw)
        return ac_step_flops(self.parent.model_config, enc_tokens, p, 2 + self.target.tokens, T, c.rollout_steps, B,
                             online_encoder=c.encoder == "ema")

    def state_dict(self) -> dict:
        return self.ema.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.ema.load_state_dict(state)

    def export(self, directory: Path, module_state: dict[str, torch.Tensor]) -> None:
        c, p = self.cfg, self.parent.manifest
        predictor = submodule_state(module_state, "predictor")
        write_artifact(directory, kind="vjepa-ac", model_config=self.parent.model_config,
                       frames=self.parent.model_config.tubelet_size, crop=p["geometry"]["crop"],
                       weights={"encoder": self.target.encoder.state_dict(), "predictor": predictor},
                       extras={"ac": {"pool": c.ac.pool, "max_frames": c.data.frames, "residual": c.ac.residual,
                                      **c.ac.predictor.model_dump(mode="json")},
                               "action_dim": self.stats["action_dim"], "state_dim": self.stats["state_dim"],
                               "frameskip": c.data.frameskip, "env_action_dim": self.stats["env_action_dim"],
                               "normalisation": {k: self.stats[k] for k in
                                                 ("action_mean", "action_std", "state_mean", "state_std")}},
                       parent_uri=c.ac.encoder_uri, git_commit=self.provenance.get("git_commit"))

    # ----------------------------------------------------------------------------------------- data
    def batches(self, start_micro: int, position, shard):
        """Windows of trajectory shards through the Ray Data pipeline: in-process one dataset per epoch from
        ``position``; under Ray Train this worker's split of the driver's dataset, passed over again."""
        import ray

        from vwm.data.pipeline import clip_batches, local_batches, run_ledger

        c = self.cfg
        if shard is None:  # before the ledger: its actor would otherwise ray.init() onto any cluster running here
            from vwm.raycluster import connect

            connect()
        ledger = run_ledger(self.run_name)
        if shard is None:
            stream = iter(local_batches(c.data, collate_windows, seed=c.train.seed, ledger=ledger,
                                        position=position))
        else:
            stream = (b for p in itertools.count() for b in clip_batches(
                shard, collate_windows, c.data, seed=c.train.seed, rank=self.rank, pass_index=p))
        return stream, lambda: ray.get(ledger.count.remote())

    @staticmethod
    def dataset(cfg: PosttrainConfig, run_name: str, position):
        from vwm.data.pipeline import build_trajectory_dataset, covering_epochs, run_ledger
        from vwm.data.shards import list_sources

        epoch, order = position or (0, 0)
        windows = cfg.train.steps * cfg.optim.grad_accumulation * cfg.data.batch_size * cfg.dist.num_workers
        epochs = cfg.dist.dataset_epochs or covering_epochs(
            windows, len(list_sources(cfg.data.paths, cfg.data.endpoint_url)), cfg.data.windows_per_episode)
        return build_trajectory_dataset(cfg.data, seed=cfg.train.seed, epochs=range(epoch, epoch + epochs),
                                        ledger=run_ledger(run_name), start_order=order)

    # ---------------------------------------------------------------------------------------- hooks
    def hooks(self) -> list[Hook]:
        hooks = [Hook("representation monitor", self.cfg.monitor.every, self._monitor, first=True)]
        if self.cfg.ac.encoder == "ema":
            hooks.append(Hook("replica checksum", self.cfg.dist.checksum_every, self._checksum, all_ranks=True))
        if self.cfg.train.eval_every and self.cfg.monitor.heldout_paths:
            self._heldout = heldout_windows(self.cfg)
            hooks.append(Hook("held-out rollouts", self.cfg.train.eval_every, self._evaluate, all_ranks=True,
                              report=True))
        return hooks

    def _monitor(self, info: StepInfo) -> dict[str, float]:
        rows_ND = token_sample(self.last_z.flatten(1, 2))
        return {"repr/std": feature_std(rows_ND), "repr/rankme": rankme(rows_ND)}

    def _checksum(self, info: StepInfo) -> None:
        self.ema.check_replicas(info.done, info.engine)

    @torch.no_grad()
    def _evaluate(self, info: StepInfo) -> dict[str, float]:
        module = info.engine.module
        module.eval()
        try:
            if self.cfg.monitor.pictures:  # every rank rolls out (ZeRO-3 gathers the predictor collectively)
                self._imagined_futures(module.predictor, info)
            return rollout_metrics(module.predictor, self.target, self._heldout, self.cfg.data.frames - 1,
                                   self.device)
        finally:
            module.train()

    def _imagined_futures(self, predictor, info: StepInfo) -> None:
        """``pictures/rollout_step_N.mp4``: held-out windows, their features, and the rollout's, written by
        rank 0 (a warning, never the end of a run, when it cannot be logged)."""
        import logging
        import tempfile

        from vwm.eval.pictures import rollout_video

        n, w = self.cfg.monitor.pictures, self._heldout
        try:
            frames_BTHWC = w.frames_BTHWC[:n]
            z_BTND = self.target(frames_BTHWC.to(self.device))
            roll_BHND, _ = rollout(predictor, z_BTND[:, 0], w.actions_BTA[:n].to(self.device),
                                   w.states_BTS[:n, 0].to(self.device))
            if self.rank != 0:
                return
            imagined_BTND = torch.cat([z_BTND[:, :1], roll_BHND], dim=1)
            pool = self.cfg.ac.pool
            grid_hw = (pool, pool) if pool else tuple(self.target.grid_hw)
            with tempfile.TemporaryDirectory(prefix="vwm-pictures-") as tmp:
                info.tracker.log_artifact(rollout_video(frames_BTHWC, z_BTND.cpu(), imagined_BTND.cpu(), grid_hw,
                                                        f"{tmp}/rollout_step_{info.done:07d}.mp4"), "pictures")
        except Exception as e:
            logging.getLogger(__name__).warning("imagined futures at step %d not logged (%s: %s)", info.done,
                                                type(e).__name__, e)


@torch.no_grad()
def rollout_metrics(predictor, encoder, windows: WindowBatch, horizon: int, device) -> dict[str, float]:
    """Held-out rollout L1 at 1, 2 and H steps, beside copying the last observed frame (the baseline a
    predictor must beat): ``eval/rollout_l1@k`` and ``eval/rollout_vs_copy@k`` (< 1 beats the copy); and
    whether the features order states as a planning cost needs (``eval/cost_rank_corr``, ``..._near``:
    vwm.eval.geometry; states in normalised units)."""
    out: dict[str, float] = {}
    feats, states = [], []
    for chunk in range(0, len(windows.frames_BTHWC), 16):
        sl = slice(chunk, chunk + 16)
        z_BTND = encoder(windows.frames_BTHWC[sl].to(device))
        feats.append(z_BTND.flatten(0, 1).cpu())
        states.append(windows.states_BTS[sl].flatten(0, 1))
        roll_BHND, _ = rollout(predictor, z_BTND[:, 0], windows.actions_BTA[sl, :horizon].to(device),
                               windows.states_BTS[sl, 0].to(device))
        for k in sorted({1, min(2, horizon), horizon}):
            err = (roll_BHND[:, k - 1] - z_BTND[:, k]).abs().mean(dim=(1, 2))
            copy = (z_BTND[:, 0] - z_BTND[:, k]).abs().mean(dim=(1, 2))
            out.setdefault(f"l1@{k}", []).extend(err.tolist())
            out.setdefault(f"copy@{k}", []).extend(copy.tolist())
    metrics = {}
    for key in [k for k in out if k.startswith("l1@")]:
        k = key[3:]
        err, copy = float(np.mean(out[key])), float(np.mean(out[f"copy@{k}"]))
        metrics[f"eval/rollout_l1@{k}"], metrics[f"eval/rollout_vs_copy@{k}"] = err, err / max(copy, 1e-9)
    geometry = cost_rank_correlation(torch.cat(feats), torch.cat(states))
    metrics["eval/cost_rank_corr"], metrics["eval/cost_rank_corr_near"] = geometry["all"], geometry["near"]
    return metrics


def window_stats(cfg: PosttrainConfig) -> dict:
    """Dims and normalisation of the windows: what the pipeline applies and the artifact records."""
    from vwm.data.shards import list_sources
    from vwm.data.trajectories import load_stats

    sources = list_sources(cfg.data.paths, cfg.data.endpoint_url)
    stats = load_stats(cfg.data.stats, sources, cfg.data.endpoint_url)
    k = cfg.data.frameskip
    a_mean, a_std = np.asarray(stats["actions"]["mean"]), np.asarray(stats["actions"]["std"])
    s_mean, s_std = np.asarray(stats["states"]["mean"]), np.asarray(stats["states"]["std"])
    if not cfg.data.normalize:  # the pipeline passes raw values: record the identity
        a_mean, a_std, s_mean, s_std = (np.zeros_like(a_mean), np.ones_like(a_std), np.zeros_like(s_mean),
                                        np.ones_like(s_std))
    return {"action_dim": len(a_mean) * k, "env_action_dim": len(a_mean), "state_dim": len(s_mean),
            "action_mean": np.tile(a_mean, k).tolist(), "action_std": np.tile(a_std, k).tolist(),
            "state_mean": s_mean.tolist(), "state_std": s_std.tolist()}


def heldout_windows(cfg: PosttrainConfig) -> WindowBatch:
    """``monitor.heldout_windows`` windows of the held-out episodes, the first one per episode, normalised
    as training windows are (no flips): the same for every eval step and every rank."""
    from vwm.data.shards import iter_samples, list_sources
    from vwm.data.trajectories import episode_windows, load_stats

    d = cfg.data
    stats = load_stats(d.stats, list_sources(d.paths, d.endpoint_url), d.endpoint_url) if d.normalize else None
    rows = []
    for uri in list_sources(cfg.monitor.heldout_paths, d.endpoint_url):
        for sample in iter_samples(uri, d.endpoint_url):
            if isinstance(sample, tuple) or "npz" not in sample.members:
                continue
            rng = np.random.default_rng([cfg.train.seed, zlib.crc32(sample.source.encode()), 0xE7A1])
            rows += episode_windows(sample, frames=d.frames, frameskip=d.frameskip, count=1, rng=rng,
                                    stats=stats, size=d.size)
            if len(rows) >= cfg.monitor.heldout_windows:
                break
        if len(rows) >= cfg.monitor.heldout_windows:
            break
    if not rows:
        raise ValueError(f"monitor.heldout_paths {cfg.monitor.heldout_paths}: no trajectory episode long enough "
                         f"for a window of {d.frames} frames every {d.frameskip}")
    return collate_windows({k: np.stack([r[k] for r in rows]) for k in ("frames_THWC", "actions_TA", "states_TS")})


def run_posttrain(cfg: PosttrainConfig, **kwargs):
    """Action-conditioned post-training: ``vwm posttrain`` and ``jobs/posttrain.py``."""
    from vwm.train.launch import run_training

    return run_training(cfg, ACTask, **kwargs)
