"""``vwm evaluate probe``: frozen encoders and their controls probed for labels on held-out clips, one Ray
task per (encoder, probe) pair, logged by the driver alone.

The driver reads the first encoder's manifest (its architecture and clip geometry set the controls' and
the clips'), builds the labelled clips once and shares them through the object store; each task loads its
encoder (``models:/`` aliases pinned first, so every task sees one version), extracts tokens and fits its
probe for every target. The controls: the same architecture at random init (what pretraining must beat)
and raw pixels. One MLflow run holds a metric per (target, encoder, probe) with its 95% interval, the
table of rows and a bar chart of every encoder against the controls.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vwm.config import ProbeEvalConfig

log = logging.getLogger(__name__)

PROBE_KINDS = ("vjepa",)


class ProbeError(ValueError):
    """An encoder the probe job cannot read; the message says what to pass instead."""


def encoder_manifest(uri: str, tracking_uri: str | None) -> dict:
    """The manifest at ``uri`` (without fetching weights); refuses a kind that has no video encoder to probe."""
    from vwm.tracking.registry import local_member

    try:
        manifest = json.loads(local_member(uri, "manifest.json", tracking_uri).read_text())
    except (FileNotFoundError, OSError) as e:
        raise ProbeError(f"{uri}: no manifest.json ({e}); pass a pretrained world model (vwm pretrain registers "
                         "models:/vwm-jepa@candidate)") from None
    if manifest.get("kind") not in PROBE_KINDS:
        hint = f" its encoder is {manifest['encoder_uri']}" if manifest.get("encoder_uri") else ""
        raise ProbeError(f"{uri} is a {manifest.get('kind')!r} model; probes read a pretrained video encoder "
                         f"(kind vjepa): pass the model it was post-trained from;{hint}")
    return manifest


def probe_task(encoder: dict, probe: str, clips_BTHWC, targets: dict, n_train: int, cfg: dict,
               tracking_uri: str | None, threads: int, device: str) -> list[dict]:
    """One (encoder, probe) pair: tokens of every clip, then the probe's row per target."""
    import torch

    from vwm.eval.probe import encoder_tokens, pixel_tokens, probe_scores
    from vwm.models.artifact import read_world_model
    from vwm.models.vit import VisionTransformer
    from vwm.tracking.registry import local_path

    torch.set_num_threads(threads)
    c = ProbeEvalConfig.model_validate(cfg)
    manifest = encoder["manifest"]
    g = manifest["geometry"]
    t0 = time.perf_counter()
    if encoder["kind"] == "pixels":
        tokens_BND = pixel_tokens(clips_BTHWC, g["patch_size"], g["tubelet_size"])
    else:
        if encoder["kind"] == "random":
            from vwm.config import ModelConfig

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(c.seed)
                net = VisionTransformer(ModelConfig.model_validate(manifest["model_config"]), g["frames"], g["crop"])
            net = net.eval().requires_grad_(False).to(device)
        else:
            net = read_world_model(local_path(encoder["uri"], tracking_uri), device).encoder
        tokens_BND = encoder_tokens(net, clips_BTHWC, torch.device(device))
    t1 = time.perf_counter()
    rows = probe_scores(tokens_BND, g["grid"][0], targets, probe, n_train, c.attentive, seed=c.seed,
                        resamples=c.bootstrap)
    t2 = time.perf_counter()
    return [{"encoder": encoder["name"], **r, "features_s": t1 - t0, "fit_s": t2 - t1} for r in rows]


def bar_chart(rows: list[dict], path: Path) -> Path:
    """One panel per target: a bar per (encoder, probe) with its 95% interval; controls hatched."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = list(dict.fromkeys(r["target"] for r in rows))
    fig, axes = plt.subplots(1, len(targets), figsize=(4.2 * len(targets), 3.4), squeeze=False)
    for ax, target in zip(axes[0], targets):
        sel = [r for r in rows if r["target"] == target]
        x = np.arange(len(sel))
        val = np.array([r["value"] for r in sel])
        err = np.array([val - [r["ci_low"] for r in sel], [r["ci_high"] for r in sel] - val]).clip(min=0)
        colors = ["#4c72b0" if r["probe"] == "attentive" else "#55a868" for r in sel]
        hatches = ["//" if r["control"] else "" for r in sel]
        for i in range(len(sel)):
            ax.bar(x[i], val[i], yerr=err[:, i:i + 1], capsize=3, color=colors[i], hatch=hatches[i])
        ax.axhline(sel[0]["chance"], color="grey", lw=0.8, ls="--")
        ax.set_xticks(x, [f"{r['encoder']}\n{r['probe']}" for r in sel], fontsize=7)
        ax.set_ylim(min(0.0, float(val.min()) - 0.05), 1.0)
        ax.set_title(f"{target} ({sel[0]['metric']})")
    fig.suptitle("probes on frozen features (hatched: controls), 95% intervals", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


@dataclass
class ProbeResult:
    name: str
    run_dir: Path
    rows: list[dict]
    tracker: dict


def run_probe_eval(cfg: ProbeEvalConfig, *, progress: bool = True) -> ProbeResult:
    """Every (encoder or control, probe) pair on the same labelled clips; see the module doc."""
    import ray
    from tqdm import tqdm

    from vwm.configfile import flatten, to_yaml
    from vwm.eval.labelled import labelled_clips
    from vwm.raycluster import connect
    from vwm.tracking.credentials import redact, secure_config
    from vwm.tracking.registry import pin, workers_tracking_uri
    from vwm.tracking.tracker import make_tracker, run_tags

    cfg = secure_config(cfg)  # credentials in the tracking URI move to the environment, before Ray starts
    tracking_uri = workers_tracking_uri(cfg.tracking, [e.uri for e in cfg.encoders])
    manifests = [encoder_manifest(e.uri, tracking_uri) for e in cfg.encoders]
    encoders = [{"name": e.name, "kind": "model", "uri": pin(e.uri, tracking_uri), "manifest": m}
                for e, m in zip(cfg.encoders, manifests)]
    encoders += [{"name": c, "kind": c, "uri": None, "manifest": manifests[0]} for c in cfg.controls]
    g = manifests[0]["geometry"]
    data = labelled_clips(cfg.data, cfg.targets, frames=g["frames"], crop=g["crop"], seed=cfg.seed)
    n_train = int(round(len(data.sources) * cfg.data.train_fraction))
    if not 0 < n_train < len(data.sources):
        raise ProbeError(f"data.train_fraction {cfg.data.train_fraction} of {len(data.sources)} clips leaves no "
                         "train or no test clips; give more clips or another fraction")

    connect()  # before the run opens: a cluster that cannot be reached leaves no run behind
    name = f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.output_dir).resolve() / name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(redact(to_yaml(cfg)))
    tracker = make_tracker(cfg.tracking, run_dir, run_name=name, tags=run_tags("probe_eval", name))
    tracker.log_params({**flatten(cfg), **{f"pinned.{e['name']}": e["uri"] for e in encoders if e["uri"]},
                        "clips.train": n_train, "clips.test": len(data.sources) - n_train})
    tracker.log_artifact(run_dir / "config.yaml")

    t = cfg.tasks
    task = ray.remote(num_cpus=t.cpus_per_task, num_gpus=t.gpus_per_task)(probe_task)
    device = "cuda" if t.gpus_per_task > 0 else "cpu"
    clips_ref = ray.put(data.clips_BTHWC)
    pairs = {task.remote(e, p, clips_ref, data.targets, n_train, cfg.model_dump(mode="json"), tracking_uri,
                         max(1, round(t.cpus_per_task)), device): (e["name"], p)
             for e in encoders for p in cfg.probes}
    rows, status, pending = [], "FAILED", list(pairs)
    bar = tqdm(total=len(pairs), unit="probe", disable=not progress, desc="probe")
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            rows.extend(ray.get(done[0]))
            bar.set_postfix_str("/".join(pairs[done[0]]))
            bar.update(1)
        order = {(e["name"], p): i for i, (e, p) in enumerate((e, p) for e in encoders for p in cfg.probes)}
        rows.sort(key=lambda r: (cfg.targets.index(r["target"]), order[(r["encoder"], r["probe"])]))
        for r in rows:
            r["control"] = r["encoder"] in cfg.controls
        _log(tracker, run_dir, rows)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        bar.close()
        for ref in pending:  # a failed or interrupted job leaves no probe running on the cluster
            ray.cancel(ref, force=True)
        tracker.close(status)
    return ProbeResult(name, run_dir, rows, tracker.handle())


def _log(tracker, run_dir: Path, rows: list[dict]) -> None:
    metrics = {}
    for r in rows:
        key = f"probe/{r['target']}/{r['encoder']}/{r['probe']}"
        metrics.update({f"{key}/{r['metric']}": r["value"], f"{key}/ci_low": r["ci_low"],
                        f"{key}/ci_high": r["ci_high"]})
    tracker.log_metrics(metrics, step=0)
    tracker.log_summary(metrics)
    tracker.log_table(rows, "probe_results.json")
    tracker.log_artifact(bar_chart(rows, run_dir / "probe.png"))


def describe_rows(rows: list[dict]) -> str:
    """The results as a fixed-width table for the terminal."""
    lines = [f"{'target':<12} {'encoder':<20} {'probe':<10} {'metric':>6} {'value':>7} {'95% CI':>16} {'chance':>7}"]
    for r in rows:
        ci = "[{:.2f}, {:.2f}]".format(r["ci_low"], r["ci_high"])
        lines.append(f"{r['target']:<12} {r['encoder'][:20]:<20} {r['probe']:<10} {r['metric']:>6} {r['value']:>7.3f} "
                     f"{ci:>16} {r['chance']:>7.2f}")
    return "\n".join(lines)
