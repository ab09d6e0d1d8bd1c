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
import math
import zlib
import itertools
from collections.abc import Callable, Iterable, Iterator
from functools import partial

import numpy as np
import ray
import ray.data
from ray.data.collate_fn import NumpyBatchCollateFn

from vwm.config import DataConfig, TrajectoryConfig
from vwm.data.decode import DecodeError, iter_clips
from vwm.data.shards import Skip, iter_samples, list_sources
from vwm.data.trajectories import TrajectoryError, episode_windows, load_stats
from vwm.data.transforms import augment_clip

log = logging.getLogger(__name__)
_MAX_BLOCKS = 4096
# clips of one output block: a shard's clips leave in several blocks, not stacked into one big one
_BATCH_BYTES = 32 << 20


@ray.remote(num_cpus=0)
class SkipLedger:
    """Counts the videos the pipeline skipped; logs each with path and reason up to a cap. Warnings (a
    dropped member of a kept video) are logged once each, never counted."""

    def __init__(self, log_cap: int = 50):
        self.log_cap, self.sources, self.entries = log_cap, set(), []
        self.warned: dict[str, str] = {}

    def warn(self, source: str, reason: str) -> None:
        if source in self.warned:
            return
        self.warned[source] = reason
        if len(self.warned) <= self.log_cap:
            print(f"[vwm data] warning {source}: {reason}", flush=True)

    def warnings(self) -> dict[str, str]:
        return dict(self.warned)

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


_held_ledgers: dict[tuple[str, str], object] = {}


def skip_ledger(name: str):
    """The ledger actor of that name, created on first use and found by name afterwards (from any worker).
    This process keeps its handle for as long as it is attached to the cluster: a run resumed in the same
    process would otherwise be handed, by name, the earlier run's ledger while Ray is still tearing it down
    (its last handle just went away), and count into an actor that dies under it. The ledger lives on the
    node of the process that creates it (the driver's): a worker node lost mid-run must not take it along."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ctx = ray.get_runtime_context()
    key = (ctx.get_job_id(), name)
    if key not in _held_ledgers:
        here = NodeAffinitySchedulingStrategy(ctx.get_node_id(), soft=True)
        _held_ledgers[key] = SkipLedger.options(name=name, namespace="vwm", get_if_exists=True,
                                                scheduling_strategy=here).remote()
    return _held_ledgers[key]


def run_ledger(run_name: str):
    """A training run's ledger: the driver's dataset and every worker of the run count into it."""
    return skip_ledger(f"skips-{run_name}")


def epoch_order(sources: list[str], seed: int, epoch: int) -> list[str]:
    perm = np.random.default_rng([seed, epoch, 0x5A4D]).permutation(len(sources))
    return [sources[i] for i in perm]


def _record(ledger, skip: Skip) -> None:
    # waited for: skips are rare, and the count must be complete once the clips have been consumed
    ray.get((ledger.record if skip.lost else ledger.warn).remote(skip.source, skip.reason))


def _decode_files(batch: dict[str, np.ndarray], *, cfg: DataConfig, seed: int, ledger) -> Iterator[dict]:
    """Output batches of at most ``_BATCH_BYTES`` of clips per input file; none for a file with no usable video."""
    for uri, epoch, order in zip(batch["uri"], batch["epoch"], batch["order"]):
        yield from _decode_file(str(uri), int(epoch), int(order), cfg, seed, partial(_record, ledger))


def _decode_file(uri: str, epoch: int, order: int, cfg: DataConfig, seed: int, record: Callable[[Skip], None],
                 batch_bytes: int = _BATCH_BYTES) -> Iterator[dict]:
    """Augmented clips of every video of one file, in batches of about ``batch_bytes``."""
    def clips_of(sample, rng: np.random.Generator) -> dict[str, np.ndarray]:
        with sample.open_video() as f:
            clips = [augment_clip(clip_THWC, cfg.crop, cfg.augment, rng)
                     for clip_THWC in iter_clips(f, frames=cfg.frames, frame_step=cfg.frame_step,
                                                 target_fps=cfg.target_fps, clips_per_video=cfg.clips_per_video,
                                                 rng=rng)]
        return {"clips": clips}

    yield from _file_rows(uri, epoch, order, cfg.endpoint_url, seed, record, clips_of, batch_bytes)


def _file_rows(uri: str, epoch: int, order: int, endpoint_url: str | None, seed: int,
               record: Callable[[Skip], None], rows_of: Callable[..., dict[str, list[np.ndarray]]],
               batch_bytes: int = _BATCH_BYTES) -> Iterator[dict]:
    """Rows of every sample of one file (``rows_of(sample, rng)``: per column, a list with one array per clip
    or window; a sample's rows stay in one batch, stacked only when the batch leaves), in batches of about
    ``batch_bytes``, with their source columns.
    Any failure of one sample, whatever its kind, is a recorded skip of that sample; a storage error
    mid-shard loses the rest of the file, not the run."""
    parts: list[dict[str, list[np.ndarray]]] = []
    keys, metas, size = [], [], 0
    samples = iter_samples(uri, endpoint_url)
    while True:
        try:
            sample = next(samples, None)
        except Exception as e:
            record(Skip(uri, f"reading failed ({type(e).__name__}: {e}); the rest of this file is lost"))
            break
        if sample is None:
            break
        if isinstance(sample, Skip):
            record(sample)
            continue
        rng = np.random.default_rng([seed, epoch, zlib.crc32(sample.source.encode())])
        try:
            meta = json.dumps(sample.meta, sort_keys=True)
            rows = rows_of(sample, rng)
        except Exception as e:
            record(Skip(sample.source, str(e) if isinstance(e, (DecodeError, TrajectoryError))
                        else f"{type(e).__name__}: {e}"))
            continue
        n = len(next(iter(rows.values()))) if rows else 0
        if not n:
            continue
        parts.append(rows)
        keys += [sample.source] * n
        metas += [meta] * n
        size += sum(np.asarray(a).nbytes for column in rows.values() for a in column)
        if size >= batch_bytes:
            yield _rows_batch(parts, keys, metas, epoch, order)
            parts, keys, metas, size = [], [], [], 0
    if parts:
        yield _rows_batch(parts, keys, metas, epoch, order)


def _rows_batch(parts: list[dict[str, list[np.ndarray]]], keys: list[str], metas: list[str], epoch: int,
                order: int) -> dict:
    n = len(keys)
    return {**{k: np.stack([row for p in parts for row in p[k]]) for k in parts[0]},
            "epoch": np.full(n, epoch, dtype=np.int64), "order": np.full(n, order, dtype=np.int64),
            "key": np.asarray(keys, dtype=object), "meta": np.asarray(metas, dtype=object)}


def _file_dataset(sources: list[str], *, seed: int, epochs: Iterable[int], start_order: int, fn, fn_kwargs: dict,
                  num_cpus: float, max_tasks: int | None, progress_bars: bool) -> ray.data.Dataset:
    """(file, epoch, order) items, each epoch's files in a (seed, epoch)-keyed order, mapped by ``fn``."""
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
    # Ray Data's bars redraw per block under a training run, and their totals count every pass the
    # dataset covers (sized for one video per file) rather than the clips the run will read: the trainer's
    # own progress line is the one to read; ``data.progress_bars`` brings Ray's back for debugging input.
    ctx.enable_progress_bars = ctx.print_on_execution_start = progress_bars
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), _MAX_BLOCKS))
    if max_tasks is None:  # without the reservation, bound the tasks in flight by what the cluster can run
        max_tasks = max(1, int(ray.cluster_resources().get("CPU", 1) // num_cpus))
    return ds.map_batches(fn, batch_size=1, fn_kwargs=fn_kwargs, num_cpus=num_cpus,
                          compute=ray.data.TaskPoolStrategy(size=max_tasks))


def covering_epochs(rows_needed: int, files: int, rows_per_file: int, cap: int = 10_000) -> int:
    """Passes over ``files`` that surely yield ``rows_needed`` rows, assuming as few as ``rows_per_file`` per
    file (one video or episode each), plus one for what the workers' drop_last leaves behind."""
    return max(1, min(math.ceil(rows_needed / max(1, files * rows_per_file)) + 1, max(1, cap // max(1, files))))


def build_dataset(cfg: DataConfig, *, seed: int, epochs: Iterable[int], ledger, start_order: int = 0,
                  max_tasks: int | None = None) -> ray.data.Dataset:
    """A streaming dataset of augmented clips over the given epochs. Bad paths fail here, before any work.

    ``start_order`` skips the first files of the first epoch: a resumed run restarts at the file it was
    reading (clips of that file already consumed are seen again, at most one file's worth per worker).
    """
    return _file_dataset(list_sources(cfg.paths, cfg.endpoint_url), seed=seed, epochs=epochs,
                         start_order=start_order, fn=_decode_files,
                         fn_kwargs={"cfg": cfg, "seed": seed, "ledger": ledger}, num_cpus=cfg.decode_num_cpus,
                         max_tasks=max_tasks, progress_bars=cfg.progress_bars)


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


def local_batches(cfg: DataConfig | TrajectoryConfig, collate_fn, *, seed: int, ledger,
                  position: tuple[int, int] | None = None):
    """Endless batches for a single consumer (``--local`` runs): one dataset per epoch, built as the previous
    one runs out, starting at a checkpoint's (epoch, file order) position. Clips for a DataConfig, windows
    for a TrajectoryConfig."""
    build = build_trajectory_dataset if isinstance(cfg, TrajectoryConfig) else build_dataset
    epoch, order = position or (0, 0)
    for e in itertools.count(epoch):
        ds = build(cfg, seed=seed, epochs=[e], ledger=ledger, start_order=order if e == epoch else 0)
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
    def windows_of(sample, rng: np.random.Generator) -> dict[str, np.ndarray]:
        got = episode_windows(sample, frames=cfg.frames, frameskip=cfg.frameskip, count=cfg.windows_per_episode,
                              rng=rng, hflip=cfg.hflip, stats=stats, size=cfg.size)
        if not got:
            raise TrajectoryError(f"episode shorter than a window of {cfg.frames} frames every {cfg.frameskip}")
        return {k: [np.asarray(w[k]) for w in got] for k in ("frames_THWC", "actions_TA", "states_TS", "start")}

    for uri, epoch, order in zip(batch["uri"], batch["epoch"], batch["order"]):
        yield from _file_rows(str(uri), int(epoch), int(order), cfg.endpoint_url, seed, partial(_record, ledger),
                              windows_of)


def build_trajectory_dataset(cfg: TrajectoryConfig, *, seed: int, epochs: Iterable[int], ledger, start_order: int = 0,
                             max_tasks: int | None = None) -> ray.data.Dataset:
    """A streaming dataset of aligned (frames, actions, states) windows from trajectory shards, with the
    determinism of ``build_dataset``: shard order keyed by (seed, epoch), window starts and flips by
    (seed, epoch, episode). Bad paths and a missing stats file fail here, before any work."""
    sources = list_sources(cfg.paths, cfg.endpoint_url)
    stats = load_stats(cfg.stats, sources, cfg.endpoint_url) if cfg.normalize else None
    return _file_dataset(sources, seed=seed, epochs=epochs, start_order=start_order, fn=_window_files,
                         fn_kwargs={"cfg": cfg, "seed": seed, "stats": stats, "ledger": ledger},
                         num_cpus=cfg.decode_num_cpus, max_tasks=max_tasks, progress_bars=cfg.progress_bars)
