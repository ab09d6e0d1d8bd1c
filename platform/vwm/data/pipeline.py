"""The Ray Data pipeline: shard files -> PyAV clip decoding in ``map_batches`` -> augmentation -> uint8 clips.

This is the only module that imports ``ray.data``.

Row schema of the dataset that ``build_dataset`` returns (one row per clip):
    clips   uint8 (T, H, W, 3)  augmented clip, ``data.frames`` frames of ``data.crop`` x ``data.crop``
    epoch   int64               pass over the shard list this clip belongs to
    order   int64               position of its file in that epoch's shuffled shard order
    key     str                 ``file`` or ``file#tar-key`` of the source video
    meta    str                 the video's JSON metadata (``{}`` when it has none)

Determinism: the shard order of epoch ``e`` is a permutation keyed by (seed, e); each video's clip offsets
and augmentations are keyed by (seed, epoch, source); Ray Data preserves order; the local shuffle buffer
is seeded per (seed, rank, pass). So for a given seed and epoch the same clips arrive in the same order.
"""

from __future__ import annotations

import json
import logging
import zlib
import itertools
from collections.abc import Iterable, Iterator

import numpy as np
import ray
import ray.data
from ray.data.collate_fn import NumpyBatchCollateFn

from vwm.config import DataConfig, TrajectoryConfig
from vwm.data.decode import DecodeError, decode_clips
from vwm.data.shards import iter_samples, list_sources
from vwm.data.trajectories import TrajectoryError, episode_windows, load_stats
from vwm.data.transforms import augment_clip

log = logging.getLogger(__name__)
_MAX_BLOCKS = 4096


@ray.remote(num_cpus=0)
class SkipLedger:
    """Counts the videos the pipeline skipped; logs each with path and reason up to a cap."""

    def __init__(self, log_cap: int = 50):
        self.log_cap, self.sources, self.entries = log_cap, set(), []

    def record(self, source: str, reason: str) -> None:
        if source in self.sources:  # every epoch meets the same bad file again: count it once
            return
        self.sources.add(source)
        if len(self.sources) <= self.log_cap:
            self.entries.append((source, reason))
            print(f"[vwm data] skipped {source}: {reason}", flush=True)
        elif len(self.sources) == self.log_cap + 1:
            print(f"[vwm data] more than {self.log_cap} videos skipped; further ones are counted only", flush=True)

    def count(self) -> int:
        return len(self.sources)

    def logged(self) -> list[tuple[str, str]]:
        return list(self.entries)


def skip_ledger(name: str):
    """The run's ledger actor, created on first use and found by name afterwards (from any worker)."""
    return SkipLedger.options(name=name, namespace="vwm", get_if_exists=True).remote()


def epoch_order(sources: list[str], seed: int, epoch: int) -> list[str]:
    perm = np.random.default_rng([seed, epoch, 0x5A4D]).permutation(len(sources))
    return [sources[i] for i in perm]


def _record(ledger, source: str, reason: str) -> None:
    # waited for: skips are rare, and the count must be complete once the clips have been consumed
    ray.get(ledger.record.remote(source, reason))


def _decode_files(batch: dict[str, np.ndarray], *, cfg: DataConfig, seed: int, ledger) -> Iterator[dict]:
    """One output batch per input file; nothing at all for a file with no usable video."""
    for uri, epoch, order in zip(batch["uri"], batch["epoch"], batch["order"]):
        out = _decode_file(str(uri), int(epoch), int(order), cfg, seed, ledger)
        if out is not None:
            yield out


def _decode_file(uri: str, epoch: int, order: int, cfg: DataConfig, seed: int, ledger) -> dict | None:
    clips, keys, metas = [], [], []
    for sample in iter_samples(uri, cfg.endpoint_url):
        if isinstance(sample, tuple):
            _record(ledger, *sample)
            continue
        rng = np.random.default_rng([seed, epoch, zlib.crc32(sample.source.encode())])
        try:
            raw = decode_clips(sample.video, frames=cfg.frames, frame_step=cfg.frame_step,
                               target_fps=cfg.target_fps, clips_per_video=cfg.clips_per_video, rng=rng)
        except DecodeError as e:
            _record(ledger, sample.source, str(e))
            continue
        for clip_THWC in raw:
            clips.append(augment_clip(clip_THWC, cfg.crop, cfg.augment, rng))
            keys.append(sample.source)
            metas.append(json.dumps(sample.meta, sort_keys=True))
    if not clips:
        return None
    n = len(clips)
    return {"clips": np.stack(clips), "epoch": np.full(n, epoch, dtype=np.int64),
            "order": np.full(n, order, dtype=np.int64), "key": np.asarray(keys, dtype=object),
            "meta": np.asarray(metas, dtype=object)}


def build_dataset(cfg: DataConfig, *, seed: int, epochs: Iterable[int], ledger, start_order: int = 0,
                  max_tasks: int | None = None) -> ray.data.Dataset:
    """A streaming dataset of augmented clips over the given epochs. Bad paths fail here, before any work.

    ``start_order`` skips the first files of the first epoch: a resumed run restarts at the file it was
    reading (clips of that file already consumed are seen again, at most one file's worth per worker).
    """
    sources = list_sources(cfg.paths, cfg.endpoint_url)
    epochs = list(epochs)
    items = [{"uri": uri, "epoch": e, "order": i}
             for e in epochs for i, uri in enumerate(epoch_order(sources, seed, e))
             if e != epochs[0] or i >= start_order]
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    # Ray Data reserves a share of the cluster per operator; on a 2-CPU node that caps our one decode
    # operator at a single task (measured: no speed-up from a second CPU). The reservation guards
    # multi-operator pipelines against starvation, which a single map operator cannot suffer.
    ctx.op_resource_reservation_enabled = False
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), _MAX_BLOCKS))
    if max_tasks is None:  # without the reservation, bound the tasks in flight by what the cluster can run
        max_tasks = max(1, int(ray.cluster_resources().get("CPU", 1) // cfg.decode_num_cpus))
    return ds.map_batches(_decode_files, batch_size=1, fn_kwargs={"cfg": cfg, "seed": seed, "ledger": ledger},
                          num_cpus=cfg.decode_num_cpus, concurrency=max_tasks)


class _NumpyCollate(NumpyBatchCollateFn):
    """Ray's collate protocol around our collator, so vwm.masks stays free of Ray imports."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def __call__(self, batch: dict[str, np.ndarray]):
        return self.fn(batch)


def clip_batches(source, collate_fn, cfg: DataConfig, *, seed: int, rank: int, pass_index: int = 0) -> Iterator:
    """Collated batches from a Dataset or a Ray Train worker's ``get_dataset_shard(...)``."""
    shuffle = cfg.shuffle_buffer > 0
    return source.iter_torch_batches(
        batch_size=cfg.batch_size, collate_fn=_NumpyCollate(collate_fn), prefetch_batches=cfg.prefetch_batches,
        local_shuffle_buffer_size=cfg.shuffle_buffer if shuffle else None,
        local_shuffle_seed=int(np.random.SeedSequence([seed, rank, pass_index]).generate_state(1)[0]) if shuffle
        else None,
        drop_last=True)


def local_batches(cfg: DataConfig, collate_fn, *, seed: int, ledger, position: tuple[int, int] | None = None):
    """Endless batches for a single consumer (``vwm pretrain --local``): one dataset per epoch, built as the
    previous one runs out, starting at a checkpoint's (epoch, file order) position."""
    epoch, order = position or (0, 0)
    for e in itertools.count(epoch):
        ds = build_dataset(cfg, seed=seed, epochs=[e], ledger=ledger, start_order=order if e == epoch else 0)
        yield from clip_batches(ds, collate_fn, cfg, seed=seed, rank=0, pass_index=e)


# ------------------------------------------------------------------------------------ trajectory windows
# Rows of ``build_trajectory_dataset`` (one per window; schema and window rule: vwm.data.trajectories):
#     frames_THWC  uint8 (T, H, W, 3)   T = cfg.frames frames, every cfg.frameskip-th env frame
#     actions_TA   float32 (T-1, A*k)   k = cfg.frameskip env actions per row, concatenated (z-scored if normalize)
#     states_TS    float32 (T, S)       env states at the kept frames (z-scored if normalize)
#     start        int64                first env frame of the window in its episode
#     epoch, order, key, meta           as for clips
# Batches: ``clip_batches(ds, collate_fn, cfg, ...)`` takes a TrajectoryConfig too (it reads batch_size,
# shuffle_buffer and prefetch_batches).
def _window_files(batch: dict[str, np.ndarray], *, cfg: TrajectoryConfig, seed: int, stats: dict | None,
                  ledger) -> Iterator[dict]:
    for uri, epoch, order in zip(batch["uri"], batch["epoch"], batch["order"]):
        out = _window_file(str(uri), int(epoch), int(order), cfg, seed, stats, ledger)
        if out is not None:
            yield out


def _window_file(uri: str, epoch: int, order: int, cfg: TrajectoryConfig, seed: int, stats: dict | None,
                 ledger) -> dict | None:
    windows, keys, metas = [], [], []
    for sample in iter_samples(uri, cfg.endpoint_url):
        if isinstance(sample, tuple):
            _record(ledger, *sample)
            continue
        rng = np.random.default_rng([seed, epoch, zlib.crc32(sample.source.encode())])
        try:
            got = episode_windows(sample, frames=cfg.frames, frameskip=cfg.frameskip, count=cfg.windows_per_episode,
                                  rng=rng, hflip=cfg.hflip, stats=stats, size=cfg.size)
        except (DecodeError, TrajectoryError) as e:
            _record(ledger, sample.source, str(e))
            continue
        if not got:
            _record(ledger, sample.source,
                    f"episode shorter than a window of {cfg.frames} frames every {cfg.frameskip}")
        windows += got
        keys += [sample.source] * len(got)
        metas += [json.dumps(sample.meta, sort_keys=True)] * len(got)
    if not windows:
        return None
    n = len(windows)
    out = {k: np.stack([w[k] for w in windows]) for k in ("frames_THWC", "actions_TA", "states_TS")}
    return {**out, "start": np.asarray([w["start"] for w in windows], dtype=np.int64),
            "epoch": np.full(n, epoch, dtype=np.int64), "order": np.full(n, order, dtype=np.int64),
            "key": np.asarray(keys, dtype=object), "meta": np.asarray(metas, dtype=object)}


def build_trajectory_dataset(cfg: TrajectoryConfig, *, seed: int, epochs: Iterable[int], ledger, start_order: int = 0,
                             max_tasks: int | None = None) -> ray.data.Dataset:
    """A streaming dataset of aligned (frames, actions, states) windows from trajectory shards, with the
    determinism of ``build_dataset``: shard order keyed by (seed, epoch), window starts and flips by
    (seed, epoch, episode). Bad paths and a missing stats file fail here, before any work."""
    sources = list_sources(cfg.paths, cfg.endpoint_url)
    stats = load_stats(cfg.stats, sources, cfg.endpoint_url) if cfg.normalize else None
    epochs = list(epochs)
    items = [{"uri": uri, "epoch": e, "order": i}
             for e in epochs for i, uri in enumerate(epoch_order(sources, seed, e))
             if e != epochs[0] or i >= start_order]
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.op_resource_reservation_enabled = False  # see build_dataset
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), _MAX_BLOCKS))
    if max_tasks is None:
        max_tasks = max(1, int(ray.cluster_resources().get("CPU", 1) // cfg.decode_num_cpus))
    return ds.map_batches(_window_files, batch_size=1,
                          fn_kwargs={"cfg": cfg, "seed": seed, "stats": stats, "ledger": ledger},
                          num_cpus=cfg.decode_num_cpus, concurrency=max_tasks)
