"""V-JEPA pretraining as a task of the shared trainer.

The trainable module is the context encoder + predictor pair; the EMA target encoder is the task's own
state (updated in ``after_step``, broadcast from rank 0, checksummed across ranks by a hook). Hooks: the
collapse monitors on training targets, held-out RankMe and the linear probe (reported to Tune), and the
replica checksum. ``export`` writes the world-model artifact (kind ``vjepa``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

from vwm.config import PretrainConfig
from vwm.data.synthetic import SyntheticClips
from vwm.eval.probe import heldout_probe, probe_set
from vwm.eval.rankme import feature_std, heldout_rankme, rankme, token_sample
from vwm.masks.collate import Batch, MaskCollator
from vwm.models.artifact import read_world_model, write_artifact
from vwm.models.flops import jepa_step_flops
from vwm.models.jepa import build_models, target_features
from vwm.models.predictor import gather_tokens
from vwm.models.preprocess import normalize_clips
from vwm.models.vit import token_grid
from vwm.tracking.registry import local_path
from vwm.tracking.tracker import dataset_input
from vwm.train.ema import EMATarget, submodule_state
from vwm.train.trainer import Hook, StepInfo

HELDOUT_SEED_OFFSET = 1_000_003  # held-out RankMe clips: synthetic videos under a seed training never samples


def jepa_loss(preds: list[torch.Tensor], target_BND: torch.Tensor,
              masks: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Mean over mask sets of the mean absolute error at that set's target tokens."""
    losses = [(pred_BKD - gather_tokens(target_BND, tgt_idx_BK)).abs().mean()
              for pred_BKD, (_, tgt_idx_BK) in zip(preds, masks)]
    return torch.stack(losses).mean()


def context_variance_hinge(ctx_BND: torch.Tensor, ctx_idx_BN: torch.Tensor, num_tokens: int, floor: float,
                           over: str, eps: float = 1e-4) -> torch.Tensor:
    """VICReg's variance term on layer-normed context features: mean of relu(floor - std) over channels, the
    std taken across the clips that see each token position (``positions``) or across the clips' mean
    features (``clips``). Layer norm fixes the features' scale, so the hinge cannot be met by growing it."""
    x_BND = F.layer_norm(ctx_BND.float(), (ctx_BND.shape[-1],))
    if over == "clips":
        std_D = (x_BND.mean(dim=1).var(dim=0) + eps).sqrt()
        return torch.relu(floor - std_D).mean()
    B, _, D = x_BND.shape
    index_BND = ctx_idx_BN[..., None].expand(-1, -1, D)
    full_BLD = x_BND.new_zeros(B, num_tokens, D).scatter(1, index_BND, x_BND)
    seen_BL = x_BND.new_zeros(B, num_tokens).scatter(1, ctx_idx_BN, 1.0)
    count_L = seen_BL.sum(dim=0)
    mean_LD = full_BLD.sum(dim=0) / count_L.clamp(min=1)[:, None]
    var_LD = (((full_BLD - mean_LD) ** 2) * seen_BL[..., None]).sum(dim=0) / (count_L - 1).clamp(min=1)[:, None]
    hinge_LD = torch.relu(floor - (var_LD + eps).sqrt())
    seen_twice_L = (count_L >= 2).float()  # a position one clip sees has no spread to measure
    return (hinge_LD.mean(dim=1) * seen_twice_L).sum() / seen_twice_L.sum().clamp(min=1)


def synthetic_batches(cfg: PretrainConfig, collate: MaskCollator, start_micro: int, rank: int) -> Iterator[Batch]:
    """In-process synthetic clips keyed by (seed, step, rank): exact resume, no pipeline needed."""
    d = cfg.data
    source = SyntheticClips(d.synthetic, frames=d.frames, frame_step=d.frame_step, crop=d.crop,
                            batch_size=d.batch_size, seed=cfg.train.seed, steps_per_epoch=cfg.train.steps_per_epoch)
    return (collate(source.batch(step, rank=rank)) for step in itertools.count(start_micro))


class JepaTask:
    kind = "jepa"
    config_cls = PretrainConfig
    progress_metrics = {"rankme": ("eval/rankme", "repr/rankme")}  # held-out RankMe when there is one

    def __init__(self, cfg: PretrainConfig, *, rank: int, device: torch.device, run_name: str, provenance: dict):
        self.cfg, self.rank, self.device, self.run_name, self.provenance = cfg, rank, device, run_name, provenance
        self.samples_per_batch = cfg.data.batch_size
        self.grid = token_grid(cfg.model, cfg.data.frames, cfg.data.crop)
        self.target: torch.nn.Module | None = None
        self.last_target_BND: torch.Tensor | None = None  # the last step's targets, for the collapse monitors
        self._heldout: torch.Tensor | None = None
        self._first_batch: tuple | None = None  # rank 0's first clips and masks, for the pictures

    # ---------------------------------------------------------------------------------------- model
    def build(self) -> torch.nn.Module:
        c = self.cfg
        jepa, target = build_models(c.model, c.data.frames, c.data.crop, len(c.mask.sets))
        if c.train.init_weights:  # fine-tuning: context and target encoder start as the model's (EMA) encoder
            wm = read_world_model(local_path(c.train.init_weights, c.tracking.tracking_uri))
            for module in (jepa.encoder, target):
                module.load_state_dict(wm.encoder.state_dict())
            jepa.predictor.load_state_dict(wm.predictor.state_dict())
        self.ema = EMATarget(target.to(self.device), "encoder", c.optim, c.train.steps)
        self.target = self.ema.module
        return jepa

    def loss(self, engine, batch: Batch, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        clips_BCTHW = normalize_clips(batch.clips_BTHWC.to(self.device, non_blocking=True))
        masks = [(c.to(self.device, non_blocking=True), t.to(self.device, non_blocking=True)) for c, t in batch.masks]
        target_BND = target_features(self.target, clips_BCTHW)
        lc = self.cfg.loss
        preds, contexts = engine(clips_BCTHW, masks, with_context=True) if lc.variance else (
            engine(clips_BCTHW, masks), None)
        if self._first_batch is None and self.rank == 0 and self.cfg.monitor.pictures:
            n = self.cfg.monitor.pictures
            self._first_batch = (batch.clips_BTHWC[:n].cpu(), [(c[:n].cpu(), t[:n].cpu()) for c, t in batch.masks])
        self.last_target_BND = target_BND
        loss = jepa_loss(preds, target_BND, masks)
        extras = {"train/ema_momentum": self.ema.momentum(step)}
        if contexts is not None:
            n = math.prod(self.grid)
            loss_var = torch.stack([context_variance_hinge(ctx_BND, ctx_idx_BN, n, lc.variance_std, lc.variance_over)
                                    for ctx_BND, (ctx_idx_BN, _) in zip(contexts, masks)]).mean()
            extras["train/loss_jepa"] = loss.detach()
            extras["train/loss_variance"] = loss_var.detach()
            loss = loss + lc.variance * loss_var
        return loss, extras

    def after_step(self, engine, step: int) -> None:
        self.ema.update(engine, step)

    def hot_modules(self, module: torch.nn.Module) -> list[torch.nn.Module]:
        return [module.encoder, module.predictor, self.target]

    def step_flops(self, batch: Batch) -> int:
        return jepa_step_flops(self.cfg.model, math.prod(self.grid), [(c.shape[1], t.shape[1]) for c, t in batch.masks],
                               batch.clips_BTHWC.shape[0])

    def state_dict(self) -> dict:
        return self.ema.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.ema.load_state_dict(state)

    def export(self, directory: Path, module_state: dict[str, torch.Tensor]) -> None:
        c = self.cfg
        predictor = submodule_state(module_state, "predictor")
        write_artifact(directory, kind="vjepa", model_config=c.model, frames=c.data.frames, crop=c.data.crop,
                       weights={"encoder": self.target.state_dict(), "predictor": predictor},
                       extras={"num_mask_sets": len(c.mask.sets)}, git_commit=self.provenance.get("git_commit"),
                       parent_uri=c.train.init_weights)

    # ----------------------------------------------------------------------------------------- data
    @staticmethod
    def check_inputs(cfg: PretrainConfig) -> list[dict]:
        """Before any cluster work: the shards are there (DataSourceError names the path). Returns what the
        run reads, for its tracker."""
        if cfg.data.source == "shards":
            from vwm.data.shards import list_sources

            sources = list_sources(cfg.data.paths, cfg.data.endpoint_url)
            if cfg.train.init_weights:
                check_init_weights(cfg)
            return [dataset_input("videos", "training", sources, roots=cfg.data.paths)]
        if cfg.train.init_weights:
            check_init_weights(cfg)
        synthetic = {"generator": "vwm.data.synthetic", "seed": cfg.train.seed,
                     **cfg.data.synthetic.model_dump(mode="json")}
        return [dataset_input("synthetic-videos", "training", [], roots=["synthetic"], profile=synthetic)]

    def batches(self, start_micro: int, position, shard) -> tuple[Iterator[Batch], callable]:
        """This rank's batches and a skipped-video counter. Synthetic: keyed by (seed, step, rank), resumed
        exactly. Shards: in-process, one Ray Data pipeline per epoch from ``position``; under Ray Train, this
        worker's split of the driver's dataset, passed over again if it runs dry."""
        c = self.cfg
        collate = MaskCollator(c.mask, self.grid, seed=c.train.seed, rank=self.rank,
                               steps_per_epoch=c.train.steps_per_epoch, start_step=start_micro)
        if c.data.source == "synthetic":
            return synthetic_batches(c, collate, start_micro, self.rank), lambda: 0
        import ray

        from vwm.data.pipeline import clip_batches, local_batches, run_ledger

        if shard is None:
            from vwm.raycluster import connect

            connect()
        ledger = run_ledger(self.run_name)
        if shard is None:
            stream = iter(local_batches(c.data, collate, seed=c.train.seed, ledger=ledger, position=position))
        else:
            stream = (b for p in itertools.count()
                      for b in clip_batches(shard, collate, c.data, seed=c.train.seed, rank=self.rank, pass_index=p))
        return stream, lambda: ray.get(ledger.count.remote())

    @staticmethod
    def dataset(cfg: PretrainConfig, run_name: str, position):
        """The driver's Ray dataset for Ray Train workers (None for in-process synthetic clips), starting at
        ``position`` (epoch, file order) when resuming."""
        if cfg.data.source == "synthetic":
            return None
        from vwm.data.pipeline import build_dataset, run_ledger
        from vwm.data.shards import list_sources

        sources = len(list_sources(cfg.data.paths, cfg.data.endpoint_url))
        epoch, order = position or (0, 0)
        return build_dataset(cfg.data, seed=cfg.train.seed, epochs=range(epoch, epoch + dataset_epochs(cfg, sources)),
                             ledger=run_ledger(run_name), start_order=order)

    # ---------------------------------------------------------------------------------------- hooks
    def hooks(self) -> list[Hook]:
        hooks = [Hook("collapse monitor", self.cfg.monitor.every, self._monitor, first=True),
                 Hook("replica checksum", self.cfg.dist.checksum_every, self._checksum, all_ranks=True)]
        if self.cfg.train.eval_every:
            self._heldout = torch.from_numpy(SyntheticClips(
                self.cfg.data.synthetic, frames=self.cfg.data.frames, frame_step=self.cfg.data.frame_step,
                crop=self.cfg.data.crop, batch_size=self.cfg.monitor.eval_clips,
                seed=self.cfg.train.seed + HELDOUT_SEED_OFFSET,
                steps_per_epoch=self.cfg.train.steps_per_epoch).batch(0)["clips"])
            # the probe reads rank 0's target (identical on every rank); Ray takes reports from rank 0
            self._probe = (probe_set(self.cfg.data, self.cfg.monitor.probe, self.cfg.train.seed)
                           if self.cfg.monitor.probe.label and self.rank == 0 else None)
            hooks.append(Hook("held-out eval", self.cfg.train.eval_every, self._evaluate, all_ranks=True, report=True))
        if self.cfg.monitor.pictures:
            hooks.append(Hook("pictures", self.cfg.train.eval_every or self.cfg.monitor.every, self._pictures,
                              first=True))
        return hooks

    def _monitor(self, info: StepInfo) -> dict[str, float]:
        rows_ND = token_sample(self.last_target_BND)
        return {"repr/std": feature_std(rows_ND), "repr/rankme": rankme(rows_ND)}

    def _pictures(self, info: StepInfo) -> None:
        """The first batch's clips with their masks (a fresh run's first step), and a PCA video of held-out
        clips' target features (the first step, eval steps, the end) as mp4 under the run's ``pictures/``.
        Pictures are not worth a run: a failure is a warning."""
        import logging
        import tempfile

        from vwm.eval.pictures import mask_video, pca_video

        n, m = self.cfg.monitor.pictures, self.cfg.model
        try:
            with tempfile.TemporaryDirectory(prefix="vwm-pictures-") as tmp:
                if info.done == 1 and self._first_batch is not None:
                    clips, masks = self._first_batch
                    info.tracker.log_artifact(mask_video(clips, masks, self.grid, m.patch_size, m.tubelet_size,
                                                         f"{tmp}/masks.mp4"), "pictures")
                clips = self._heldout[:n] if self._heldout is not None else (
                    self._first_batch[0] if self._first_batch is not None else None)
                if clips is not None:
                    features_BND = target_features(self.target, normalize_clips(clips.to(self.device)))
                    info.tracker.log_artifact(pca_video(clips, features_BND.float(), self.grid, m.tubelet_size,
                                                        f"{tmp}/pca_step_{info.done:07d}.mp4"), "pictures")
        except Exception as e:
            logging.getLogger(__name__).warning("pictures at step %d not logged (%s: %s)", info.done,
                                                type(e).__name__, e)

    def _checksum(self, info: StepInfo) -> None:
        self.ema.check_replicas(info.done, info.engine)

    def _evaluate(self, info: StepInfo) -> dict[str, float]:
        metrics = heldout_rankme(self.target, self._heldout, self.device)  # identical targets: same on every rank
        if self._probe is not None:
            metrics.update(heldout_probe(self.target, *self._probe, self.cfg.monitor.probe, self.grid, self.device))
        return metrics


_ARCHITECTURE = ("dim", "depth", "heads", "mlp_ratio", "patch_size", "tubelet_size", "pos_embed",
                 "sincos_uniform_power", "qkv_bias", "predictor")


def check_init_weights(cfg: PretrainConfig) -> None:
    """``train.init_weights`` names a V-JEPA model whose encoder and predictor fit this run's (ConfigError,
    naming the first key to change, otherwise), read from its manifest alone."""
    import json

    from vwm.config import ConfigError
    from vwm.tracking.registry import local_member

    uri = cfg.train.init_weights
    try:
        manifest = json.loads(local_member(uri, "manifest.json", cfg.tracking.tracking_uri).read_text())
    except Exception as e:  # a wrong URI, a server that does not answer, a folder that is no model
        raise ConfigError(f"train.init_weights={uri}: cannot read its manifest ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200] if str(e) else ''}); give a registered model, runs:/ URI or "
                          "world-model folder") from None
    if manifest.get("kind") != "vjepa":
        raise ConfigError(f"train.init_weights={uri} is a {manifest.get('kind')} model; pretraining starts from a "
                          "vjepa (pretraining) model")
    theirs, ours = manifest["model_config"], cfg.model.model_dump(mode="json")
    wanted = {**{f"model.{k}": theirs.get(k) for k in _ARCHITECTURE if theirs.get(k) != ours[k]},
              **{f"data.{k}": manifest["geometry"][k] for k in ("frames", "crop")
                 if manifest["geometry"][k] != getattr(cfg.data, k)}}
    if manifest.get("num_mask_sets", len(cfg.mask.sets)) != len(cfg.mask.sets):
        wanted["mask.sets"] = f"{manifest['num_mask_sets']} sets"
    if wanted:
        key, value = next(iter(wanted.items()))
        raise ConfigError(f"train.init_weights={uri} has another architecture: set {key}={value} "
                          f"({len(wanted)} key(s) differ: {', '.join(wanted)})")


def dataset_epochs(cfg: PretrainConfig, num_sources: int) -> int:
    """Passes over the shard list that surely cover the run (assuming as few as one video per file)."""
    from vwm.data.pipeline import covering_epochs

    if cfg.dist.dataset_epochs:
        return cfg.dist.dataset_epochs
    clips = cfg.train.steps * cfg.optim.grad_accumulation * cfg.data.batch_size * cfg.dist.num_workers
    return covering_epochs(clips, num_sources, cfg.data.clips_per_video)


def run_pretrain(cfg: PretrainConfig, **kwargs):
    """V-JEPA pretraining: ``vwm pretrain`` and ``jobs/pretrain.py`` (see ``run_training`` for the options)."""
    from vwm.train.launch import run_training

    return run_training(cfg, JepaTask, **kwargs)
