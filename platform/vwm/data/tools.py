"""`vwm data synth` and `vwm data inspect`: Ray tasks over shards, with a progress bar on the driver."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import ray
from tqdm import tqdm

from vwm.config import SyntheticConfig
from vwm.data.decode import DecodeError, encode_mp4, probe
from vwm.data.shards import DataSourceError, Sample, Skip, filesystem, iter_samples, list_sources, write_shard
from vwm.data.synthetic import render_video
from vwm.data.trajectories import TrajectoryError, TrajectorySummary


def wait_all(refs: list, desc: str) -> list:
    """ray.get with a progress bar; results in submission order."""
    index = {ref: i for i, ref in enumerate(refs)}
    results: list = [None] * len(refs)
    pending = list(refs)
    with tqdm(total=len(refs), desc=desc, unit="file") as bar:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            results[index[done[0]]] = ray.get(done[0])
            bar.update(1)
    return results


@ray.remote(num_cpus=1)
def _synth_shard(out: str, shard: int, indices: list[int], cfg: SyntheticConfig, seed: int,
                 endpoint_url: str | None) -> tuple[str, int, int]:
    samples = []
    for i in indices:
        frames_THWC, meta = render_video(cfg, seed, i)
        samples.append(Sample.from_video(f"video-{i:07d}", encode_mp4(frames_THWC, cfg.fps), meta))
    uri = f"{out.rstrip('/')}/shard-{shard:05d}.tar"
    return uri, len(samples), write_shard(uri, samples, endpoint_url)


def run_synth(out: str, *, num_videos: int, shards: int, seed: int, cfg: SyntheticConfig,
              endpoint_url: str | None = None) -> list[str]:
    """Write ``num_videos`` synthetic videos as ``shards`` WebDataset tars under ``out``, one Ray task each."""
    if out.startswith("s3://"):
        fs, path = filesystem(out, endpoint_url)
        bucket = path.split("/", 1)[0]
        if not fs.exists(bucket):
            raise DataSourceError(f"bucket {bucket!r} of --out {out} does not exist; create it first")
    shards = max(1, min(shards, num_videos))
    parts = np.array_split(np.arange(num_videos), shards)
    refs = [_synth_shard.remote(out, k, part.tolist(), cfg, seed, endpoint_url) for k, part in enumerate(parts)]
    results = wait_all(refs, "synth shards")
    total = sum(r[2] for r in results)
    print(f"wrote {num_videos} videos in {len(results)} shards ({total / 1e6:.1f} MB) under {out}")
    return [r[0] for r in results]


@dataclass
class InspectReport:
    videos: int = 0
    frames: int = 0  # video frames counted from the packets where a header has no count (Matroska, WebM)
    seconds: float = 0.0
    resolutions: Counter = field(default_factory=Counter)
    fps: Counter = field(default_factory=Counter)
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[tuple[str, str]] = field(default_factory=list)  # dropped members of videos kept
    trajectories: TrajectorySummary = field(default_factory=TrajectorySummary)

    def merge(self, other: InspectReport) -> None:
        self.trajectories.merge(other.trajectories)
        self.videos += other.videos
        self.frames += other.frames
        self.seconds += other.seconds
        self.resolutions.update(other.resolutions)
        self.fps.update(other.fps)
        self.unreadable.extend(other.unreadable)
        self.warnings.extend(other.warnings)

    def text(self) -> str:
        lines = [f"videos: {self.videos}", f"frames: {self.frames}",
                 f"total duration: {self.seconds:.1f} s ({self.seconds / 3600:.2f} h)",
                 "resolutions: " + ", ".join(f"{w}x{h}: {n}" for (w, h), n in self.resolutions.most_common()),
                 "fps: " + ", ".join(f"{f:g}: {n}" for f, n in sorted(self.fps.items())),
                 *self.trajectories.lines(), f"unreadable: {len(self.unreadable)}"]
        lines += [f"  {src}: {why}" for src, why in self.unreadable]
        if self.warnings:
            lines += [f"warnings (no video lost): {len(self.warnings)}"]
            lines += [f"  {src}: {why}" for src, why in self.warnings]
        return "\n".join(lines)


def inspect_file(uri: str, endpoint_url: str | None = None) -> InspectReport:
    """Facts of every video of one file (loose video or shard), and what could not be read."""
    report = InspectReport()
    for sample in iter_samples(uri, endpoint_url):
        if isinstance(sample, Skip):
            (report.unreadable if sample.lost else report.warnings).append((sample.source, sample.reason))
            continue
        try:
            with sample.open_video() as f:
                info = probe(f)
        except Exception as e:  # one bad video is a line of the report, not the end of it
            report.unreadable.append((sample.source, str(e) if isinstance(e, DecodeError) else
                                      f"{type(e).__name__}: {e}"))
            continue
        report.videos += 1
        report.frames += info.frames
        report.seconds += info.duration_s
        report.resolutions[(info.width, info.height)] += 1
        report.fps[round(info.fps, 2)] += 1
        if "npz" in sample.members:
            try:
                report.trajectories.add(sample)
            except (TrajectoryError, ValueError, KeyError) as e:
                report.unreadable.append((sample.source, f"bad trajectory arrays or metadata ({e})"))
    return report


_inspect_file = ray.remote(num_cpus=1)(inspect_file)


def run_inspect(paths: list[str], endpoint_url: str | None = None) -> InspectReport:
    sources = list_sources(paths, endpoint_url)
    report = InspectReport()
    for part in wait_all([_inspect_file.remote(u, endpoint_url) for u in sources], "inspect"):
        report.merge(part)
    return report
