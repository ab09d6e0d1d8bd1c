"""The distributed planning evaluator behind ``vwm evaluate``: MPC episodes on a pool of Ray actors, scored
with Wilson intervals, logged by the driver alone.

Each ``PlannerWorker`` actor loads the world model once (from MLflow or a folder), builds the env the
held-out trajectories came from, and plays the episodes it is handed; an episode depends only on (seed,
index), so which actor plays it does not matter. Planners run one after another over the whole pool, so a
planner's wall time (``plan/episodes_per_s``) is its own. The driver checks the model's kind and the
protocol before any actor starts, pins ``models:/NAME@ALIAS`` to the version it names now (every actor loads
the same one), and logs one parent run with a child run per (env, planner): metrics, a per-episode table,
a few episode videos (observation beside goal), and on the parent a summary table and plot.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vwm.config import EvalConfig, PlanConfig
from vwm.eval.stats import wilson

log = logging.getLogger(__name__)

PLANNING_KINDS = ("vjepa-ac",)
SIMULATOR_PLANNERS = ("random", "oracle-cem")  # need no model: they step the true env
VIDEO_SCALE = 4  # 64x64 frames are too small to watch


class EvalError(ValueError):
    """A model or protocol that cannot be evaluated; the message says what to pass instead."""


def label(plan: PlanConfig) -> str:
    return plan.label or plan.planner


def planners(cfg: EvalConfig) -> list[PlanConfig]:
    """The configured planners, then the baselines missing from them (random actions, CEM on the true
    simulator) under the first planner's protocol: the same budget, horizon, block, seed and CEM."""
    plans = list(cfg.planners)
    if cfg.baselines:
        have = {p.planner for p in plans}
        first = plans[0]
        for kind in SIMULATOR_PLANNERS:
            if kind not in have:
                plans.append(first.model_copy(update={"planner": kind, "label": None}))
    return plans


def model_manifest(uri: str, tracking_uri: str | None) -> dict:
    """The manifest of the world model at ``uri``, without fetching its weights."""
    import json

    from vwm.tracking.registry import local_member

    try:
        return json.loads(local_member(uri, "manifest.json", tracking_uri).read_text())
    except (FileNotFoundError, OSError) as e:
        raise EvalError(f"{uri}: no manifest.json ({e}); pass a post-trained world model (vwm posttrain "
                        "registers models:/vwm-ac@candidate)") from None


def check_model(cfg: EvalConfig, manifest: dict, env) -> None:
    """The model can plan in ``env`` under every planner's protocol; raises ``EvalError`` saying what to pass."""
    from vwm.planning.mpc import check_protocol

    kind = manifest.get("kind")
    if kind not in PLANNING_KINDS:
        raise EvalError(f"{cfg.model_uri} is a {kind!r} world model, which cannot plan (it has no action-conditioned "
                        "predictor); pass a post-trained one: model_uri=models:/vwm-ac@candidate (vwm posttrain "
                        "with ac.encoder_uri pointing at this model makes one)")
    for plan in planners(cfg):
        if plan.planner in SIMULATOR_PLANNERS:
            continue
        try:
            check_protocol(plan, frameskip=int(manifest["frameskip"]), action_dim=int(manifest["action_dim"]),
                           env_action_dim=int(env.action_space.shape[0]), max_horizon=int(manifest["ac"]["max_frames"]))
        except ValueError as e:
            raise EvalError(f"planner {label(plan)}: {e}") from None


class PlannerWorker:
    """One actor of the pool: the model, the env and the held-out trajectories, loaded once."""

    def __init__(self, cfg: dict, model_uri: str, tracking_uri: str | None, env_spec: tuple[str, dict],
                 threads: int, device: str):
        import torch

        from vwm.envs import make_env
        from vwm.models.artifact import read_world_model
        from vwm.planning.episodes import load_trajectory_states
        from vwm.tracking.registry import local_path

        torch.set_num_threads(threads)
        self.cfg = EvalConfig.model_validate(cfg)
        self.plans = planners(self.cfg)
        name, kwargs = env_spec
        self.env = make_env(name, obs_type="pixels_state", **kwargs)
        self.sim_env = make_env(name, obs_type="state", **kwargs)  # the oracle's own copy: rollouts move it
        self.trajectories = load_trajectory_states(self.cfg.episodes)
        needs_model = any(p.planner not in SIMULATOR_PLANNERS for p in self.plans)
        self.model = read_world_model(local_path(model_uri, tracking_uri), device) if needs_model else None
        if self.model is not None:
            a, cuda = self.cfg.actors, device == "cuda"
            bf16 = a.precision == "bf16" or (a.precision == "auto" and cuda)
            self.model.accelerate(compile=a.compile is True or (a.compile == "auto" and cuda),
                                  dtype=torch.bfloat16 if bf16 else None)

    def run(self, plan_index: int, indices: list[int]) -> list:
        from vwm.planning.dynamics import LearnedDynamics, SimulatorDynamics
        from vwm.planning.episodes import draw_episodes
        from vwm.planning.mpc import run_episode

        plan = self.plans[plan_index]
        if plan.planner in SIMULATOR_PLANNERS:
            dynamics = SimulatorDynamics(self.sim_env, plan.action_block, plan.action_penalty, plan.cost_steps)
        else:
            dynamics = LearnedDynamics(self.model, plan.cost, plan.action_penalty, plan.cost_steps)
        episodes = draw_episodes(self.cfg.episodes, self.trajectories, self.env, indices)
        return [run_episode(self.env, dynamics, e, plan, record_frames=e.index < self.cfg.videos) for e in episodes]


def summarize(records: list, wall_s: float) -> dict[str, float]:
    """``plan/*`` metrics of one planner's episodes."""
    n = len(records)
    k = sum(r.success for r in records)
    lo, hi = wilson(k, n)
    plans, steps = sum(r.plans for r in records), sum(r.steps for r in records)
    return {"plan/episodes": n, "plan/success_rate": k / n, "plan/ci_low": lo, "plan/ci_high": hi,
            "plan/success_rate_last": sum(r.success_last for r in records) / n,
            "plan/final_distance": float(np.mean([r.final_distance for r in records])),
            "plan/s_per_plan": sum(r.s_per_plan * r.plans for r in records) / max(plans, 1),
            "plan/s_per_env_step": sum(r.seconds for r in records) / max(steps, 1),
            "plan/episodes_per_s": n / wall_s if wall_s > 0 else float("nan")}


def episode_video(record, fps: int) -> bytes:
    """The observations beside the goal image, upscaled, as mp4 bytes."""
    from vwm.data.decode import encode_mp4

    frames_THWC = record.frames_THWC
    goal_THWC = np.broadcast_to(record.goal_image_HWC, frames_THWC.shape)
    side_THWC = np.concatenate((frames_THWC, goal_THWC), axis=2)
    big_THWC = side_THWC.repeat(VIDEO_SCALE, axis=1).repeat(VIDEO_SCALE, axis=2)
    return encode_mp4(np.ascontiguousarray(big_THWC), fps=fps)


def summary_plot(rows: list[dict], path: Path) -> Path:
    """Success (any step) per planner with its 95% interval, and success at the last step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["planner"] for r in rows]
    rate = np.array([r["success_rate"] for r in rows])
    err = np.array([[r["success_rate"] - r["ci_low"] for r in rows], [r["ci_high"] - r["success_rate"] for r in rows]])
    fig, ax = plt.subplots(figsize=(1.6 * len(rows) + 2, 3.2))
    x = np.arange(len(rows))
    ax.bar(x, rate, yerr=err, capsize=4, color="#4c72b0", label="success (any step), 95% Wilson")
    ax.scatter(x, [r["success_rate_last"] for r in rows], color="#dd8452", zorder=3, label="success at the last step")
    ax.set_xticks(x, names)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate")
    ax.set_title(f"{rows[0]['env']}: {rows[0]['episodes']} episodes per planner")
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


@dataclass
class EvalResult:
    name: str
    run_dir: Path
    model_uri: str  # pinned: models:/NAME/VERSION where an alias was given
    rows: list[dict]  # one per planner: label, success and interval, timings
    tracker: dict  # the parent run's handle


def run_evaluation(cfg: EvalConfig, *, progress: bool = True) -> EvalResult:
    """Every planner of ``planners(cfg)`` on the same ``cfg.episodes.count`` episodes; see the module doc."""
    import ray
    from ray.util import ActorPool
    from tqdm import tqdm

    from vwm.configfile import flatten, to_yaml
    from vwm.envs import make_env
    from vwm.planning.episodes import held_out_env, load_episodes
    from vwm.raycluster import connect
    from vwm.tracking.credentials import redact, secure_config
    from vwm.tracking.registry import pin, workers_tracking_uri
    from vwm.tracking.tracker import make_tracker, run_tags

    cfg = secure_config(cfg)  # credentials in the tracking URI move to the environment, before Ray starts
    tracking_uri = workers_tracking_uri(cfg.tracking, [cfg.model_uri])
    manifest = model_manifest(cfg.model_uri, tracking_uri)
    env_name, env_kwargs = held_out_env(cfg.episodes)
    env = make_env(env_name, **env_kwargs)
    check_model(cfg, manifest, env)
    model_uri = pin(cfg.model_uri, tracking_uri)
    episodes = load_episodes(cfg.episodes, env)  # fails here, not in the actors, on too-short trajectories
    plans = planners(cfg)

    name = f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.output_dir).resolve() / name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(redact(to_yaml(cfg)))
    tracker = make_tracker(cfg.tracking, run_dir, run_name=name,
                           tags={**run_tags("plan_eval", name), "model_uri": model_uri, "env": env_name})
    tracker.log_params({**flatten(cfg), "model_uri_pinned": model_uri, "model_parent_uri": manifest.get("parent_uri")})
    tracker.log_artifact(run_dir / "config.yaml")

    a = cfg.actors
    threads = max(1, round(a.cpus_per_actor))
    device = "cuda" if a.gpus_per_actor > 0 else "cpu"
    connect()
    worker_cls = ray.remote(num_cpus=a.cpus_per_actor, num_gpus=a.gpus_per_actor)(PlannerWorker)
    # the actors see the driver's cluster-wide S3 settings through their own environment; the config travels whole
    actors = [worker_cls.remote(cfg.model_dump(mode="json"), model_uri, tracking_uri, (env_name, env_kwargs),
                                threads, device) for _ in range(a.num_actors)]
    pool = ActorPool(actors)
    fps = int(env.metadata.get("render_fps", 10))
    indices = [e.index for e in episodes]
    chunks = [indices[i:i + a.episodes_per_task] for i in range(0, len(indices), a.episodes_per_task)]
    by_index = {e.index: e for e in episodes}
    rows, status = [], "FAILED"
    bar = tqdm(total=len(indices) * len(plans), unit="episode", disable=not progress, desc="plan")
    try:
        for p, plan in enumerate(plans):
            bar.set_description(f"plan {label(plan)}")
            t0 = time.perf_counter()
            records = []
            for chunk_records in pool.map_unordered(lambda actor, chunk, p=p: actor.run.remote(p, chunk), chunks):
                records.extend(chunk_records)
                bar.update(len(chunk_records))
            records.sort(key=lambda r: r.index)
            metrics = summarize(records, time.perf_counter() - t0)
            rows.append(_log_planner(tracker, run_dir, env_name, plan, records, by_index, metrics, fps))
        _log_parent(tracker, run_dir, rows)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        bar.close()
        for actor in actors:
            ray.kill(actor)
        tracker.close(status)
    return EvalResult(name, run_dir, model_uri, rows, tracker.handle())


def _log_planner(tracker, run_dir: Path, env_name: str, plan: PlanConfig, records: list, by_index: dict,
                 metrics: dict[str, float], fps: int) -> dict:
    """One child run: the planner's params and metrics, the per-episode table, its videos."""
    from vwm.configfile import flatten

    child_name = f"{env_name}-{label(plan)}"
    child = tracker.child(child_name, tags={"planner": plan.planner, "env": env_name})
    child.log_params({f"plan.{k}": v for k, v in flatten(plan).items()})
    child.log_metrics(metrics, step=0)
    child.log_summary(metrics)
    table = [{**r.row(), "source": by_index[r.index].source, "start_step": by_index[r.index].start_step}
             for r in records]
    child.log_table(table, "episodes.json")
    videos = [r for r in records if r.frames_THWC is not None]
    if videos:
        folder = run_dir / child_name / "videos"
        folder.mkdir(parents=True, exist_ok=True)
        for r in videos:
            outcome = "success" if r.success else "failure"
            (folder / f"episode_{r.index:04d}_{outcome}.mp4").write_bytes(episode_video(r, fps))
        child.log_artifact(folder, "videos")
    child.close("FINISHED")
    return {"env": env_name, "planner": label(plan), **{k.split("/", 1)[1]: v for k, v in metrics.items()}}


def _log_parent(tracker, run_dir: Path, rows: list[dict]) -> None:
    tracker.log_metrics({f"{r['planner']}/{k}": r[k] for r in rows for k in
                         ("success_rate", "success_rate_last", "ci_low", "ci_high", "s_per_plan")}, step=0)
    tracker.log_table(rows, "summary.json")
    tracker.log_artifact(summary_plot(rows, run_dir / "success.png"))


def describe_rows(rows: list[dict]) -> str:
    """The summary as a fixed-width table for the terminal."""
    head = f"{'planner':<16} {'success':>8} {'95% CI':>15} {'last':>6} {'dist':>6} {'s/plan':>8} {'ep/s':>6}"
    lines = [head]
    for r in rows:
        ci = "[{:.2f}, {:.2f}]".format(r["ci_low"], r["ci_high"])
        lines.append(f"{r['planner']:<16} {r['success_rate']:>8.2f} {ci:>15} "
                     f"{r['success_rate_last']:>6.2f} {r['final_distance']:>6.2f} {r['s_per_plan']:>8.3f} "
                     f"{r['episodes_per_s']:>6.2f}")
    return "\n".join(lines)

