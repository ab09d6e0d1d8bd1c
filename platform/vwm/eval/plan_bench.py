"""The end-to-end planning benchmark (``jobs/bench_plan.py``): collect trajectories, pretrain an encoder,
post-train one world model per variant, and evaluate every variant's planners beside the baselines on the
same episodes; a table of planner x model (success at any step and at the last, 95% Wilson interval,
seconds per plan) goes to the terminal and into the report's block, with each stage's wall time against
the budget. Any stage is skipped by giving its output (``data``, ``encoder_uri``, a model's ``model_uri``).
A second evaluation of the first learned planner on 1 actor and on the configured actors gives the
episodes/s speed-up of the pool.
"""

from __future__ import annotations

import os
import platform
import time
from datetime import date
from pathlib import Path

from vwm.benchreport import write_block
from vwm.config import BenchPlanConfig, BenchStage, CollectConfig, EvalConfig, PosttrainConfig, PretrainConfig
from vwm.configfile import load_config


def _stage(stage: BenchStage, model: type, fields: dict[str, str], extra: list[str] = ()):
    overrides = []
    for o in (*stage.overrides, *extra):  # not str.format: YAML values in overrides have braces of their own
        for key, value in fields.items():
            o = o.replace("{" + key + "}", value)
        overrides.append(o)
    return load_config(stage.config, overrides, model)


def _post_cfg(bench: BenchPlanConfig, model, fields: dict[str, str], encoder: str) -> PosttrainConfig:
    return _stage(bench.posttrain, PosttrainConfig, {**fields, "encoder": encoder}, [
        *model.overrides, f"ac.encoder_uri={encoder}", "train.output_dir={out}/posttrain/" + model.label])


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def run_bench_plan(bench: BenchPlanConfig) -> dict:
    from vwm.data.collect import run_collect
    from vwm.eval.planning import run_evaluation
    from vwm.raycluster import connect
    from vwm.tasks.ac import run_posttrain
    from vwm.tasks.jepa import run_pretrain

    out = Path(bench.out).resolve()
    fields = {"out": str(out), "data": str(Path(bench.data).resolve()) if bench.data else str(out / "traj"),
              "encoder": bench.encoder_uri or ""}
    # every stage's config is validated before the first one runs: a typo costs seconds, not an hour
    collect_cfg = None if bench.data else _stage(bench.collect, CollectConfig, fields, ["out={data}"])
    pre_cfg = None if bench.encoder_uri else _stage(bench.pretrain, PretrainConfig, fields, [
        "train.output_dir={out}/pretrain"])
    for m in bench.models:
        if not m.model_uri:
            _post_cfg(bench, m, fields, encoder="not-yet-trained")
    eval_cfg = _stage(bench.evaluate, EvalConfig, fields, ["output_dir={out}/eval"])

    stages: list[tuple[str, float]] = []
    connect()
    if collect_cfg is not None:
        _, s = _timed(lambda: run_collect(collect_cfg, progress=False))
        stages.append((f"collect {collect_cfg.episodes} {collect_cfg.env.name} episodes", s))
    encoder = bench.encoder_uri
    if pre_cfg is not None:
        pre, s = _timed(lambda: run_pretrain(pre_cfg, local=bench.local, progress=False))
        encoder = str(Path(pre.checkpoint_path) / "world_model")
        stages.append((f"pretrain {pre_cfg.train.steps} steps", s))
    models = {}
    for m in bench.models:
        if m.model_uri:
            models[m.label] = m.model_uri
            continue
        cfg = _post_cfg(bench, m, fields, encoder)
        post, s = _timed(lambda cfg=cfg: run_posttrain(cfg, local=bench.local, progress=False))
        models[m.label] = post.model_uri or str(Path(post.checkpoint_path) / "world_model")
        stages.append((f"post-train {m.label}: {cfg.train.steps} steps", s))
    rows = []
    for i, (label, uri) in enumerate(models.items()):
        cfg = eval_cfg.model_copy(update={"model_uri": uri, "baselines": i == 0, "name": f"bench_{label}"})
        result, s = _timed(lambda cfg=cfg: run_evaluation(EvalConfig.model_validate(cfg.model_dump()),
                                                          progress=False))
        stages.append((f"evaluate {label}: {cfg.episodes.count} episodes x {len(result.rows)} planners", s))
        rows += [{**r, "model": label if r["planner"] not in ("random", "oracle-cem") else "-"} for r in result.rows]
    scaling = _scaling(bench, eval_cfg, next(iter(models.values()))) if bench.scaling_episodes else None
    if scaling:
        stages.append((f"actor scaling: {bench.scaling_episodes} episodes on 1 and {eval_cfg.actors.num_actors} "
                       "actors", scaling["seconds"]))
    table = report(bench, eval_cfg, rows, stages, scaling)
    print(table)
    if bench.report:
        write_block(bench.report, bench.report_block, table)
    return {"rows": rows, "stages": stages, "scaling": scaling}


def _scaling(bench: BenchPlanConfig, eval_cfg: EvalConfig, model_uri: str) -> dict:
    """Episodes/s of the first planner alone on 1 actor and on ``actors.num_actors``."""
    from vwm.eval.planning import run_evaluation

    rates, t0 = {}, time.perf_counter()
    for n in sorted({1, eval_cfg.actors.num_actors}):
        cfg = eval_cfg.model_copy(update={
            "model_uri": model_uri, "baselines": False, "videos": 0, "name": f"bench_scaling_{n}",
            "planners": eval_cfg.planners[:1], "episodes": eval_cfg.episodes.model_copy(
                update={"count": bench.scaling_episodes}),
            "actors": eval_cfg.actors.model_copy(update={"num_actors": n})})
        result = run_evaluation(EvalConfig.model_validate(cfg.model_dump()), progress=False)
        rates[n] = result.rows[0]["episodes_per_s"]
    return {"rates": rates, "seconds": time.perf_counter() - t0}


def report(bench: BenchPlanConfig, eval_cfg: EvalConfig, rows: list[dict], stages: list[tuple[str, float]],
           scaling: dict | None) -> str:
    total = sum(s for _, s in stages)
    p = eval_cfg.planners[0]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [f"{date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} CPUs (1-min load average {load:.1f} "
             f"at the end): {eval_cfg.episodes.count} episodes per planner, goal {eval_cfg.episodes.goal_offset} env "
             f"steps ahead, budget {p.budget}, horizon {p.horizon}, block {p.action_block}, CEM {p.cem.samples} x "
             f"{p.cem.iterations} top-{p.cem.topk}, {eval_cfg.actors.num_actors} actors.", "",
             "| planner | model | success (any step) | 95% interval | success (last step) | final distance "
             "| s per plan |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['planner']} | {r['model']} | {r['success_rate']:.3f} | [{r['ci_low']:.3f}, {r['ci_high']:.3f}] | "
              f"{r['success_rate_last']:.3f} | {r['final_distance']:.2f} | {r['s_per_plan']:.3f} |" for r in rows]
    lines += ["", "| stage | wall s |", "|---|---|"]
    lines += [f"| {name} | {s:.0f} |" for name, s in stages]
    verdict = "within" if total <= bench.budget_minutes * 60 else "OVER"
    lines.append(f"| total | {total:.0f} ({total / 60:.1f} min, {verdict} the {bench.budget_minutes:.0f}-minute "
                 "budget) |")
    if scaling:
        rates = scaling["rates"]
        n = max(rates)
        lines += ["", f"Actor pool: {rates[1]:.3f} episodes/s on 1 actor, {rates[n]:.3f} on {n} "
                      f"({rates[n] / rates[1]:.2f}x)."]
    return "\n".join(lines)
