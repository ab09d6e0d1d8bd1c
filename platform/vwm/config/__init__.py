"""Typed configs: one frozen pydantic model per component, unknown keys rejected.

``core``: the sections every training job shares (``TrainerConfig``: optim, train, dist, tracking), the
pretraining job's config and the benchmarks'; ``world``: environments, trajectory collection and windows,
action-conditioned post-training, and planning; ``probe``: frozen evaluation of encoders. Everything is
importable from ``vwm.config``.
"""

from vwm.config.core import (  # noqa: F401
    ConfigError, _Strict, SyntheticConfig, AugmentConfig, DataConfig, MaskSetConfig, MaskConfig, JepaLossConfig,
    PredictorConfig,
    ModelConfig, LRConfig, WeightDecayConfig, EMAConfig, OptimConfig, ProbeConfig, TrainConfig, DistConfig,
    TrackingConfig, TrainerConfig, MonitorConfig, PretrainConfig, with_overrides, BenchDataConfig,
    BenchTrainConfig, SYNTHETIC_TARGETS,
)
from vwm.config.world import (  # noqa: F401
    TwoRoomsConfig, PushTConfig, EnvConfig, RandomWalkConfig, ExpertConfig, PolicyConfig, CollectConfig,
    TrajectoryConfig, BenchCollectConfig, ACPredictorConfig, ACLossWeights, ACConfig, ACMonitorConfig,
    PosttrainConfig, BenchPosttrainConfig, CEMConfig, GradientConfig, PlanConfig, EpisodesConfig,
    ActorsConfig, EvalConfig, BenchStage, BenchPlanModel, BenchPlanConfig,
)
from vwm.config.probe import (  # noqa: F401
    EncoderSpec, LabelledDataConfig, AttentiveProbeConfig, ProbeTasksConfig, ProbeEvalConfig, CONTROLS, LearningBars,
    BenchLearningConfig,
)
