"""Checkpoint contents and local storage.

A checkpoint folder holds the engine's state (``engine.pt``, or DeepSpeed's per-rank shards under
``engine/``), the EMA target (``target.pt``, rank 0: it is identical on every rank), ``meta.json`` (step and
data position) and one ``rng_rank{R}.pt`` per rank, so ranks never write files of the same name. Locally a
checkpoint is written to a temporary folder and renamed into place: complete or absent.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

_PREFIX = "step_"


def write_state(directory: Path, engine, target: torch.nn.Module, *, rank: int, step: int,
                position: tuple[int, int] | None) -> None:
    """Every rank calls this (the engine save may be collective)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    engine.save(directory)
    if rank == 0:
        torch.save(target.state_dict(), directory / "target.pt")
        (directory / "meta.json").write_text(json.dumps({"step": step, "data_position": {
            "next_step": step, "position": list(position) if position else None}}))
    torch.save(rng_state(), directory / f"rng_rank{rank}.pt")


def load_extras(directory: Path, *, rank: int, target: torch.nn.Module) -> dict:
    """Restore the target and this rank's RNG streams; returns meta (step, data position)."""
    directory = Path(directory)
    target.load_state_dict(torch.load(directory / "target.pt", map_location="cpu", weights_only=True))
    rng_file = directory / f"rng_rank{rank}.pt"
    if rng_file.is_file():  # absent when resuming on more ranks than saved: streams are keyed anyway
        set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=False))
    meta = json.loads((directory / "meta.json").read_text())
    pos = meta["data_position"].get("position")
    meta["data_position"]["position"] = tuple(pos) if pos else None
    return meta


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


def list_checkpoints(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.name.startswith(_PREFIX) and (p / "meta.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX):]))


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
