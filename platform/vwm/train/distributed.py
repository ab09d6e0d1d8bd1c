"""Ray Train worker helpers: checkpoints reported to Ray, rank reductions, per-rank batches, rank-0 tracker."""

from __future__ import annotations

import itertools
import shutil
import tempfile
from pathlib import Path

import ray
import ray.train
import torch
import torch.distributed as dist

from vwm.config import RunConfig
from vwm.eval.world_model import save_world_model
from vwm.masks.collate import Batch, MaskCollator
from vwm.models.vit import token_grid
from vwm.tracking.tracker import attach_tracker
from vwm.train import checkpoint as ckpt


def all_reduce_mean(x: float) -> float:
    t = torch.tensor([x], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


class RayCheckpointer:
    """Every rank writes its part into a local folder and reports it; Ray merges the ranks' files into one
    checkpoint in the run's storage (local or s3://) and keeps the newest ``train.keep_checkpoints``."""

    def __init__(self, cfg: RunConfig, engine, target: torch.nn.Module, rank: int):
        self.cfg, self.engine, self.target, self.rank = cfg, engine, target, rank

    def restore(self, init_from: ray.train.Checkpoint | None = None) -> tuple[int, tuple[int, int] | None]:
        """This run's own latest checkpoint (after a restart), else ``init_from`` (another run's: PBT clones
        a better trial's), else nothing: (step, data position) to start from."""
        checkpoint = ray.train.get_checkpoint() or init_from
        if checkpoint is None:
            return 0, None
        with checkpoint.as_directory() as d:
            if not (Path(d) / "meta.json").is_file():
                raise FileNotFoundError(f"checkpoint {checkpoint.path} has no meta.json: it was deleted or never "
                                        "finished; start without it or from another checkpoint")
            self.engine.load(Path(d))
            meta = ckpt.load_extras(Path(d), rank=self.rank, target=self.target)
        how = "resumed" if checkpoint is not init_from else "initialised"
        print(f"[vwm] rank {self.rank} {how} from {checkpoint.path} at step {meta['step']}", flush=True)
        return meta["step"], meta["data_position"]["position"]

    def save(self, done: int, batch: Batch, metrics: dict) -> Path | None:
        tmp = Path(tempfile.mkdtemp(prefix="vwm-ckpt-"))
        d = tmp / f"step_{done:08d}"
        try:
            ckpt.write_state(d, self.engine, self.target, rank=self.rank, step=done, position=batch.position)
            if done == self.cfg.train.steps:
                self._export_world_model(d / "world_model")
            ray.train.report({"step": done, **metrics}, checkpoint=ray.train.Checkpoint.from_directory(str(d)))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return None

    def _export_world_model(self, directory: Path) -> None:
        state = self.engine.module_state()  # every rank: a gather under ZeRO-3
        if self.rank != 0:
            return
        predictor = {k[len("predictor."):]: v for k, v in state.items() if k.startswith("predictor.")}
        save_world_model(directory, model_config=self.cfg.model, frames=self.cfg.data.frames,
                         crop=self.cfg.data.crop, num_mask_sets=len(self.cfg.mask.sets),
                         encoder_state={k: v.detach().cpu() for k, v in self.target.state_dict().items()},
                         predictor_state=predictor)


def worker_batches(cfg: RunConfig, rank: int, start_step: int, position):
    """This rank's batches and a skipped-video counter. Synthetic: keyed by (seed, step, rank), resumed
    exactly. Shards: this worker's split of the Ray Data pipeline, passed over again if it runs dry."""
    from vwm.train.loop import synthetic_batches

    t, acc = cfg.train, cfg.optim.grad_accumulation
    collate = MaskCollator(cfg.mask, token_grid(cfg.model, cfg.data.frames, cfg.data.crop), seed=t.seed,
                           rank=rank, steps_per_epoch=t.steps_per_epoch, start_step=start_step * acc)
    if cfg.data.source == "synthetic":
        return synthetic_batches(cfg, collate, start_step * acc, rank), lambda: 0
    from vwm.data.pipeline import clip_batches

    shard = ray.train.get_dataset_shard("train")
    ledger = ray.get_actor(ledger_name(cfg), namespace="vwm")

    def stream():
        for pass_index in itertools.count():
            yield from clip_batches(shard, collate, cfg.data, seed=t.seed, rank=rank, pass_index=pass_index)

    return stream(), lambda: ray.get(ledger.count.remote())


def ledger_name(cfg: RunConfig) -> str:
    return f"skips-{cfg.train.run_name}"


def make_worker_tracker(config: dict, rank: int):
    cfg = RunConfig.model_validate(config["cfg"])
    return attach_tracker(cfg.tracking, config["tracker"])
