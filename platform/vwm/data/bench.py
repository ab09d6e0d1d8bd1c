"""Data benchmark: clips/s and MB/s of the Ray Data pipeline at 1..N decode tasks, beside a plain
single-process PyAV loop doing the same work (same files, decoder, clip sampling and augmentation)."""

from __future__ import annotations

import multiprocessing
import platform
import time
import zlib
from datetime import date

import numpy as np
import torch

from vwm.benchreport import write_block
from vwm.config import BenchDataConfig
from vwm.data.decode import DecodeError, decode_clips
from vwm.data.shards import filesystem, iter_samples, list_sources
from vwm.data.transforms import augment_clip

def _single_process(cfg: BenchDataConfig, sources: list[str]) -> int:
    # one thread, as in a Ray worker (Ray sets OMP_NUM_THREADS=1): a 2-thread resize would make the
    # "single-process" baseline quietly use both cores
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _loop(cfg, sources)
    finally:
        torch.set_num_threads(threads)


def _loop(cfg: BenchDataConfig, sources: list[str]) -> int:
    d, clips = cfg.data, 0
    for uri in sources:
        for sample in iter_samples(uri, d.endpoint_url):
            if isinstance(sample, tuple):
                continue
            rng = np.random.default_rng([cfg.seed, 0, zlib.crc32(sample.source.encode())])
            try:
                raw = decode_clips(sample.video, frames=d.frames, frame_step=d.frame_step, target_fps=d.target_fps,
                                   clips_per_video=d.clips_per_video, rng=rng)
            except DecodeError:
                continue
            clips += len([augment_clip(c, d.crop, d.augment, rng) for c in raw])
    return clips


def run_bench_data(cfg: BenchDataConfig) -> list[dict]:
    from vwm.data.pipeline import build_dataset, skip_ledger
    from vwm.data.tools import run_synth
    from vwm.raycluster import connect

    connect(num_cpus=max(cfg.cpus))
    run_synth(cfg.out, num_videos=cfg.num_videos, shards=cfg.shards, seed=cfg.seed, cfg=cfg.synthetic,
              endpoint_url=cfg.data.endpoint_url)
    data = cfg.data.model_copy(update={"paths": [cfg.out]})
    sources = list_sources(data.paths, data.endpoint_url)
    megabytes = sum(filesystem(u, data.endpoint_url)[0].size(filesystem(u, data.endpoint_url)[1])
                    for u in sources) / 1e6
    ledger = skip_ledger("bench-data")

    def pipeline(tasks: int) -> int:
        ds = build_dataset(data, seed=cfg.seed, epochs=[0], ledger=ledger, max_tasks=tasks)
        return sum(len(b["clips"]) for b in ds.iter_batches(batch_size=data.batch_size, batch_format="numpy"))

    pipeline(max(cfg.cpus))  # warm-up: worker processes, imports, codec init
    rows = []
    t0 = time.perf_counter()
    clips = _single_process(cfg, sources)
    rows.append({"what": "single-process PyAV loop", "cpus": 1, "clips": clips, "s": time.perf_counter() - t0})
    # the machine's own ceiling: the same loop in N bare processes, no Ray, files split between them
    ctx = multiprocessing.get_context("spawn")
    for n in (c for c in cfg.cpus if c > 1):
        with ctx.Pool(n) as pool:
            pool.starmap(_single_process, [(cfg, sources[:1])] * n)  # warm-up: imports in each process
            t0 = time.perf_counter()
            clips = sum(pool.starmap(_single_process, [(cfg, sources[i::n]) for i in range(n)]))
            rows.append({"what": "bare processes, no Ray (ceiling)", "cpus": n, "clips": clips,
                         "s": time.perf_counter() - t0})
    for n in cfg.cpus:
        t0 = time.perf_counter()
        clips = pipeline(n)
        rows.append({"what": "Ray Data pipeline", "cpus": n, "clips": clips, "s": time.perf_counter() - t0})
    base = rows[0]["clips"] / rows[0]["s"]
    for r in rows:
        r["clips_per_s"] = r["clips"] / r["s"]
        r["mb_per_s"] = megabytes / r["s"]
        r["vs_loop"] = r["clips_per_s"] / base
    table = format_table(cfg, rows, megabytes)
    print(table)
    if cfg.report:
        write_block(cfg.report, "bench_data", table)
    return rows


def format_table(cfg: BenchDataConfig, rows: list[dict], megabytes: float) -> str:
    d, s = cfg.data, cfg.synthetic
    head = (f"{date.today().isoformat()}, {platform.node() or 'this machine'} ({platform.machine()}): "
            f"{cfg.num_videos} H.264 videos of {s.video_frames} frames at {s.width}x{s.height} in {cfg.shards} tar "
            f"shards ({megabytes:.1f} MB); {d.clips_per_video} clips/video of {d.frames} frames every "
            f"{d.frame_step}, random resized crop to {d.crop}.\n\n")
    lines = ["| reader | decode CPUs | clips | seconds | clips/s | MB/s | vs. loop |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['what']} | {r['cpus']} | {r['clips']} | {r['s']:.2f} | {r['clips_per_s']:.1f} | "
              f"{r['mb_per_s']:.2f} | {r['vs_loop']:.2f}x |" for r in rows]
    return head + "\n".join(lines)
