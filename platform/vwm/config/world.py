"""Configs of the world-model jobs: environments and trajectory collection, trajectory windows, and
action-conditioned post-training (``PosttrainConfig``). Conventions as in ``vwm.config.core``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from vwm.config.core import TrackingConfig, TrainerConfig, _Strict, one_path


# ------------------------------------------------------------------ environments and trajectory data
class TwoRoomsConfig(_Strict):
    """TwoRooms geometry in world units (the arena is ``arena`` wide; 64 units = 64 pixels at image_size 64)."""

    arena: float = Field(64.0, gt=0)
    wall_x: float = Field(32.0, gt=0, description="centre of the dividing wall")
    wall_width: float = Field(4.0, gt=0)
    door_y: float = Field(40.0, gt=0, description="centre of the door")
    door_width: float = Field(12.0, gt=0)
    agent_radius: float = Field(2.0, gt=0, description="collision half-size and drawn radius")
    action_scale: float = Field(2.5, gt=0, description="displacement per step at |action| = 1, per axis")
    success_radius: float = Field(4.0, gt=0)

    @model_validator(mode="after")
    def _geometry(self) -> TwoRoomsConfig:
        if self.door_width <= 2 * self.agent_radius:
            raise ValueError(f"env.two_rooms.door_width={self.door_width} must exceed 2 x agent_radius="
                             f"{self.agent_radius} or the agent cannot pass the door")
        half = self.wall_width / 2
        if not (self.agent_radius < self.wall_x - half and self.wall_x + half < self.arena - self.agent_radius):
            raise ValueError(f"env.two_rooms.wall_x={self.wall_x} (width {self.wall_width}) leaves no room on one "
                             f"side of the {self.arena}-wide arena")
        if not (self.door_width / 2 <= self.door_y <= self.arena - self.door_width / 2):
            raise ValueError(f"env.two_rooms.door_y={self.door_y} puts the door (width {self.door_width}) outside "
                             f"the arena [0, {self.arena}]")
        return self


class PushTConfig(_Strict):
    """The Push-T adapter: relative actions and DINO-WM's success tolerances (pixels of the 512 arena)."""

    action_scale: float = Field(50.0, gt=0, description="PD target offset from the agent at |action| = 1, px")
    position_tolerance: float = Field(20.0, gt=0, description="agent+block position error (one norm) for success")
    angle_tolerance: float = Field(0.3490658503988659, gt=0, description="block angle error for success (pi/9)")


class EnvConfig(_Strict):
    name: Literal["two_rooms", "push_t"] = "two_rooms"
    image_size: int = Field(64, ge=8, description="rendered frames are image_size x image_size RGB")
    two_rooms: TwoRoomsConfig = TwoRoomsConfig()
    push_t: PushTConfig = PushTConfig()

    def kwargs(self) -> dict[str, Any]:
        """Constructor arguments of the chosen env (``vwm.envs.make_env(name, **kwargs)``)."""
        return {"image_size": self.image_size, **getattr(self, self.name).model_dump()}


class RandomWalkConfig(_Strict):
    persistence: float = Field(0.9, ge=0, le=1, description="probability of keeping the heading each step")
    noise_std: float = Field(0.2, ge=0, description="Gaussian jitter on each action")


class ExpertConfig(_Strict):
    noise_std: float = Field(0.3, ge=0, description="Gaussian noise on each action of the scripted expert")


class PolicyConfig(_Strict):
    """Per episode, the noisy expert with probability ``expert_fraction``, else the random walk."""

    expert_fraction: float = Field(0.5, ge=0, le=1)
    random_walk: RandomWalkConfig = RandomWalkConfig()
    expert: ExpertConfig = ExpertConfig()


class CollectConfig(_Strict):
    """``vwm data collect``: roll out episodes as Ray tasks and write trajectory shards (vwm.data.trajectories)."""

    out: str = Field("outputs/trajectories/two_rooms",
                     description="folder or s3:// prefix; train/ and held_out/ go under it")
    endpoint_url: str | None = Field(None, description="S3-compatible endpoint, e.g. http://127.0.0.1:9000")
    env: EnvConfig = EnvConfig()
    policy: PolicyConfig = PolicyConfig()
    episodes: int = Field(2000, ge=1)
    steps: int = Field(100, ge=1, description="actions per episode; an episode has steps + 1 frames")
    seed: int = 0
    held_out_fraction: float = Field(0.1, ge=0, lt=1, description="share of episodes in held_out/ (planning goals)")
    episodes_per_shard: int = Field(50, ge=1)
    workers: int | None = Field(None, ge=1, description="shard tasks in flight; default: the cluster's CPUs")
    fps: int = Field(10, ge=1, description="frame rate written into the mp4 (the env's control rate)")
    crf: int = Field(18, ge=0, le=51, description="H.264 quality; lower keeps the small agent sharper")

    @model_validator(mode="after")
    def _even_frames(self) -> CollectConfig:
        if self.env.image_size % 2:
            raise ValueError(f"env.image_size={self.env.image_size} is odd; H.264 (yuv420p) needs even sides, "
                             f"use {self.env.image_size + 1}")
        return self


class TrajectoryConfig(_Strict):
    """Aligned windows from trajectory shards for action-conditioned training (vwm.data.pipeline)."""

    paths: list[str] = Field(default_factory=list,
                             description="trajectory shards: files, folders, globs; local or s3://")
    endpoint_url: str | None = None
    frames: int = Field(8, ge=2, description="T: frames per window (model steps + 1)")
    frameskip: int = Field(5, ge=1, description="env steps per model step; their actions are concatenated")
    windows_per_episode: int = Field(4, ge=1, description="random windows cut from each episode per epoch")
    size: int | None = Field(None, ge=8, description="resize frames to size x size (a resize keeps actions valid)")
    hflip: float = Field(0.0, ge=0, le=1, description="mirror probability; only episodes whose metadata gives "
                                                       "a mirror map are flipped, their actions and states with them")
    normalize: bool = Field(True, description="z-score actions and states with the dataset's statistics")
    stats: str | None = Field(None, description="dataset.json written by vwm data collect; default: merged "
                                                "from the episodes' own statistics")
    batch_size: int = Field(16, ge=1)
    shuffle_buffer: int = Field(64, ge=0)
    prefetch_batches: int = Field(2, ge=0)
    decode_num_cpus: float = Field(1.0, gt=0)
    progress_bars: bool = Field(False, description="Ray Data's own progress bars (off: the trainer prints progress)")

    _one_path = model_validator(mode="before")(classmethod(lambda cls, data: one_path(data)))


class BenchCollectConfig(_Strict):
    """``jobs/bench_collect.py``: env steps/s per CPU (rendering included) and the 1 -> 2 Ray worker speed-up."""

    envs: list[Literal["two_rooms", "push_t"]] = Field(default_factory=lambda: ["two_rooms", "push_t"], min_length=1)
    image_size: int = Field(64, ge=8)
    loop_steps: int = Field(2000, ge=10, description="steps of the single-process loop per env")
    episodes: dict[str, int] = Field(default_factory=lambda: {"two_rooms": 200, "push_t": 24},
                                     description="episodes collected through Ray per env and worker count")
    steps: int = Field(100, ge=1)
    workers: list[int] = Field(default_factory=lambda: [1, 2], min_length=1)
    out: str = "outputs/bench_collect"
    report: str | None = Field("docs/performance.md", description="markdown file whose table is replaced")


# ---------------------------------------------------------------------------- action-conditioned post-training
class ACPredictorConfig(_Strict):
    dim: int = Field(192, ge=1)
    depth: int = Field(6, ge=1)
    heads: int = Field(6, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)


class ACLossWeights(_Strict):
    teacher_forcing: float = Field(1.0, ge=0, description="L1 of one-step predictions from true context frames")
    rollout: float = Field(1.0, ge=0, description="L1 of the autoregressive rollout over ac.rollout_steps")
    state: float = Field(0.1, ge=0, description="L1 of the predicted next state (normalised units)")
    state_probe: float = Field(0.0, ge=0, description="L1 of every frame's state read by a linear head from the "
                               "online encoder's features (mean over tokens); needs ac.encoder: ema. The "
                               "predictor is given the current state, so nothing else makes the features the "
                               "planner compares carry the agent's position")
    variance: float = Field(0.0, ge=0, description="VICReg's variance hinge on the online encoder's features: "
                            "mean of relu(1 - std) of every token channel across the batch's frames; needs "
                            "ac.encoder: ema, whose JEPA losses alone let the features collapse")


class ACConfig(_Strict):
    """V-JEPA 2-AC: a predictor of the next frame's features from the current ones, an action and a state."""

    encoder_uri: str = Field(description="the pretrained encoder: models:/vwm-jepa@ALIAS, runs:/ID/world_model or "
                                         "a world-model folder")
    encoder: Literal["frozen", "ema"] = Field(
        "frozen", description="frozen: the reference; ema: trained with the predictor against an EMA target")
    pool: int | None = Field(None, ge=1, description="average each frame's feature grid to pool x pool tokens "
                                                     "(fewer tokens, cheaper planning); null: the full grid")
    rollout_steps: int = Field(2, ge=1, description="autoregressive steps of the rollout loss")
    residual: bool = Field(True, description="predict the change of frame t's features and state (starts at the "
                           "copy-last-frame baseline); false: predict them outright, as the reference")
    loss_weights: ACLossWeights = ACLossWeights()
    predictor: ACPredictorConfig = ACPredictorConfig()

    @model_validator(mode="after")
    def _heads(self) -> ACConfig:
        if self.predictor.dim % self.predictor.heads:
            raise ValueError(f"ac.predictor.dim={self.predictor.dim} is not divisible by "
                             f"ac.predictor.heads={self.predictor.heads}")
        for name in ("state_probe", "variance"):
            if getattr(self.loss_weights, name) and self.encoder != "ema":
                raise ValueError(f"ac.loss_weights.{name}={getattr(self.loss_weights, name)} shapes the encoder's "
                                 f"features, but ac.encoder={self.encoder!r} is not trained; set ac.encoder: ema")
        return self


class ACMonitorConfig(_Strict):
    every: int = Field(50, ge=1, description="feature std and RankMe of the context features every N steps")
    heldout_paths: list[str] = Field(default_factory=list, description="held-out trajectory shards for "
                                     "eval/rollout_l1@k at train.eval_every (vwm data collect's held_out/)")
    heldout_windows: int = Field(32, ge=1)
    pictures: int = Field(4, ge=0, description="held-out windows in the imagined-futures mp4s logged at eval "
                          "steps (frames | true features | rollout, PCA as RGB); 0: none")


class PosttrainConfig(TrainerConfig):
    """``vwm posttrain``: an action-conditioned world model on trajectory shards, from a pretrained encoder."""

    data: TrajectoryConfig = TrajectoryConfig()
    ac: ACConfig
    monitor: ACMonitorConfig = ACMonitorConfig()

    @model_validator(mode="before")
    @classmethod
    def _registered_name(cls, data: Any) -> Any:
        if isinstance(data, dict):  # the AC model registers under its own name unless one is given
            tracking = data.get("tracking") if isinstance(data.get("tracking"), dict) else {}
            data = {**data, "tracking": {"register_as": "vwm-ac", **tracking}}
        return data

    @model_validator(mode="after")
    def _cross_checks(self) -> PosttrainConfig:
        if not self.data.paths:
            raise ValueError("data.paths is empty: point it at trajectory shards (vwm data collect's train/ folder)")
        if self.ac.rollout_steps > self.data.frames - 1:
            raise ValueError(f"ac.rollout_steps={self.ac.rollout_steps} needs windows of at least "
                             f"{self.ac.rollout_steps + 1} frames; data.frames={self.data.frames}")
        return self


class BenchPosttrainConfig(_Strict):
    """``jobs/bench_posttrain.py``: the planner's budget (one rollout of many candidates) per pooling, and
    post-training speed and held-out rollout error of the debug recipe on this machine."""

    base: str = "configs/posttrain/debug_cpu.yaml"
    out: str = "outputs/bench_posttrain"
    candidates: int = Field(300, ge=1, description="action sequences per rollout (CEM samples)")
    horizon: int = Field(5, ge=1, description="model steps per rollout")
    pools: list[int | None] = Field(default_factory=lambda: [1, 2, None],
                                    description="poolings whose rollouts and plans are timed; []: the learning run only")
    repeats: int = Field(5, ge=1, description="timed rollouts per arm in a round")
    cem_iterations: int = Field(30, ge=1, description="iterations of the timed CEM plans")
    rounds: int = Field(5, ge=2, description="rounds; each times every arm (eager, compiled, bf16) in turn")
    train_steps: int = Field(300, ge=0, description="post-training steps of the learning run; 0 skips it")
    episodes: int = Field(300, ge=10, description="TwoRooms episodes collected for the learning run")
    pretrain_steps: int = Field(60, ge=1, description="debug pretraining steps of the encoder")
    pretrain_overrides: list[str] = Field(default_factory=list, description="overrides of the encoder's pretraining "
                                          "(configs/pretrain/debug_cpu.yaml); {traj}: the collected trajectories")
    posttrain_overrides: list[str] = Field(default_factory=list, description="overrides of `base` for the "
                                           "learning run only (the timed rollouts take `pools`)")
    report: str | None = Field("docs/performance.md", description="markdown file whose table is replaced")

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data: Any) -> Any:
        if isinstance(data, dict) and "plan_repeats" in data:
            raise ValueError("plan_repeats is gone: every arm is now timed in each of `rounds` interleaved rounds "
                             "(`repeats` rollouts per round); set rounds instead")
        return data


# ------------------------------------------------------------------------------------------ planning
class CEMConfig(_Strict):
    """The cross-entropy method over action sequences (V-JEPA 2's ``mpc_utils.cem``): each iteration draws
    ``samples`` sequences from a Gaussian, keeps the ``topk`` cheapest, and moves mean and std toward theirs."""

    samples: int = Field(300, ge=2, description="candidate action sequences per iteration")
    iterations: int = Field(30, ge=1)
    topk: int = Field(30, ge=1, description="elites whose mean and std update the distribution")
    momentum_mean: float = Field(0.25, ge=0, lt=1, description="weight of the previous mean in the update")
    momentum_std: float = Field(0.95, ge=0, lt=1, description="weight of the previous std in the update")
    init_std: float = Field(1.0, gt=0, description="initial std of every action dimension (actions in [-1, 1])")

    @model_validator(mode="after")
    def _elites(self) -> CEMConfig:
        if self.topk > self.samples:
            raise ValueError(f"plan.cem.topk={self.topk} exceeds plan.cem.samples={self.samples}")
        return self


class GradientConfig(_Strict):
    """Adam on the action sequence through the differentiable rollout."""

    steps: int = Field(100, ge=1, description="Adam steps per plan")
    lr: float = Field(0.1, gt=0)
    init: Literal["zero", "cem"] = Field("zero", description="start from zero actions, or from CEM's mean "
                                                            "(plan.cem settings)")
    restarts: int = Field(1, ge=1, description="sequences optimised side by side in one batch; the cheapest "
                                               "is kept (the first starts from init, the others at random)")


class PlanConfig(_Strict):
    """One planner under the MPC protocol: plan ``horizon`` model steps, execute the first (``action_block``
    env actions), re-plan, until success or ``budget`` env steps."""

    planner: Literal["cem", "gradient", "random", "oracle-cem"] = Field(
        "cem", description="oracle-cem: CEM on the true simulator (the upper bound)")
    label: str | None = Field(None, description="name of this planner's child run and rows (default: planner); "
                                                "tells apart two variants of one planner")
    horizon: int = Field(5, ge=1, description="model steps planned ahead")
    action_block: int = Field(5, ge=1, description="env actions per model step (the model's frameskip)")
    budget: int = Field(50, ge=1, description="env steps per episode")
    cost: Literal["l1", "l2"] = Field("l1", description="distance of the predicted final features to the goal's")
    action_penalty: float = Field(0.0, ge=0, description="weight of the mean squared action in the cost")
    cost_steps: Literal["last", "all"] = Field("last", description="score the final predicted step, or the mean "
                                                                  "over every step of the horizon (arrive early)")
    stop_on_success: bool = Field(True, description="end the episode at the first success; false: spend "
                                                    "the whole budget, so success at the last step means holding")
    seed: int = 0
    cem: CEMConfig = CEMConfig()
    gradient: GradientConfig = GradientConfig()


class EpisodesConfig(_Strict):
    """Start and goal states from held-out trajectories, the goal ``goal_offset`` env steps after the start;
    episode i depends only on (seed, i) and the shards, so every planner sees the same episodes."""

    paths: list[str] = Field(default_factory=list, description="held-out trajectory shards (vwm data "
                                                               "collect's held_out/)")
    endpoint_url: str | None = None
    count: int = Field(200, ge=1)
    goal_offset: int = Field(25, ge=1, description="env steps from the start to the goal along the trajectory")
    seed: int = 0


class ActorsConfig(_Strict):
    """The evaluator's planner actors: each loads the model once and plays its share of the episodes."""

    num_actors: int = Field(2, ge=1)
    cpus_per_actor: float = Field(1.0, gt=0, description="also the actor's torch threads (rounded, at least 1)")
    gpus_per_actor: float = Field(0.0, ge=0, description="a fraction shares a GPU between actors; > 0 plans on CUDA")
    episodes_per_task: int = Field(2, ge=1, description="episodes per actor call: small keeps actors evenly busy")
    compile: Literal["auto"] | bool = Field(
        "auto", description="torch.compile the model's rollout in each actor (tens of seconds once per planner "
        "shape); auto: on CUDA only (on CPU: 1.1-1.25x, docs/performance.md)")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="the rollout's autocast; auto: bf16 on CUDA, fp32 on CPU (bf16 on AMX CPUs: about "
        "2x at the full token grid, docs/performance.md)")


class EvalConfig(_Strict):
    """``vwm evaluate``: plan toward held-out goals with a post-trained world model, beside the baselines, on
    a pool of Ray actors; the driver alone logs (one parent run, a child run per env and planner)."""

    name: str = Field("plan_eval", description="prefix of the parent run's name (NAME-YYYYmmdd-HHMMSS)")
    model_uri: str = Field(description="a vjepa-ac world model: models:/vwm-ac@ALIAS, runs:/ID/world_model or a "
                                       "folder (vwm posttrain registers one)")
    episodes: EpisodesConfig = EpisodesConfig()
    planners: list[PlanConfig] = Field(default_factory=lambda: [PlanConfig()], min_length=1,
                                       description="planners through the learned model (cem, gradient)")
    baselines: bool = Field(True, description="add random actions and CEM on the true simulator, with the first "
                                              "planner's protocol, on the same episodes")
    videos: int = Field(3, ge=0, description="episodes per planner logged as mp4 (observation beside goal)")
    output_dir: str = Field("outputs/eval", description="local folder of the run's table, videos and plot")
    actors: ActorsConfig = ActorsConfig()
    tracking: TrackingConfig = TrackingConfig(experiment="vwm-eval", register_as=None)

    @model_validator(mode="before")
    @classmethod
    def _tracking_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):  # an evaluation registers nothing and has its own experiment unless told
            tracking = data.get("tracking") if isinstance(data.get("tracking"), dict) else {}
            data = {**data, "tracking": {"experiment": "vwm-eval", "register_as": None, **tracking}}
        return data

    @model_validator(mode="after")
    def _labels(self) -> EvalConfig:
        labels = [p.label or p.planner for p in self.planners]
        if len(set(labels)) < len(labels):
            raise ValueError(f"planners share a label ({', '.join(labels)}): give each variant its own plan label")
        return self



class BenchStage(_Strict):
    """One stage of a benchmark: a config file and dotted overrides; ``{out}`` in an override is the
    benchmark's output folder, ``{data}`` the trajectories' folder, ``{encoder}`` the encoder's URI."""

    config: str
    overrides: list[str] = Field(default_factory=list)


class BenchPlanModel(_Strict):
    label: str = Field(description="the model's name in the table")
    overrides: list[str] = Field(default_factory=list, description="post-training overrides of this variant")
    model_uri: str | None = Field(None, description="an existing vjepa-ac model: skips this variant's post-training")


class BenchPlanConfig(_Strict):
    """``jobs/bench_plan.py``: collect -> pretrain -> post-train -> evaluate, end to end on one machine, with
    any stage skipped by giving its output (``data``, ``encoder_uri``, a model's ``model_uri``)."""

    out: str = "outputs/bench_plan"
    collect: BenchStage = BenchStage(config="configs/data/collect_two_rooms.yaml")
    data: str | None = Field(None, description="existing trajectories (train/, held_out/, dataset.json): skips "
                                               "collection")
    pretrain: BenchStage = BenchStage(config="configs/pretrain/debug_cpu.yaml")
    encoder_uri: str | None = Field(None, description="an existing encoder: skips pretraining")
    posttrain: BenchStage = BenchStage(config="configs/posttrain/debug_cpu.yaml")
    models: list[BenchPlanModel] = Field(default_factory=lambda: [BenchPlanModel(label="debug")], min_length=1)
    evaluate: BenchStage = BenchStage(config="configs/eval/debug_cpu.yaml")
    local: bool = Field(True, description="train in this process (no Ray Train workers); evaluation uses actors")
    scaling_episodes: int = Field(20, ge=0, description="episodes of the first learned planner timed on 1 actor "
                                                        "and on evaluate's actors (the speed-up); 0 skips")
    budget_minutes: float = Field(60.0, gt=0, description="the whole benchmark's target wall time")
    report: str | None = Field("docs/planning.md", description="markdown file whose bench_plan block is replaced")
    report_block: str = Field("bench_plan", description="name of the block in the report (one per env)")
