"""The learning benchmark (``jobs/bench_learning.py``): pretrain on synthetic physics videos within a CPU
budget, then probe the encoder beside a random-init encoder of the same architecture and raw pixels on
held-out clips. The table (every target x encoder x probe with 95% intervals), the held-out RankMe trend,
the pretraining's wall time against the budget and a verdict on each bar go to the terminal and into the
report's ``bench_learning`` block.
"""

from __future__ import annotations

import json
import os
import platform
import time
from datetime import date
from pathlib import Path

from vwm.benchreport import write_block
from vwm.config import BenchLearningConfig, PretrainConfig, ProbeEvalConfig
from vwm.configfile import load_config


def rankme_curve(result) -> list[tuple[int, float]]:
    """(step, held-out RankMe) of a pretraining run: in-process runs carry their monitors, others their
    metrics file."""
    if result.summary is not None:
        rows = result.summary.monitors
    else:
        path = Path(result.run_dir) / "metrics.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return [(int(r["step"]), float(r["eval/rankme"])) for r in rows if "eval/rankme" in r]


def rankme_verdict(curve: list[tuple[int, float]], warmup: int, keep: float) -> tuple[bool | None, str]:
    after = [(s, v) for s, v in curve if s >= warmup]
    if len(after) < 2:
        return None, "held-out RankMe: fewer than two evaluations after warmup (set train.eval_every)"
    first, last, low = after[0][1], after[-1][1], min(v for _, v in after)
    ok = last >= keep * first
    return ok, (f"held-out RankMe after warmup: {first:.1f} at step {after[0][0]}, lowest {low:.1f}, {last:.1f} at "
                f"step {after[-1][0]} ({'kept' if ok else 'FELL below'} {keep:.0%} of its first value)")


def bar_verdicts(rows: list[dict], bench: BenchLearningConfig, encoder: str) -> list[tuple[str, bool]]:
    """Each bar on the attentive probe: the value reached, and its interval clear of every control's."""
    out = []
    for target, metric, need in (("direction", "acc", bench.bars.direction_acc),
                                 ("velocity", "r2", bench.bars.velocity_r2)):
        sel = {r["encoder"]: r for r in rows if r["target"] == target and r["probe"] == "attentive"}
        if encoder not in sel:
            continue
        mine = sel[encoder]
        clear = all(mine["ci_low"] > r["ci_high"] for name, r in sel.items() if r["control"])
        ok = mine["value"] >= need and clear
        out.append((f"{target} {metric} {mine['value']:.3f} >= {need} with its interval clear of the controls'", ok))
    return out


def run_bench_learning(bench: BenchLearningConfig) -> dict:
    from vwm.eval.probe_job import run_probe_eval
    from vwm.tasks.jepa import run_pretrain

    out = Path(bench.out).resolve()
    fields = {"out": str(out)}

    def overrides(stage, extra):
        return [o.replace("{out}", fields["out"]) for o in (*stage.overrides, *extra)]

    # both stages' configs are validated before pretraining starts: a typo costs seconds, not half an hour
    pre_cfg = None if bench.encoder_uri else load_config(bench.pretrain.config, overrides(
        bench.pretrain, ["train.output_dir={out}/pretrain"]), PretrainConfig)
    probe_cfg = load_config(bench.probe.config, overrides(bench.probe, ["output_dir={out}/probe"]), ProbeEvalConfig)
    stages, curve, encoder = [], [], bench.encoder_uri
    if pre_cfg is not None:
        t0 = time.perf_counter()
        pre = run_pretrain(pre_cfg, local=bench.local, progress=False)
        stages.append((f"pretrain {pre_cfg.train.steps} steps", time.perf_counter() - t0))
        encoder = str(Path(pre.checkpoint_path) / "world_model")
        curve = rankme_curve(pre)
    cfg = ProbeEvalConfig.model_validate({**probe_cfg.model_dump(mode="json"),
                                          "encoders": [{"name": "pretrained", "uri": encoder}]})
    t0 = time.perf_counter()
    result = run_probe_eval(cfg, progress=False)
    stages.append((f"probe {len(cfg.controls) + 1} encoders x {len(cfg.probes)} probes on {cfg.data.clips} clips",
                   time.perf_counter() - t0))
    warmup = pre_cfg.optim.lr.warmup_steps if pre_cfg else 0
    rank_ok, rank_line = rankme_verdict(curve, warmup, bench.bars.rankme_keep) if curve else (None, "")
    verdicts = bar_verdicts(result.rows, bench, "pretrained")
    if rank_ok is not None:
        verdicts.append((rank_line, rank_ok))
    table = report(bench, pre_cfg, cfg, result.rows, stages, verdicts, encoder)
    print(table)
    if bench.report:
        write_block(bench.report, "bench_learning", table)
    return {"rows": result.rows, "stages": stages, "verdicts": verdicts, "rankme": curve}


def report(bench: BenchLearningConfig, pre_cfg: PretrainConfig | None, cfg: ProbeEvalConfig, rows: list[dict],
           stages: list[tuple[str, float]], verdicts: list[tuple[str, bool]], encoder: str) -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    what = (f"pretrained {pre_cfg.train.steps} steps of `{bench.pretrain.config}` with "
            f"{' '.join(bench.pretrain.overrides) or 'no overrides'}" if pre_cfg else f"encoder {encoder}")
    n_test = rows[0]["n_test"] if rows else 0
    lines = [f"{date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} CPUs (1-min load average {load:.1f} "
             f"at the end): {what}; probes on {cfg.data.clips} held-out {cfg.data.source} clips ({n_test} scored), "
             f"attentive probe {cfg.attentive.steps} steps.", "",
             "| target | encoder | probe | metric | value | 95% interval |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['target']} | {r['encoder']} | {r['probe']} | {r['metric']} | {r['value']:.3f} | "
              f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}] |" for r in rows]
    lines += ["", "| stage | wall s |", "|---|---|"] + [f"| {name} | {s:.0f} |" for name, s in stages]
    if pre_cfg:
        pre_s = stages[0][1]
        verdict = "within" if pre_s <= bench.budget_minutes * 60 else "OVER"
        lines.append(f"| pretraining | {pre_s / 60:.1f} min, {verdict} the {bench.budget_minutes:.0f}-minute budget |")
    lines += [""] + [f"- {'met' if ok else 'NOT met'}: {text}" for text, ok in verdicts]
    return "\n".join(lines)
