"""Trajectory shards: the episode schema, its statistics, and aligned windows for action-conditioned models.

Schema (format ``vwm-trajectory/1``). One episode is one WebDataset sample of three members, written by
``vwm.data.shards.write_shard``; ``vwm data collect`` puts train episodes under ``OUT/train/`` and held-out
ones (planning starts and goals) under ``OUT/held_out/``, as ``shard-NNNNN.tar``, plus ``OUT/dataset.json``.

``KEY.mp4``   H.264 frames, N = steps + 1 of them: frame 0 is the observation after reset, frame t + 1 the
              one after action t.
``KEY.npz``   ``actions`` float32 (N, A): row t is the action applied at frame t, in [-1, 1]; the last row
              is NaN (no action follows the last frame). ``states`` float32 (N, S): the env state at frame t
              (``get_state()``). Both rows align with the frames.
``KEY.json``  ``format``, ``env``, ``env_kwargs`` (the constructor arguments), ``image_size``, ``seed``,
              ``episode`` (index), ``split``, ``policy`` (``random_walk`` | ``expert``), ``policy_config``,
              ``steps``, ``frames``, ``fps``, ``action_dim``, ``state_dim``, ``action_names``,
              ``state_names``, ``stats`` (``actions`` and ``states``: count, sum, sumsq, mean, std, min, max
              per dimension over this episode; sums merge into dataset statistics), and ``mirror``: how a
              horizontal flip maps the episode (``action_negate``: action dims to negate, ``state_reflect``:
              [dim, c] pairs with x -> c - x), or null when a flipped frame is no frame of the env.
``dataset.json``  the collection's config, episode and shard lists per split, and ``stats``: the train
              split's merged statistics (what ``normalize`` uses by default when given as ``stats``).

Windows. A window of T frames with frame skip k (``frameskip``) takes frames s, s + k, ..., s + (T-1)k; its
T - 1 action rows are blocks of k consecutive env actions concatenated (A x k numbers: the actions that lead
from one kept frame to the next); its T states are the states at the kept frames.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from vwm.data.decode import decode_clips, encode_mp4
from vwm.data.shards import Sample, filesystem, iter_samples

FORMAT = "vwm-trajectory/1"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class TrajectoryError(ValueError):
    """An episode that does not follow the schema; the message names the sample."""


# -------------------------------------------------------------------------------------- members
def encode_npz(arrays: dict[str, np.ndarray]) -> bytes:
    """An uncompressed ``.npz`` with fixed member dates: ``np.savez`` stamps the current time, which would
    make shards differ between identical collections."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, array in arrays.items():
            with zf.open(zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE), "w") as f:
                np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def decode_npz(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def moments(x_ND: np.ndarray) -> dict[str, list]:
    """Per-dimension statistics of rows; count/sum/sumsq merge across episodes (``merge_stats``)."""
    x = np.asarray(x_ND, dtype=np.float64)
    stats = {"count": int(x.shape[0]), "sum": x.sum(0).tolist(), "sumsq": (x * x).sum(0).tolist(),
             "min": x.min(0).tolist(), "max": x.max(0).tolist()}
    return _finish_stats(stats)


def merge_stats(parts: list[dict]) -> dict[str, list]:
    if not parts:
        raise TrajectoryError("no episode statistics to merge (no episodes read)")
    out = {"count": sum(p["count"] for p in parts),
           "sum": np.sum([p["sum"] for p in parts], 0).tolist(),
           "sumsq": np.sum([p["sumsq"] for p in parts], 0).tolist(),
           "min": np.min([p["min"] for p in parts], 0).tolist(), "max": np.max([p["max"] for p in parts], 0).tolist()}
    return _finish_stats(out)


def _finish_stats(s: dict) -> dict:
    n = max(s["count"], 1)
    mean = np.asarray(s["sum"]) / n
    var = np.maximum(np.asarray(s["sumsq"]) / n - mean * mean, 0.0)
    return {**s, "mean": mean.tolist(), "std": np.sqrt(var).tolist()}


def episode_sample(key: str, frames_THWC: np.ndarray, actions_NA: np.ndarray, states_NS: np.ndarray, meta: dict,
                   *, fps: int, crf: int) -> Sample:
    """One episode as a shard sample; ``meta`` gets the dims, counts and this episode's statistics."""
    n = len(frames_THWC)
    if actions_NA.shape[0] != n or states_NS.shape[0] != n:
        raise TrajectoryError(f"{key}: {n} frames but {actions_NA.shape[0]} action rows and {states_NS.shape[0]} "
                              "state rows; every array has one row per frame")
    meta = {**meta, "format": FORMAT, "frames": n, "steps": n - 1, "fps": fps,
            "action_dim": int(actions_NA.shape[1]), "state_dim": int(states_NS.shape[1]),
            "stats": {"actions": moments(actions_NA[:-1]), "states": moments(states_NS)}}
    return Sample(key=key, members={
        "mp4": encode_mp4(frames_THWC, fps, crf=crf),
        "npz": encode_npz({"actions": actions_NA.astype(np.float32), "states": states_NS.astype(np.float32)}),
        "json": json.dumps(meta, sort_keys=True).encode()})


def is_trajectory(sample: Sample) -> bool:
    return "npz" in sample.members and sample.meta.get("format") == FORMAT


def read_arrays(sample: Sample) -> tuple[np.ndarray, np.ndarray, dict]:
    """(actions_NA, states_NS, meta) without decoding the video."""
    meta = sample.meta
    if "npz" not in sample.members or meta.get("format") != FORMAT:
        raise TrajectoryError(f"{sample.source or sample.key}: not a trajectory episode (needs KEY.npz and a KEY.json "
                              f"with format {FORMAT}; members: {', '.join(sample.members)})")
    arrays = decode_npz(sample.members["npz"])
    actions, states = arrays.get("actions"), arrays.get("states")
    if actions is None or states is None or len(actions) != meta["frames"] or len(states) != meta["frames"]:
        raise TrajectoryError(f"{sample.source or sample.key}: KEY.npz needs 'actions' and 'states' with "
                              f"{meta['frames']} rows (one per frame)")
    return actions, states, meta


def read_episode(sample: Sample) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """(frames_NHWC uint8, actions_NA, states_NS, meta) of one episode; DecodeError for a bad video."""
    actions, states, meta = read_arrays(sample)
    [frames] = decode_clips(sample.video, frames=meta["frames"], frame_step=1, target_fps=None, clips_per_video=1,
                            rng=np.random.default_rng(0))
    return frames, actions, states, meta


# --------------------------------------------------------------------------------------- windows
def window_span(frames: int, frameskip: int) -> int:
    return (frames - 1) * frameskip + 1


def cut_window(frames_NHWC: np.ndarray, actions_NA: np.ndarray, states_NS: np.ndarray, start: int, frames: int,
               frameskip: int) -> dict[str, np.ndarray]:
    """``frames_THWC`` (T frames every ``frameskip``), ``actions_TA`` (T - 1 rows of ``frameskip`` concatenated
    env actions), ``states_TS`` (T states), from frame ``start``."""
    idx = start + frameskip * np.arange(frames)
    blocks = actions_NA[start: start + (frames - 1) * frameskip]
    return {"frames_THWC": frames_NHWC[idx], "actions_TA": blocks.reshape(frames - 1, -1).astype(np.float32),
            "states_TS": states_NS[idx].astype(np.float32)}


def window_starts(n_frames: int, frames: int, frameskip: int, count: int, rng: np.random.Generator) -> np.ndarray:
    last = n_frames - window_span(frames, frameskip)
    if last < 0:
        return np.zeros(0, dtype=np.int64)
    return np.sort(rng.integers(0, last + 1, size=count))


def mirror_window(window: dict[str, np.ndarray], mirror: dict, frameskip: int) -> dict[str, np.ndarray]:
    """A horizontal flip that keeps frames, actions and states consistent: frames flip along W, the listed
    action dims change sign in every block, the listed state dims reflect about their centre."""
    action_dim = window["actions_TA"].shape[1] // frameskip
    actions = window["actions_TA"].reshape(len(window["actions_TA"]), frameskip, action_dim).copy()
    actions[..., mirror["action_negate"]] *= -1
    states = window["states_TS"].copy()
    for dim, c in mirror["state_reflect"]:
        states[:, dim] = c - states[:, dim]
    return {"frames_THWC": np.ascontiguousarray(window["frames_THWC"][:, :, ::-1]),
            "actions_TA": actions.reshape(window["actions_TA"].shape), "states_TS": states}


def normalize_window(window: dict[str, np.ndarray], stats: dict, frameskip: int) -> dict[str, np.ndarray]:
    """z-scores with the dataset's per-dimension action and state statistics (a block repeats the action's)."""
    a_mean, a_std = (np.tile(np.asarray(stats["actions"][k], dtype=np.float32), frameskip) for k in ("mean", "std"))
    s_mean, s_std = (np.asarray(stats["states"][k], dtype=np.float32) for k in ("mean", "std"))
    return {**window, "actions_TA": (window["actions_TA"] - a_mean) / np.maximum(a_std, 1e-6),
            "states_TS": (window["states_TS"] - s_mean) / np.maximum(s_std, 1e-6)}


def episode_windows(sample: Sample, *, frames: int, frameskip: int, count: int, rng: np.random.Generator,
                    hflip: float = 0.0, stats: dict | None = None, size: int | None = None) -> list[dict]:
    """Up to ``count`` windows of one episode (none if it is shorter than a window), each augmented on its
    own: flipped with probability ``hflip`` when the episode has a mirror map, resized, normalised."""
    frames_N, actions, states, meta = read_episode(sample)
    if size is not None and size != frames_N.shape[1]:
        import torch

        from vwm.data.transforms import resize_clip

        frames_N = resize_clip(torch.from_numpy(frames_N), size).numpy()
    out = []
    for start in window_starts(len(frames_N), frames, frameskip, count, rng):
        w = cut_window(frames_N, actions, states, int(start), frames, frameskip)
        if meta.get("mirror") and rng.random() < hflip:
            w = mirror_window(w, meta["mirror"], frameskip)
        if stats is not None:
            w = normalize_window(w, stats, frameskip)
        w["start"] = int(start)
        out.append(w)
    return out


# ------------------------------------------------------------------------------ dataset statistics
def load_stats(stats_uri: str | None, sources: list[str], endpoint_url: str | None = None) -> dict:
    """Normalisation statistics: ``stats`` of a dataset.json, else merged from every episode's own."""
    if stats_uri:
        fs, path = filesystem(stats_uri, endpoint_url)
        if not fs.exists(path):
            raise TrajectoryError(f"trajectory stats file {stats_uri} not found; point stats at the dataset.json "
                                  "that vwm data collect wrote, or leave it unset")
        with fs.open(path, "rb") as f:
            return json.load(f)["stats"]
    parts: dict[str, list] = {"actions": [], "states": []}
    for uri in sources:
        for sample in iter_samples(uri, endpoint_url):
            if not isinstance(sample, tuple) and "npz" in sample.members:
                for k in parts:
                    parts[k].append(sample.meta["stats"][k])
    if not parts["actions"]:
        raise TrajectoryError(f"no trajectory episodes under {', '.join(sources[:3])}; normalisation has nothing to "
                              "compute statistics from")
    return {k: merge_stats(v) for k, v in parts.items()}


# ------------------------------------------------------------------------------------------ inspect
@dataclass
class TrajectorySummary:
    """What ``vwm data inspect`` reports about trajectory episodes: counts and per-dimension ranges."""

    episodes: int = 0
    steps: int = 0
    by: Counter = field(default_factory=Counter)  # (env, split, policy) -> episodes
    action_min: list[float] | None = None
    action_max: list[float] | None = None

    def add(self, sample: Sample) -> None:
        actions, _, meta = read_arrays(sample)
        self.episodes += 1
        self.steps += meta["steps"]
        self.by[(meta["env"], meta.get("split", "?"), meta.get("policy", "?"))] += 1
        lo, hi = np.nanmin(actions, 0).tolist(), np.nanmax(actions, 0).tolist()
        self.action_min = lo if self.action_min is None else np.minimum(self.action_min, lo).tolist()
        self.action_max = hi if self.action_max is None else np.maximum(self.action_max, hi).tolist()

    def merge(self, other: TrajectorySummary) -> None:
        self.episodes += other.episodes
        self.steps += other.steps
        self.by.update(other.by)
        for name, pick in (("action_min", np.minimum), ("action_max", np.maximum)):
            mine, theirs = getattr(self, name), getattr(other, name)
            setattr(self, name, theirs if mine is None else mine if theirs is None else pick(mine, theirs).tolist())

    def lines(self) -> list[str]:
        if not self.episodes:
            return []
        ranges = ", ".join(f"[{lo:.3g}, {hi:.3g}]" for lo, hi in zip(self.action_min, self.action_max))
        return [f"trajectory episodes: {self.episodes}, env steps: {self.steps}",
                "  " + ", ".join(f"{env}/{split}/{policy}: {n}" for (env, split, policy), n in sorted(self.by.items())),
                f"  action range per dim: {ranges}"]
