"""Shared config sections and the pretraining job's config (files and overrides: ``vwm.configfile``).

``TrainerConfig`` holds what the shared trainer reads (optim, train, dist, tracking); each job's config
extends it with its own sections (``PretrainConfig``: data, mask, model, monitor). Every component receives
its own sub-config (``cfg.model``, ``cfg.mask``, ...), never the whole job config.
Unknown keys, wrong types and impossible combinations raise ``ConfigError`` with a one-line message that
names the file (or the ``--set`` override), the dotted key and what is allowed.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vwm.models.presets import PRESETS


class ConfigError(ValueError):
    """A config problem found before any work starts; the message is one line a user can act on."""


def one_path(data: Any) -> Any:
    """``paths: some/folder`` in a file means a list of one path."""
    if isinstance(data, dict) and isinstance(data.get("paths"), str):
        data = {**data, "paths": [data["paths"]]}
    return data


def _numeric(annotation: Any) -> bool:
    if annotation in (int, float):
        return True
    args = typing.get_args(annotation)
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and bool(args) and \
        all(a in (int, float, type(None)) for a in args)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        # pydantic reads true as 1: `train.steps=true` would silently train one step
        if isinstance(data, dict):
            for name, info in cls.model_fields.items():
                if isinstance(data.get(name), bool) and _numeric(info.annotation):
                    raise ValueError(f"{name}={str(data[name]).lower()} is a boolean where a number is expected")
        return data


# ----------------------------------------------------------------------------------------------- data
class SyntheticConfig(_Strict):
    """Procedural moving-shape videos (bouncing, occluding objects) used when no shards are given."""

    num_videos: int = Field(256, ge=1)
    video_frames: int = Field(64, ge=2)
    height: int = Field(64, ge=8)
    width: int = Field(64, ge=8)
    min_objects: int = Field(1, ge=1)
    max_objects: int = Field(4, ge=1)
    min_speed: float = Field(0.5, ge=0.0)  # pixels per frame
    max_speed: float = Field(3.0, ge=0.0)
    fps: int = Field(15, ge=1)

    @model_validator(mode="after")
    def _ranges(self) -> SyntheticConfig:
        if self.min_objects > self.max_objects:
            raise ValueError(
                f"data.synthetic.min_objects={self.min_objects} > max_objects={self.max_objects}; "
                "make min_objects <= max_objects"
            )
        if self.min_speed > self.max_speed:
            raise ValueError(
                f"data.synthetic.min_speed={self.min_speed} > max_speed={self.max_speed}; "
                "make min_speed <= max_speed"
            )
        return self


class AugmentConfig(_Strict):
    """V-JEPA's clip augmentation: one random resized crop and flip per clip, shared by all its frames."""

    random_resized_crop: bool = True
    scale: tuple[float, float] = (0.3, 1.0)
    aspect_ratio: tuple[float, float] = (0.75, 1.35)
    hflip: float = Field(0.5, ge=0, le=1, description="probability of a horizontal flip")


class DataConfig(_Strict):
    source: Literal["synthetic", "shards"] = "synthetic"
    paths: list[str] = Field(default_factory=list, description="files, folders, prefixes or globs; local or s3://")
    endpoint_url: str | None = Field(None, description="S3-compatible endpoint, e.g. http://127.0.0.1:9000")
    frames: int = Field(16, ge=1, description="frames per clip")
    frame_step: int = Field(4, ge=1, description="take every n-th frame of the video")
    target_fps: float | None = Field(None, gt=0, description="if set, the frame step follows each video's fps")
    clips_per_video: int = Field(1, ge=1)
    crop: int = Field(224, ge=1, description="square crop side in pixels")
    batch_size: int = Field(24, ge=1, description="clips per worker per step")
    augment: AugmentConfig = AugmentConfig()
    shuffle_buffer: int = Field(64, ge=0, description="clips in each worker's local shuffle buffer; 0 = off")
    prefetch_batches: int = Field(2, ge=0)
    decode_num_cpus: float = Field(1.0, gt=0, description="CPUs reserved by each Ray Data decode task")
    progress_bars: bool = Field(False, description="Ray Data's own progress bars (off: the trainer prints progress)")
    synthetic: SyntheticConfig = SyntheticConfig()

    _one_path = model_validator(mode="before")(classmethod(lambda cls, data: one_path(data)))

    @model_validator(mode="after")
    def _paths(self) -> DataConfig:
        if self.source == "shards" and not self.paths:
            raise ValueError("data.source=shards needs data.paths (files, folders, globs or s3:// prefixes)")
        return self


# ---------------------------------------------------------------------------------------------- masks
class MaskSetConfig(_Strict):
    """One mask set: the target is the union of ``num_blocks`` blocks of one size (drawn once per batch)."""

    num_blocks: int = Field(8, ge=1)
    spatial_scale: tuple[float, float] = (0.15, 0.15)
    temporal_scale: tuple[float, float] = (1.0, 1.0)
    aspect_ratio: tuple[float, float] = (0.75, 1.5)
    temporal_anchor: Literal["random", "end"] = Field(
        "random", description="where blocks start in time; end: every block ends on the clip's last frames, so "
        "with temporal_scale < 1 the context is the past and the target the future")

    @model_validator(mode="after")
    def _ranges(self) -> MaskSetConfig:
        for name in ("spatial_scale", "temporal_scale", "aspect_ratio"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name}=({lo}, {hi}) must satisfy 0 < low <= high")
        for name in ("spatial_scale", "temporal_scale"):
            if getattr(self, name)[1] > 1.0:
                raise ValueError(f"{name} high end {getattr(self, name)[1]} is above 1.0")
        return self


def _vjepa_mask_sets() -> list[MaskSetConfig]:
    return [
        MaskSetConfig(num_blocks=8, spatial_scale=(0.15, 0.15)),
        MaskSetConfig(num_blocks=2, spatial_scale=(0.7, 0.7)),
    ]


class MaskConfig(_Strict):
    sets: list[MaskSetConfig] = Field(default_factory=_vjepa_mask_sets, min_length=1)


class JepaLossConfig(_Strict):
    """V-JEPA's L1 at the target tokens, plus an optional anti-collapse term on the context encoder."""

    variance: float = Field(0.0, ge=0, description="weight of VICReg's variance hinge on the context encoder's "
                            "layer-normed features; 0: V-JEPA's loss alone")
    variance_std: float = Field(0.5, gt=0, le=1, description="the hinge's floor on each channel's std across clips "
                                "(layer-normed features: 1 would leave no part of a token common to every clip)")
    variance_over: Literal["positions", "clips"] = Field(
        "positions", description="positions: std across the clips that see a token position; clips: std of the "
        "clips' mean context features")


# ---------------------------------------------------------------------------------------------- model
class PredictorConfig(_Strict):
    dim: int = Field(384, ge=1)
    depth: int = Field(12, ge=1)
    heads: int = Field(12, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    shared_mask_token: bool = Field(
        False, description="one learned mask token for every mask set (V-JEPA 2); false: one per set (V-JEPA)")


class ModelConfig(_Strict):
    """Encoder size comes from ``preset``; any field set explicitly overrides the preset's value."""

    preset: str = "vit_l"
    dim: int = Field(1024, ge=1)
    depth: int = Field(24, ge=1)
    heads: int = Field(16, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    patch_size: int = Field(16, ge=1)
    tubelet_size: int = Field(2, ge=1)
    pos_embed: Literal["sincos", "rope"] = "sincos"
    sincos_uniform_power: bool = Field(
        False, description="sincos: every axis 2*ceil(D/6) channels (V-JEPA's uniform_power); "
        "false: D/2 for time, D/4 each for height and width")
    qkv_bias: bool = True
    init_std: float = Field(0.02, gt=0)
    activation_checkpointing: bool = False
    predictor: PredictorConfig = PredictorConfig()

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        name = data.get("preset", "vit_l")
        if name not in PRESETS:
            raise ValueError(f"unknown model.preset {name!r}; allowed: {', '.join(PRESETS)}")
        preset = PRESETS[name]
        merged = {k: v for k, v in preset.items() if k != "predictor"}
        merged.update({k: v for k, v in data.items() if k != "predictor"})
        predictor = dict(preset.get("predictor", {}))
        given = data.get("predictor", {})
        if isinstance(given, dict):
            predictor.update(given)
            merged["predictor"] = predictor
        else:
            merged["predictor"] = given
        return merged

    @model_validator(mode="after")
    def _heads(self) -> ModelConfig:
        for where, dim, heads in (("model", self.dim, self.heads),
                                  ("model.predictor", self.predictor.dim, self.predictor.heads)):
            if dim % heads:
                raise ValueError(f"{where}.dim={dim} is not divisible by {where}.heads={heads}")
            if self.pos_embed == "rope" and dim // heads < 6:
                raise ValueError(f"{where}: head dim {dim // heads} < 6 leaves RoPE no room for 3 axes")
        return self


# -------------------------------------------------------------------------------------- optimisation
class LRConfig(_Strict):
    schedule: Literal["warmup_cosine", "warmup_constant_decay"] = "warmup_cosine"
    start: float = Field(2e-4, ge=0)
    peak: float = Field(6.25e-4, gt=0)
    final: float = Field(1e-6, ge=0)
    warmup_steps: int = Field(40, ge=0)
    decay_steps: int = Field(0, ge=0, description="warmup_constant_decay: the run's last steps, a linear cooldown "
                             "whose ramp spans optim.schedule_scale x decay_steps")


class WeightDecayConfig(_Strict):
    start: float = Field(0.04, ge=0)
    end: float = Field(0.4, ge=0)


class EMAConfig(_Strict):
    start: float = Field(0.998, ge=0, le=1)
    end: float = Field(1.0, ge=0, le=1)
    ramp_steps: int | None = Field(None, ge=1, description="steps from start to end; default: the schedule's "
                                   "length, round(optim.schedule_scale x train.steps)")


class OptimConfig(_Strict):
    lr: LRConfig = LRConfig()
    weight_decay: WeightDecayConfig = WeightDecayConfig()
    ema: EMAConfig = EMAConfig()
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    grad_clip: float = Field(10.0, ge=0, description="0 disables clipping")
    fused: bool = Field(True, description="torch's fused AdamW kernel (CPU and CUDA) and one foreach gradient "
                        "norm; false: torch's per-tensor loops for both")
    grad_accumulation: int = Field(1, ge=1, description="micro-batches per optimizer step")
    schedule_scale: float = Field(
        1.0, gt=0, description="lr, weight decay and EMA schedules span round(schedule_scale x train.steps) steps; "
        "V-JEPA's ipe_scale 1.25 stops a run at 80% of its schedules")


# ------------------------------------------------------------------------------------------ training
# what synthetic clips are labelled with (``clip_labels``): a class, or a regression target of so many values
SYNTHETIC_TARGETS: dict[str, str | int] = {"direction": "class", "num_objects": "class", "speed": 1,
                                           "velocity": 2, "position": 2}


class ProbeConfig(_Strict):
    """A linear probe on frozen target features at eval steps: ``eval/probe_acc`` for a class label,
    ``eval/probe_r2`` for a regression target; a labelled objective for sweeps."""

    label: str | None = Field(None, description="what to probe; synthetic clips: direction, num_objects (classes), "
                              "speed, velocity, position (regression); shards: a metadata key (a class)")
    paths: list[str] = Field(default_factory=list,
                             description="labelled videos or shards; empty: synthetic videos under a held-out seed")
    clips: int = Field(128, ge=8, description="labelled clips, one per video")
    train_fraction: float = Field(0.75, gt=0, lt=1, description="share of the clips the probe is fitted on")
    steps: int = Field(100, ge=1, description="L-BFGS iterations of the linear classifier")

    @model_validator(mode="after")
    def _label(self) -> ProbeConfig:
        if self.label and not self.paths and self.label not in SYNTHETIC_TARGETS:
            raise ValueError(f"label {self.label!r}: synthetic probe videos carry {', '.join(SYNTHETIC_TARGETS)}; "
                             "set monitor.probe.paths to shards whose metadata has this key")
        return self


class TrainConfig(_Strict):
    """The loop every task shares: length, cadence of logs, evals and checkpoints, device, run naming."""

    steps: int = Field(1000, ge=1)
    steps_per_epoch: int = Field(300, ge=1)
    seed: int = 0
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(100, ge=1)
    keep_checkpoints: int = Field(3, ge=1)
    output_dir: str = "outputs"
    run_name: str = "pretrain"
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="every worker's device; auto: CUDA where the cluster (or this machine) has GPUs")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="auto: bf16 autocast on CUDA, fp32 on CPU; bf16 on CPU pays off on CPUs with AMX "
        "and models of vit_tiny's size and up (docs/performance.md)")
    compile: Literal["auto"] | bool = Field(
        "auto", description="torch.compile of the task's hot modules (dynamic shapes); auto: on CUDA only; on CPU it "
        "measured 1.01-1.10x for our models at 30-70 s of compile per process (docs/performance.md)")
    max_nonfinite_steps: int = Field(5, ge=1, description="stop after this many non-finite losses in a row")
    peak_tflops: float | None = Field(None, gt=0, description="the chip's peak TFLOP/s, for perf/mfu; default: "
                                      "the dense bf16 peak of a known GPU (H100, H200, A100, L40S, L4, A10)")
    eval_every: int | None = Field(None, ge=1,
                                   description="the task's held-out evaluation (reported to Tune) every N steps")
    init_weights: str | None = Field(None, description="start from this world model's weights (a registered "
                                     "models:/NAME@ALIAS, runs:/... or a folder of the same architecture)")


class DistConfig(_Strict):
    """Ray Train + DeepSpeed: workers, resources, ZeRO stage, fault tolerance, checkpoint storage."""

    num_workers: int = Field(2, ge=1)
    cpus_per_worker: float = Field(0.5, gt=0, description="leave CPUs for Ray Data decode tasks")
    zero_stage: Literal[0, 1, 2, 3] = 1
    max_failures: int = Field(0, ge=-1, description="restarts from the latest checkpoint; -1: no limit")
    start_retries: int = Field(2, ge=0, description="new attempts when the worker group fails to start (Ray gives "
                               "each $RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, 60 s by default), then the run fails")
    wait_for_nodes_s: float = Field(0, ge=0, description="an autoscaling cluster: wait this long for nodes that fit "
                                    "the workers; 0: the workers must fit the nodes the cluster has now")
    storage_path: str = Field("outputs/ray", description="local folder or s3://bucket/prefix for checkpoints")
    checksum_every: int = Field(50, ge=1, description="compare EMA replicas' checksums across ranks")
    dataset_epochs: int | None = Field(None, ge=1, description="passes over the shards; default: enough for steps")

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        if isinstance(data, dict) and "use_gpu" in data:
            raise ValueError("dist.use_gpu is gone: train.device (auto, cpu, cuda) sets the device of every worker")
        return data


class TrackingConfig(_Strict):
    backend: Literal["none", "jsonl", "mlflow"] = "jsonl"
    experiment: str | None = Field(None, description="default: $MLFLOW_EXPERIMENT_NAME, else vwm")
    tracking_uri: str | None = Field(None, description="default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db")
    register_as: str | None = Field("vwm-jepa", description="registered model name; null: do not register")
    alias: str | None = Field("candidate", description="alias the new version gets (models:/NAME@ALIAS)")
    log_checkpoints: bool = Field(False, description="also copy the final checkpoint (optimizer state "
                                  "included) into the run's artifacts; its URI is always the param "
                                  "checkpoint.final")
    publish_timeout_s: float = Field(60.0, gt=0, description="how long the end of a run keeps retrying an "
                                     "unreachable server (metrics, checkpoint, registration) before it leaves "
                                     "them for `vwm publish RUN_DIR`")

    @model_validator(mode="after")
    def _alias(self) -> TrackingConfig:
        if self.alias and self.alias.lower() == "latest":
            raise ValueError("tracking.alias=latest is reserved by MLflow; every run registers a new version, and "
                             "models:/NAME@latest (vwm) or models:/NAME/latest (MLflow) loads the newest one")
        return self


class TrainerConfig(_Strict):
    """What the shared trainer reads, whatever the task: optimiser, loop cadence, workers, tracking."""

    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    dist: DistConfig = DistConfig()
    tracking: TrackingConfig = TrackingConfig()

    def unused_keys(self, local: bool) -> tuple[str, ...]:
        """Prefixes of dotted keys that do not apply to this run: left out of its tracked params."""
        return ("dist.",) if local else ()


# what a run on generated videos does not read: the file and Ray Data input options
_SHARD_ONLY = tuple(f"data.{k}" for k in (
    "paths", "endpoint_url", "target_fps", "clips_per_video", "shuffle_buffer", "prefetch_batches", "decode_num_cpus",
    "progress_bars"))


class MonitorConfig(_Strict):
    """V-JEPA's diagnostics: collapse monitors on training targets, held-out RankMe and the linear probe."""

    every: int = Field(50, ge=1, description="feature std and RankMe of the training targets every N steps")
    eval_clips: int = Field(16, ge=2, description="held-out clips for eval/rankme: synthetic videos, another seed")
    pictures: int = Field(4, ge=0, description="clips in the mp4s under the run's pictures/ artifacts (masks at "
                          "the start; PCA of target features at the first step, eval steps or every N steps, the end)"
                          "; 0: none")
    probe: ProbeConfig = ProbeConfig()


_MOVED_TRAIN_KEYS = {"monitor_every": "monitor.every", "eval_clips": "monitor.eval_clips", "probe": "monitor.probe"}


class PretrainConfig(TrainerConfig):
    """``vwm pretrain``: V-JEPA on videos. Each component gets its own section."""

    data: DataConfig = DataConfig()
    mask: MaskConfig = MaskConfig()
    loss: JepaLossConfig = JepaLossConfig()
    model: ModelConfig = ModelConfig()
    monitor: MonitorConfig = MonitorConfig()

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        train = data.get("train") if isinstance(data, dict) else None
        for old, new in _MOVED_TRAIN_KEYS.items():
            if isinstance(train, dict) and old in train:
                raise ValueError(f"train.{old} moved to {new}; rename it in the config file or --set")
        return data

    @model_validator(mode="after")
    def _cross_checks(self) -> PretrainConfig:
        d, m = self.data, self.model
        if d.crop % m.patch_size:
            raise ValueError(f"data.crop={d.crop} is not divisible by model.patch_size={m.patch_size}; "
                             f"use a crop that is a multiple of {m.patch_size}")
        if d.frames % m.tubelet_size:
            raise ValueError(f"data.frames={d.frames} is not divisible by model.tubelet_size={m.tubelet_size}")
        if d.source == "synthetic":
            span = (d.frames - 1) * d.frame_step + 1
            if span > d.synthetic.video_frames:
                raise ValueError(f"a clip spans {span} frames (data.frames x data.frame_step) but "
                                 f"data.synthetic.video_frames={d.synthetic.video_frames}")
        if self.monitor.probe.label and not self.train.eval_every:
            raise ValueError("monitor.probe.label is set but train.eval_every is not: the probe runs at eval steps")
        return self

    def unused_keys(self, local: bool) -> tuple[str, ...]:
        unused = super().unused_keys(local) + (_SHARD_ONLY if self.data.source == "synthetic" else ("data.synthetic.",))
        return unused + (() if self.monitor.probe.label else ("monitor.probe.",))


def with_overrides(cfg: _Strict, updates: dict[str, Any]) -> Any:
    """A copy of ``cfg`` with dotted keys replaced (``{"train.run_name": "x"}``), validated again as a whole:
    a derived config passes the same checks as one read from a file."""
    data = cfg.model_dump(mode="json")
    for key, value in updates.items():
        node, parts = data, key.split(".")
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(parts[-1])] = value
        elif parts[-1] not in node:
            raise ConfigError(f"with_overrides: {key} is not a key of {type(cfg).__name__}")
        else:
            node[parts[-1]] = value
    try:
        return type(cfg).model_validate(data)
    except ValueError as e:
        raise ConfigError(f"derived config ({', '.join(updates)}): {e}") from None


class BenchDataConfig(_Strict):
    """``jobs/bench_data.py``: Ray Data decoding throughput beside a plain single-process PyAV loop."""

    num_videos: int = Field(48, ge=1)
    shards: int = Field(8, ge=1)
    seed: int = 0
    out: str = "outputs/bench_data"
    cpus: list[int] = Field(default_factory=lambda: [1, 2], min_length=1)
    synthetic: SyntheticConfig = SyntheticConfig(video_frames=96, height=128, width=128)
    data: DataConfig = DataConfig(source="shards", paths=["outputs/bench_data"], frames=16, frame_step=2,
                                  clips_per_video=2, crop=112, shuffle_buffer=0)
    report: str | None = Field("docs/performance.md", description="markdown file whose table is replaced")


class BenchTrainConfig(_Strict):
    """``jobs/bench_train.py``: the training step by arm (eager, fused, compiled, bf16 ...) for each model, and
    the platform (Ray Train + DeepSpeed, 1 worker) beside a bare PyTorch loop; arms interleaved over rounds."""

    base: str = "configs/pretrain/debug_cpu.yaml"
    overrides: list[str] = Field(default_factory=list, description="--set style overrides of the base config")
    models: dict[str, list[str]] = Field(default_factory=lambda: {"debug": []}, min_length=1,
                                         description="model label -> overrides on top of base and overrides")
    arms: dict[str, list[str]] = Field(
        default_factory=lambda: {"eager": ["optim.fused=false", "train.compile=false"],
                                 "fused": ["train.compile=false"], "compiled": ["train.compile=true"]},
        min_length=1, description="arm -> overrides; the first arm is the baseline of the speed-ups")
    rounds: int = Field(5, ge=2, description="rounds; each runs every arm in turn (order rotated per round)")
    steps: int = Field(10, ge=1, description="timed steps of one arm in one round")
    warmup: int = Field(3, ge=1, description="steps of each arm before the first round (the compile's among them)")
    zero_stages: list[Literal[0, 1, 2, 3]] = Field(default_factory=lambda: [0, 1],
                                                   description="platform arms beside the bare loop; [] skips them")
    platform_steps: int = Field(30, ge=4, description="steps of each platform and bare-loop run")
    platform_warmup: int = Field(5, ge=1, description="steps of those runs left out of the timing")
    cpus_per_worker: float = Field(2.0, gt=0)
    report: str | None = "docs/performance.md"

    @model_validator(mode="after")
    def _timed(self) -> BenchTrainConfig:
        if self.platform_warmup > self.platform_steps - 2:  # the last step checkpoints: not timed either
            raise ValueError(f"platform_warmup={self.platform_warmup} leaves no timed step of platform_steps="
                             f"{self.platform_steps}; make it at most platform_steps - 2")
        return self
