"""Checkpoints: one writer and one reader for every task, in-process and distributed runs alike.

A checkpoint folder holds the engine's state (``engine.pt``, or DeepSpeed's per-rank shards under
``engine/``), the task's own state (``task.pt``, rank 0: e.g. the EMA target, identical on every rank),
``meta.json`` (step and data position), one ``rng_rank{R}.pt`` per rank (ranks never write files of the same
name), and in the run's final checkpoint the world-model artifact under ``world_model/``.

In-process runs keep checkpoints under ``RUN_DIR/checkpoints/step_XXXXXXXX``, written to a temporary folder
beside them and renamed into place (complete or absent). Distributed runs write each rank's part under
``RUN_DIR/.tmp/.tmp-rank{R}`` and hand it to Ray, which stores it under ``dist.storage_path/RUN_NAME/checkpoint_*``
(local or s3://). Temporary folders a killed save left are removed when the run restarts.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

_PREFIX = "step_"
TASK_FILE = "task.pt"
META_FILE = "meta.json"
ARTIFACT_DIR = "world_model"

log = logging.getLogger(__name__)


def write_checkpoint(directory: Path, engine, task, *, rank: int, step: int, position, final: bool) -> None:
    """Every rank calls this: the engine's save (and under ZeRO-3 the export's gather) is collective."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    engine.save(directory)
    module_state = engine.module_state() if final else None
    if rank == 0:
        torch.save(task.state_dict(), directory / TASK_FILE)
        (directory / META_FILE).write_text(json.dumps({"step": step, "data_position": {
            "next_step": step, "position": list(position) if position else None}}))
        if final:
            task.export(directory / ARTIFACT_DIR, module_state)
    torch.save(rng_state(), directory / f"rng_rank{rank}.pt")


def read_checkpoint(directory: Path, engine, task, *, rank: int) -> tuple[int, tuple[int, int] | None]:
    """Restore engine, task and this rank's RNG streams; returns (step, data position) to continue from."""
    directory = Path(directory)
    if not (directory / META_FILE).is_file():
        raise FileNotFoundError(f"checkpoint {directory} has no {META_FILE}: it was deleted or never finished; "
                                "start without it or from another checkpoint")
    if not (directory / TASK_FILE).is_file():
        raise FileNotFoundError(f"checkpoint {directory} has no {TASK_FILE}: an older vwm wrote it; resume it "
                                "with that version or start a fresh run")
    engine.load(directory)
    task.load_state_dict(torch.load(directory / TASK_FILE, map_location="cpu", weights_only=True))
    rng_file = directory / f"rng_rank{rank}.pt"
    if rng_file.is_file():  # absent when resuming on more ranks than saved: streams are keyed anyway
        try:
            state = torch.load(rng_file, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:  # numpy objects (older vwm) or anything worse: never unpickled
            log.warning("%s holds more than plain tensors; this rank's RNG streams start fresh", rng_file)
        else:
            set_rng_state(state)
    meta = read_meta(directory)
    return meta["step"], meta["data_position"]["position"]


def read_meta(directory: Path) -> dict:
    meta = json.loads((Path(directory) / META_FILE).read_text())
    pos = meta["data_position"].get("position")
    meta["data_position"]["position"] = tuple(pos) if pos else None
    return meta


def latest_meta(root: str) -> dict | None:
    """``meta.json`` of the newest complete checkpoint under ``root``: an in-process run's ``checkpoints``
    folder or a distributed run's storage folder (a local path or a Ray storage URI such as
    ``s3://bucket/runs/NAME?endpoint_override=...``). The driver reads it to start the data where it stopped."""
    import pyarrow.fs as pafs

    if "://" in root:
        fs, path = pafs.FileSystem.from_uri(root)
    else:
        fs, path = pafs.LocalFileSystem(), str(Path(root).resolve())
    best = None
    for info in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
        name = info.path.rsplit("/", 1)[-1]
        if info.type != pafs.FileType.Directory or not name.startswith((_PREFIX, "checkpoint_")):
            continue
        try:
            with fs.open_input_stream(f"{info.path}/{META_FILE}") as f:
                meta = json.loads(f.read())
        except (FileNotFoundError, OSError, ValueError):
            continue  # a checkpoint still being written, or deleted under us
        if best is None or meta["step"] > best["step"]:
            best = meta
    if best is not None:
        pos = best["data_position"].get("position")
        best["data_position"]["position"] = tuple(pos) if pos else None
    return best


def save_local(root: str | Path, step: int, keep: int, write: Callable[[Path], None]) -> Path:
    """``write`` into a temporary folder, rename it to ``root/step_XXXXXXXX``; keep the newest ``keep``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{_PREFIX}{step:08d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def sweep_temp(root: str | Path, pattern: str = ".tmp-*") -> int:
    """Remove the temporary folders a killed save left under ``root`` (``pattern``); returns how many."""
    root = Path(root)
    stale = [p for p in root.glob(pattern) if p.is_dir()] if root.is_dir() else []
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    if stale:
        log.info("removed %d unfinished checkpoint folder(s) under %s", len(stale), root)
    return len(stale)


def prune_unregistered(root: str, registered: list[str]) -> list[str]:
    """Delete the ``checkpoint_*`` folders of a distributed run's storage (local or a Ray storage URI) that
    Ray's checkpoint manager does not hold (``registered``: their paths): a worker killed between a
    checkpoint's upload and its registration leaves one that Ray never prunes. Returns what was deleted."""
    import pyarrow.fs as pafs

    if "://" in root:
        fs, path = pafs.FileSystem.from_uri(root)
    else:
        fs, path = pafs.LocalFileSystem(), str(Path(root).resolve())
    keep = {p.rstrip("/").rsplit("/", 1)[-1] for p in registered}
    deleted = []
    for info in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
        name = info.path.rsplit("/", 1)[-1]
        if info.type == pafs.FileType.Directory and name.startswith("checkpoint_") and name not in keep:
            fs.delete_dir(info.path)
            deleted.append(info.path)
    if deleted:
        log.info("pruned %d checkpoint folder(s) Ray did not register: %s", len(deleted), ", ".join(deleted))
    return deleted


def list_checkpoints(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(_PREFIX) and (p / META_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX):]))


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


class LocalSink:
    """Checkpoints of an in-process run: written by ``write_checkpoint`` into ``root``, newest ``keep`` kept."""

    def __init__(self, root: Path, engine, task, *, keep: int, total_steps: int):
        self.root, self.engine, self.task, self.keep, self.total_steps = root, engine, task, keep, total_steps

    def save(self, done: int, position, metrics: dict) -> Path:
        return save_local(self.root, done, self.keep, lambda d: write_checkpoint(
            d, self.engine, self.task, rank=0, step=done, position=position, final=done == self.total_steps))

    def report(self, done: int, metrics: dict) -> None:
        pass  # nobody to report to in-process: metrics already went to the tracker


def rng_state() -> dict:
    """Plain tensors, ints and tuples only, so that reading it back never unpickles objects."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos,
                                                       has_gauss, gauss),
            "python": random.getstate(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
