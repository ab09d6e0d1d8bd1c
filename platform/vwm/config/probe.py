"""The frozen-evaluation job's config (``vwm evaluate probe``): which encoders, which labelled clips, which
targets and probes. The targets synthetic videos carry are typed here, so a bad target fails at load."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from vwm.config.core import SYNTHETIC_TARGETS, SyntheticConfig, TrackingConfig, _Strict, one_path
from vwm.config.world import BenchStage

CONTROLS = ("random", "pixels")


class EncoderSpec(_Strict):
    name: str = Field(min_length=1, description="the encoder's name in tables and metric keys")
    uri: str = Field(min_length=1, description="models:/NAME@ALIAS, models:/NAME/VERSION, runs:/ID/PATH or a folder")


class LabelledDataConfig(_Strict):
    """Labelled clips, split once into a train and a test part shared by every encoder and probe."""

    source: Literal["synthetic", "shards", "csv"] = "synthetic"
    paths: list[str] = Field(default_factory=list, description="shards: files, folders, globs, s3:// prefixes; "
                             "csv: a CSV file (path + label columns, paths relative to it) or a folder with labels.csv")
    endpoint_url: str | None = None
    clips: int = Field(600, ge=8, description="labelled clips, one per video")
    frame_step: int = Field(2, ge=1, description="take every n-th video frame; frames and crop come from the encoder")
    train_fraction: float = Field(0.75, gt=0, lt=1)
    synthetic: SyntheticConfig = SyntheticConfig(video_frames=32)

    _one_path = model_validator(mode="before")(classmethod(lambda cls, data: one_path(data)))

    @model_validator(mode="after")
    def _paths(self) -> LabelledDataConfig:
        if self.source != "synthetic" and not self.paths:
            raise ValueError(f"data.source={self.source} needs data.paths")
        return self


class AttentiveProbeConfig(_Strict):
    """V-JEPA's attentive probe: one learned query cross-attends over every token, then a linear head."""

    heads: int = Field(4, ge=1)
    steps: int = Field(400, ge=1, description="AdamW steps over the train split")
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)


class ProbeTasksConfig(_Strict):
    """One Ray task per (encoder, probe) pair."""

    cpus_per_task: float = Field(1.0, gt=0)
    gpus_per_task: float = Field(0.0, ge=0)


class ProbeEvalConfig(_Strict):
    """``vwm evaluate probe``: frozen encoders (and controls) probed for labels on held-out clips."""

    name: str = "probe"
    encoders: list[EncoderSpec] = Field(min_length=1)
    controls: list[Literal["random", "pixels"]] = Field(
        default_factory=lambda: list(CONTROLS), description="random: the first encoder's architecture at random "
        "init; pixels: raw patches as tokens")
    probes: list[Literal["linear", "attentive"]] = Field(default_factory=lambda: ["linear", "attentive"], min_length=1)
    targets: list[str] = Field(default_factory=lambda: ["direction", "velocity", "position"], min_length=1)
    data: LabelledDataConfig = LabelledDataConfig()
    attentive: AttentiveProbeConfig = AttentiveProbeConfig()
    bootstrap: int = Field(1000, ge=100, description="resamples of the test split for R^2 intervals")
    seed: int = 0
    output_dir: str = "outputs/eval"
    tasks: ProbeTasksConfig = ProbeTasksConfig()
    tracking: TrackingConfig = TrackingConfig(register_as=None, alias=None)

    @model_validator(mode="before")
    @classmethod
    def _plain_uris(cls, data: Any) -> Any:
        """``encoders: [models:/vwm-jepa@candidate]`` names each encoder after its URI."""
        if isinstance(data, dict) and isinstance(data.get("encoders"), list):
            data = {**data, "encoders": [{"name": e, "uri": e} if isinstance(e, str) else e for e in data["encoders"]]}
        return data

    @model_validator(mode="after")
    def _checks(self) -> ProbeEvalConfig:
        names = [e.name for e in self.encoders] + list(self.controls)
        if len(set(names)) != len(names):
            raise ValueError(f"encoders and controls need distinct names, got {names}")
        if self.data.source == "synthetic":
            bad = [t for t in self.targets if t not in SYNTHETIC_TARGETS]
            if bad:
                raise ValueError(f"targets {bad}: synthetic clips carry {', '.join(SYNTHETIC_TARGETS)}; "
                                 "set data.source to shards or csv for other labels")
        return self


class LearningBars(_Strict):
    """What the pretrained encoder's attentive probe must reach, each interval clear of every control's."""

    direction_acc: float = Field(0.80, ge=0, le=1)
    velocity_r2: float = Field(0.70, le=1)
    rankme_keep: float = Field(0.9, ge=0, description="held-out RankMe at the end >= this x its first value after "
                               "warmup (it does not trend down)")


class BenchLearningConfig(_Strict):
    """``jobs/bench_learning.py``: pretrain on synthetic physics videos within a CPU budget, then probe the
    encoder beside its random-init and pixel controls on held-out clips."""

    out: str = "outputs/bench_learning"
    pretrain: BenchStage = BenchStage(config="configs/pretrain/debug_cpu.yaml")
    encoder_uri: str | None = Field(None, description="an existing encoder: skips pretraining")
    local: bool = Field(True, description="pretrain in this process (no Ray Train workers); probes use Ray tasks")
    probe: BenchStage = BenchStage(config="configs/eval/probe_debug.yaml")
    bars: LearningBars = LearningBars()
    budget_minutes: float = Field(30.0, gt=0, description="the pretraining's target wall time")
    report: str | None = Field("docs/learning.md", description="markdown file whose bench_learning block is replaced")
