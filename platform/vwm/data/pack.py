"""`vwm data pack`: a folder or S3 prefix of videos, and a CSV of their labels, as WebDataset tar shards.

Videos are stored as they are (no re-encoding) under a key made of their path below the root (dots of the
file name become ``_``: WebDataset keys end at the first dot); a video's CSV row becomes its ``KEY.json``,
which training carries along and probes read labels from. One Ray task writes each shard; the driver plans
the shards from the listing alone and shows a bar.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass

import ray

from vwm.data.shards import VIDEO_EXTS, DataSourceError, Sample, filesystem, parse_cell, write_shard
from vwm.data.tools import wait_all

log = logging.getLogger(__name__)


@dataclass
class PackResult:
    shards: list[str]
    videos: int
    labelled: int
    bytes: int
    unmatched_rows: list[str]  # CSV paths that name no video under the root

    def pattern(self) -> str:
        """The shard list as one brace pattern for ``data.paths``."""
        if len(self.shards) == 1:
            return self.shards[0]
        root = self.shards[0].rsplit("/", 1)[0]
        return f"{root}/shard-{{00000..{len(self.shards) - 1:05d}}}.tar"


def video_key(relative: str) -> str:
    """``a/b/clip.v2.mp4`` -> ``a/b/clip_v2``: the path below the root, without extension, one dot-free name."""
    folder, _, base = relative.rpartition("/")
    stem = base.rsplit(".", 1)[0].replace(".", "_")
    return f"{folder}/{stem}" if folder else stem


def read_labels(path: str, endpoint_url: str | None) -> dict[str, dict]:
    """CSV rows by their ``path`` column (relative to the video root, or absolute / s3:// URIs)."""
    fs, inner = filesystem(path, endpoint_url)
    if not fs.isfile(inner):
        raise DataSourceError(f"--labels {path}: no such file; give a CSV with a path column and label columns")
    with fs.open(inner, "rb") as f:
        reader = csv.DictReader(io.TextIOWrapper(f, encoding="utf-8-sig", newline=""))  # a spreadsheet's BOM
        if "path" not in (reader.fieldnames or []):
            raise DataSourceError(f"--labels {path}: no 'path' column (columns: {reader.fieldnames}); the header "
                                  "needs path and the label columns")
        rows = {}
        for row in reader:
            key = row.pop("path").strip()
            rows[key] = {k: parse_cell(v) for k, v in row.items() if k and v is not None and v != ""}
    return rows


@ray.remote(num_cpus=1)
def _pack_shard(uri: str, items: list[tuple[str, str, dict | None]], endpoint_url: str | None) -> int:
    samples = []
    for source, key, meta in items:
        fs, inner = filesystem(source, endpoint_url)
        with fs.open(inner, "rb") as f:
            samples.append(Sample.from_video(key, f.read(), meta, ext=source.rsplit(".", 1)[-1].lower()))
    return write_shard(uri, samples, endpoint_url)


def run_pack(videos: str, out: str, *, labels: str | None = None, shard_videos: int = 1000,
             shard_mb: float = 1000.0, endpoint_url: str | None = None) -> PackResult:
    """Pack every video under ``videos`` into shards of at most ``shard_videos`` videos and about
    ``shard_mb`` MB under ``out`` (``shard-00000.tar``, ...), labels from ``labels`` in ``KEY.json``."""
    fs, root = filesystem(videos, endpoint_url)
    if not fs.isdir(root):
        raise DataSourceError(f"--videos {videos}: no such folder or prefix; give the folder holding the videos")
    root = root.rstrip("/")
    listing = fs.find(root, detail=True)
    found = sorted((p, info.get("size") or 0) for p, info in listing.items() if p.lower().endswith(VIDEO_EXTS))
    if not found:
        raise DataSourceError(f"--videos {videos}: no video files under it (looked for {', '.join(VIDEO_EXTS)})")
    table = read_labels(labels, endpoint_url) if labels else {}
    uri = (lambda p: fs.unstrip_protocol(p)) if videos.startswith("s3://") else (lambda p: p)
    items, keys, used = [], set(), set()
    for path, size in found:
        relative = path[len(root) + 1:]
        key = video_key(relative)
        if key in keys:
            raise DataSourceError(f"--videos {videos}: {relative} and another video share the key {key!r} (names "
                                  "differing only in dots or extension); rename one")
        keys.add(key)
        name = next((n for n in (relative, path, uri(path)) if n in table), None)
        used.add(name)
        items.append((uri(path), key, table.get(name) if name else None, size))
    unmatched = sorted(set(table) - used)
    if unmatched:
        log.warning("%d rows of %s name no video under %s (first: %s)", len(unmatched), labels, videos, unmatched[0])
    groups, current, current_bytes = [], [], 0
    for item in items:
        if current and (len(current) >= shard_videos or current_bytes + item[3] > shard_mb * 1e6):
            groups.append(current)
            current, current_bytes = [], 0
        current.append(item[:3])
        current_bytes += item[3]
    groups.append(current)
    shards = [f"{out.rstrip('/')}/shard-{k:05d}.tar" for k in range(len(groups))]
    sizes = wait_all([_pack_shard.remote(s, g, endpoint_url) for s, g in zip(shards, groups)], "pack shards")
    return PackResult(shards, len(items), sum(1 for i in items if i[2] is not None), sum(sizes), unmatched)
