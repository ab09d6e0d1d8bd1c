"""Where videos live: folders or prefixes of video files and WebDataset tar shards, local or ``s3://``.

A WebDataset shard is a tar whose members are grouped by key, following WebDataset's rule: the key is
the member's full path up to the first dot of its file name, the extension is the rest (``a/clip.v2.mp4``
is key ``a/clip``, extension ``v2.mp4``). A sample holds every member of its key, e.g. ``KEY.mp4``, an
optional ``KEY.json`` with metadata (label, fps, actions, ...), ``KEY.npz``. A member is a video when its
last extension is one of ``VIDEO_EXTS``. S3 goes through s3fs; ``endpoint_url`` serves S3-compatible
stores; credentials come from the standard AWS environment variables and are never logged.

A bad shard never raises: ``iter_samples`` yields a ``Skip`` naming the file (or tar key) and the reason,
after every complete sample before the damage. A loose video file is opened only when its video is read.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import BinaryIO, NamedTuple

import fsspec

VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".avi", ".mov")
SHARD_EXTS = (".tar", ".tar.gz", ".tgz")  # any tar compression is read; these names are listed


class DataSourceError(ValueError):
    """A path that matches nothing, a missing bucket, an unreadable listing: found before any work starts."""


class Skip(NamedTuple):
    """Something ``iter_samples`` could not deliver whole: a lost video, or (``lost=False``) a warning about
    a member dropped from a sample whose video is kept."""

    source: str
    reason: str
    lost: bool = True


class MetadataError(ValueError):
    """A ``KEY.json`` member that is not a JSON object."""


def split_name(name: str) -> tuple[str, str] | None:
    """(key, extension) of a member path by WebDataset's rule; None for a file name without a dot."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not stem or not dot or not ext:
        return None
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def is_video_ext(ext: str) -> bool:
    return "." + ext.rsplit(".", 1)[-1].lower() in VIDEO_EXTS


def parse_meta(data: bytes, source: str) -> dict:
    """The metadata object of a ``KEY.json`` member; MetadataError naming ``source`` for anything else."""
    try:
        meta = json.loads(data)
    except ValueError as e:
        raise MetadataError(f"{source}: metadata is not valid JSON ({e}); fix or remove the .json member") from None
    if not isinstance(meta, dict):
        raise MetadataError(f"{source}: metadata must be a JSON object, got {type(meta).__name__} "
                            f"({data[:40]!r}); write an object such as {{\"label\": ...}} or remove the .json member")
    return meta


def parse_cell(text: str) -> int | float | str:
    """A label from a CSV cell: a number where it reads as one, else the text."""
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    return text


@dataclass
class Sample:
    """All members of one key: extension (``mp4``, ``json``, ``v2.mp4``, ``npz``, ...) -> bytes."""

    key: str
    members: dict[str, bytes] = field(default_factory=dict)
    source: str = ""  # the file (and tar key) this came from, for error reports
    # a loose video file: opened on demand instead of held in ``members``
    opener: Callable[[], BinaryIO] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_video(cls, key: str, video: bytes, meta: dict | None = None, ext: str = "mp4") -> Sample:
        """A video sample with optional metadata, stored as ``KEY.json`` with sorted keys (deterministic)."""
        members = {ext: video}
        if meta:
            members["json"] = json.dumps(meta, sort_keys=True).encode()
        return cls(key=key, members=members)

    @property
    def video_ext(self) -> str | None:
        """Extension of the first video member (or of the loose file), None when the sample has none."""
        if self.opener is not None:
            ext = (split_name(self.source.rsplit("/", 1)[-1]) or ("", ""))[1]
            return ext if is_video_ext(ext) else None
        return next((ext for ext in self.members if is_video_ext(ext)), None)

    @property
    def video(self) -> bytes:
        """The video's bytes, b"" if none; ``open_video`` reads a loose file without loading it whole."""
        if self.opener is not None:
            with self.opener() as f:
                return f.read()
        ext = self.video_ext
        return self.members[ext] if ext is not None else b""

    def open_video(self) -> BinaryIO:
        """The video as a seekable binary file (use in a ``with`` block)."""
        return self.opener() if self.opener is not None else io.BytesIO(self.video)

    @property
    def meta(self) -> dict:
        data = self.members.get("json")
        return {} if data is None else parse_meta(data, f"{self.source or self.key}.json")


def filesystem(uri: str, endpoint_url: str | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    opts = {"endpoint_url": endpoint_url} if endpoint_url and uri.startswith("s3://") else {}
    fs, path = fsspec.core.url_to_fs(uri, **opts)
    return fs, path


def _uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    return fs.unstrip_protocol(path) if fs.protocol not in ("file", ("file", "local")) else path


_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """WebDataset's shard lists: ``shard-{00000..00099}.tar`` (a numeric range, zero-padded as written) and
    ``{train,val}/x.tar`` (alternatives), any number of braces, in order."""
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    body, head, tail = m.group(1), pattern[:m.start()], pattern[m.end():]
    if "," in body or ".." not in body:
        options = body.split(",")
    else:
        lo, _, hi = body.partition("..")
        if not (lo.isdigit() and hi.isdigit()) or int(lo) > int(hi):
            raise DataSourceError(f"{pattern}: {{{body}}} is not a range like {{00000..00099}}; write "
                                  "{FIRST..LAST} with FIRST <= LAST, or alternatives {a,b,c}")
        padded = any(len(x) > 1 and x[0] == "0" for x in (lo, hi))
        width = max(len(lo), len(hi)) if padded else 0
        options = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    return [x for option in options for x in expand_braces(head + option + tail)]


def _named_files(fs: fsspec.AbstractFileSystem, path: str, pattern: str) -> list[str]:
    """The files a brace pattern names, every one of which must exist (one listing per folder)."""
    named = expand_braces(path)
    present: set[str] = set()
    for folder in sorted({p.rsplit("/", 1)[0] for p in named}):
        try:
            present.update(p.rstrip("/") for p in fs.ls(folder, detail=False))
        except FileNotFoundError:
            pass
    missing = [p for p in named if p not in present]
    if missing:
        raise DataSourceError(f"{pattern}: {len(missing)} of the {len(named)} files it names do not exist (first: "
                              f"{missing[0]}); fix the range or the folder")
    return named


def list_sources(paths: list[str], endpoint_url: str | None = None) -> list[str]:
    """Every video file and tar shard under the given files, folders, prefixes, globs or brace patterns
    (``shard-{00000..00099}.tar``), sorted."""
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
        if "{" in path:
            matches = _named_files(fs, path, pattern)
        elif fs.isdir(path):
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


def iter_samples(uri: str, endpoint_url: str | None = None) -> Iterator[Sample | Skip]:
    """Samples of one file: a loose video (opened on demand), or every key of a tar shard in order.

    Yields a ``Skip`` instead of a Sample for what cannot be read, so callers count the loss and go on: a
    damaged shard gives up every complete sample before the damage, then one Skip for the rest.
    """
    fs, path = filesystem(uri, endpoint_url)
    if not path.lower().endswith(SHARD_EXTS):
        name = path.rsplit("/", 1)[-1]
        key = (split_name(name) or (name, ""))[0]
        yield Sample(key=key, source=uri, opener=partial(fs.open, path, "rb"))
        return
    try:
        with fs.open(path, "rb") as f:
            yield from _iter_tar(f, uri)
    except (OSError, tarfile.TarError, EOFError) as e:
        yield Skip(uri, f"unreadable file ({type(e).__name__}: {e})")


class _Header(tarfile.TarInfo):
    """Keeps the header error tarfile stopped at: it reads a bad header mid-archive, or a cut on a member
    boundary, as the end of the archive, silently."""

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tar)
        except tarfile.HeaderError as e:
            tar.stopped_at = e
            raise


def _iter_tar(fileobj, uri: str) -> Iterator[Sample | Skip]:
    """Samples grouped by key from consecutive members (plain or compressed tar, read as a stream)."""
    current: Sample | None = None
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*", tarinfo=_Header) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                parts = split_name(member.name)
                if parts is None:
                    continue  # WebDataset ignores names without an extension too
                key, ext = parts
                data = tar.extractfile(member).read()
                if current is not None and current.key != key:
                    yield from _finish(current)
                    current = None
                if current is None:
                    current = Sample(key=key, source=f"{uri}#{key}")
                if ext == "json":
                    try:
                        parse_meta(data, f"{uri}#{member.name}")
                    except MetadataError as e:
                        yield Skip(f"{uri}#{member.name}", f"{e}; video kept without metadata", lost=False)
                        continue
                current.members[ext] = data
            _check_end(tar)
        if current is not None:
            yield from _finish(current)
    except (tarfile.TarError, EOFError, OSError) as e:
        if current is not None and current.video:  # every member read so far is whole
            yield current
        yield Skip(uri, f"tar shard ends early or is corrupt after key {current.key if current else '(none)'}"
                        f" ({type(e).__name__}: {e}); the rest of this shard is lost")


def _check_end(tar: tarfile.TarFile) -> None:
    """A tar ends with zero blocks; anything else where tarfile stopped is damage, not the end."""
    stop = getattr(tar, "stopped_at", None)
    if not isinstance(stop, tarfile.EOFHeaderError):
        what = "no end-of-archive marker" if isinstance(stop, tarfile.EmptyHeaderError) else str(stop)
        raise tarfile.ReadError(f"{what} at byte {tar.offset} of the uncompressed tar")
    # a zeroed stretch reads as an end marker too: what follows a real one is zero padding only
    while chunk := tar.fileobj.read(1 << 16):
        if chunk.strip(b"\0"):
            raise tarfile.ReadError(f"data after the end-of-archive marker at byte {tar.offset} (zeroed "
                                    "headers?)")


def _finish(sample: Sample) -> Iterator[Sample | Skip]:
    if sample.video:
        yield sample
    else:  # metadata or other files without a video: nothing lost
        yield Skip(sample.source, f"tar key has no video member (members: {', '.join(sample.members)}); "
                                  "ignored", lost=False)


def write_shard(uri: str, samples: list[Sample], endpoint_url: str | None = None) -> int:
    """A WebDataset tar of every member ``KEY.EXT`` of each sample, in order (USTAR, mtime 0, mode 644):
    byte-identical for identical samples. Returns the size in bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for s in samples:
            for ext, data in s.members.items():
                name = f"{s.key}.{ext}"
                if split_name(name) != (s.key, ext.lower()):
                    raise ValueError(f"sample key {s.key!r} with member {ext!r} would read back under another key "
                                     "(no dot allowed in the key's file name, extension must be non-empty); "
                                     "rename the key")
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
