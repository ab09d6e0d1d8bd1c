"""Where videos live: folders or prefixes of video files and WebDataset tar shards, local or ``s3://``.

A WebDataset shard is a tar whose members are grouped by key: ``KEY.mp4`` and an optional ``KEY.json``
with metadata (label, fps, actions, ...). S3 goes through s3fs; ``endpoint_url`` serves S3-compatible
stores; credentials come from the standard AWS environment variables and are never logged.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field

import fsspec

VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".avi", ".mov")
SHARD_EXTS = (".tar",)


class DataSourceError(ValueError):
    """A path that matches nothing, a missing bucket, an unreadable listing: found before any work starts."""


@dataclass
class Sample:
    key: str
    video: bytes
    meta: dict = field(default_factory=dict)
    source: str = ""  # the file (and tar member) this came from, for error reports


def filesystem(uri: str, endpoint_url: str | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    opts = {"endpoint_url": endpoint_url} if endpoint_url and uri.startswith("s3://") else {}
    fs, path = fsspec.core.url_to_fs(uri, **opts)
    return fs, path


def _uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return fs.unstrip_protocol(path) if fs.protocol not in ("file", ("file", "local")) else path


def list_sources(paths: list[str], endpoint_url: str | None = None) -> list[str]:
    """Every video file and tar shard under the given files, folders, prefixes or globs, sorted."""
    found: list[str] = []
    for pattern in paths:
        fs, path = filesystem(pattern, endpoint_url)
        if pattern.startswith("s3://"):
            bucket = path.split("/", 1)[0]
            try:
                if not fs.exists(bucket):
                    raise DataSourceError(f"bucket {bucket!r} of {pattern} does not exist (endpoint "
                                          f"{endpoint_url or 'AWS default'}); create it or fix data.paths")
            except DataSourceError:
                raise
            except Exception as e:  # auth and network errors from botocore
                raise DataSourceError(f"cannot reach {pattern}: {type(e).__name__}: {e}") from None
        if fs.isdir(path):
            matches = [p for p in fs.find(path) if p.lower().endswith(VIDEO_EXTS + SHARD_EXTS)]
        elif any(c in path for c in "*?["):
            matches = [p for p in fs.glob(path) if p.lower().endswith(VIDEO_EXTS + SHARD_EXTS)]
        else:
            matches = [path] if fs.isfile(path) else []
        if not matches:
            raise DataSourceError(f"no video files or tar shards match {pattern} (looked for "
                                  f"{', '.join(VIDEO_EXTS + SHARD_EXTS)}); check data.paths")
        found.extend(_uri(fs, p) for p in sorted(matches))
    return found


def iter_samples(uri: str, endpoint_url: str | None = None) -> Iterator[Sample | tuple[str, str]]:
    """Samples of one file: a single video, or every key of a tar shard in order.

    Yields ``(source, reason)`` instead of a Sample for what cannot be read, so callers count the loss
    and go on: a truncated shard gives up its readable prefix and one error for the rest.
    """
    fs, path = filesystem(uri, endpoint_url)
    try:
        if not path.lower().endswith(SHARD_EXTS):
            with fs.open(path, "rb") as f:
                yield Sample(key=path.rsplit("/", 1)[-1].rsplit(".", 1)[0], video=f.read(), source=uri)
            return
        with fs.open(path, "rb") as f:
            yield from _iter_tar(f, uri, size=fs.size(path))
    except (OSError, tarfile.TarError, EOFError) as e:
        yield (uri, f"unreadable file ({type(e).__name__}: {e})")


def _iter_tar(fileobj, uri: str, size: int) -> Iterator[Sample | tuple[str, str]]:
    """Samples grouped by key from consecutive members; a damaged shard gives up its readable prefix."""
    current: Sample | None = None
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = member.name.rsplit("/", 1)[-1]
                key, _, ext = name.partition(".")
                data = tar.extractfile(member).read()
                if current is not None and current.key != key:
                    yield from _finish(current)
                    current = None
                if current is None:
                    current = Sample(key=key, video=b"", source=f"{uri}#{key}")
                if ext.lower() == "json":
                    try:
                        current.meta = json.loads(data)
                    except ValueError as e:
                        yield (f"{uri}#{name}", f"bad metadata JSON ({e}); video kept without metadata")
                elif "." + ext.lower() in VIDEO_EXTS:
                    current.video = data
            # a tar ends with two zero blocks; a cut on a member boundary would read as complete otherwise
            if size - tar.offset < 2 * tarfile.BLOCKSIZE:
                raise tarfile.ReadError("no end-of-archive marker")
        if current is not None:
            yield from _finish(current)
    except (tarfile.TarError, EOFError, OSError) as e:
        yield (uri, f"tar shard ends early or is corrupt after key {current.key if current else '(none)'}"
                    f" ({type(e).__name__}: {e}); the rest of this shard is lost")


def _finish(sample: Sample) -> Iterator[Sample | tuple[str, str]]:
    if sample.video:
        yield sample
    else:
        yield (sample.source, "tar key has metadata but no video member")


def write_shard(uri: str, samples: list[Sample], endpoint_url: str | None = None) -> int:
    """A WebDataset tar of ``KEY.mp4`` (+ ``KEY.json``), byte-identical for identical samples; returns bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for s in samples:
            members = [(f"{s.key}.mp4", s.video)]
            if s.meta:
                members.append((f"{s.key}.json", json.dumps(s.meta, sort_keys=True).encode()))
            for name, data in members:
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))
    payload = buf.getvalue()
    fs, path = filesystem(uri, endpoint_url)
    parent = path.rsplit("/", 1)[0]
    if parent and not uri.startswith("s3://"):
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "wb") as f:
        f.write(payload)
    return len(payload)
