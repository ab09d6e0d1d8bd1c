"""The ``vwm`` command: parse arguments, load and validate the config, call a ``run_*`` function.

Config problems exit with status 2 and a one-line message before any model or cluster work starts.
"""

from __future__ import annotations

import argparse
import logging
import sys

from vwm.config import ConfigError
from vwm.configfile import load_config


# commands a verb's --help shows, each run by a test (its config loads as the verb loads it)
EXAMPLES = {
    "pretrain": ["vwm pretrain --config configs/pretrain/debug_cpu.yaml --local",
                 "vwm pretrain --config configs/pretrain/debug_shards.yaml --set train.steps=100",
                 "vwm pretrain --config configs/pretrain/debug_cpu.yaml --init-from models:/vwm-jepa@candidate"],
    "posttrain": ["vwm posttrain --config configs/posttrain/debug_cpu.yaml --local"],
    "evaluate": ["vwm evaluate --config configs/eval/debug_cpu.yaml",
                 "vwm evaluate probe --config configs/eval/probe_debug.yaml"],
    "sweep": ["vwm sweep --config configs/sweep/mask_ema_debug.yaml",
              "vwm sweep --config configs/sweep/mask_ema_debug.yaml --set num_samples=8 --set max_concurrent_trials=2",
              "vwm sweep --config configs/sweep/mask_ema_probe.yaml --set scheduler.kind=fifo",
              "vwm sweep --config configs/sweep/pbt_debug.yaml",
              "vwm config --config configs/sweep/pbt_debug.yaml"],
    "config": ["vwm config --config configs/pretrain/vjepa_vitl.yaml --set data.paths=[s3://bucket/videos/]",
               "vwm config --config configs/sweep/mask_ema_debug.yaml"],
}


def _examples(verb: str) -> dict:
    return {"epilog": "examples:\n  " + "\n  ".join(EXAMPLES[verb]),
            "formatter_class": argparse.RawDescriptionHelpFormatter}


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", required=True, action="append",
                   help="YAML config (configs/ holds one for each command, see the examples); repeat to merge "
                        "files in order (a recipe, then a cluster overlay, then a data overlay)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, repeatable: --set model.depth=4 --set train.steps=20")


def load_or_exit(args: argparse.Namespace, model: type | None = None):
    try:
        return load_config(args.config, args.overrides, model)
    except ConfigError as e:
        print(f"vwm: config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def add_training_args(p: argparse.ArgumentParser) -> None:
    add_config_args(p)
    p.add_argument("--local", action="store_true",
                   help="train in this process; default: Ray Train + DeepSpeed on RAY_ADDRESS or a local Ray")
    p.add_argument("--resume", action="store_true", help="continue the newest run of this name from its checkpoint")


def run_job(main, model: type, doc: str | None, training: bool = False) -> None:
    """The ``__main__`` of a thin job: parse ``--config``/``--set`` (and ``--local``/``--resume`` for a
    training job), load ``model``, exit with main's code."""
    logging.basicConfig(level=logging.INFO)
    parser = argparse.ArgumentParser(description=doc)
    (add_training_args if training else add_config_args)(parser)
    args = parser.parse_args()
    cfg = load_or_exit(args, model)
    sys.exit(main(cfg, local=args.local, resume=args.resume) if training else main(cfg))


def train_and_describe(run, cfg, *, local: bool, resume: bool) -> int:
    """Run a ``run_*`` training function and print where its results are; bad data paths exit 2."""
    from vwm.data.shards import DataSourceError

    try:
        result = run(cfg, local=local, resume=resume)
    except (DataSourceError, ConfigError) as e:
        print(f"vwm: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the run said how to resume
        return 130
    print(describe_result(result))
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    from vwm.tasks.jepa import run_pretrain

    if args.init_from:
        args.overrides = [*args.overrides, f"train.init_weights={args.init_from}"]
    return train_and_describe(run_pretrain, load_or_exit(args), local=args.local, resume=args.resume)


def _posttrain(args: argparse.Namespace) -> int:
    from vwm.config import PosttrainConfig
    from vwm.tasks.ac import run_posttrain

    return train_and_describe(run_posttrain, load_or_exit(args, PosttrainConfig), local=args.local,
                              resume=args.resume)


def _publish(args: argparse.Namespace) -> int:
    """Finish what a tracking outage at a run's end left: unsent metrics, registration, the run's status."""
    from pathlib import Path

    from vwm.train.publish import PENDING_FILE, PublishError, complete

    run_dir = Path(args.run_dir)
    if not (run_dir / "tracker.json").is_file():
        print(f"vwm: {run_dir} is not a run folder (no tracker.json); give train.output_dir/RUN_NAME",
              file=sys.stderr)
        return 2
    if not (run_dir / PENDING_FILE).is_file():
        print(f"run {run_dir.name}: nothing left to publish")
        return 0
    try:
        uri = complete(run_dir)
    except PublishError as e:
        print(f"vwm: {e}", file=sys.stderr)
        return 1
    print(f"run {run_dir.name}: published" + (f"; model: {uri}" if uri else ""))
    return 0


def describe_result(result) -> str:
    """What a person needs at the end of a run: where it stopped, where its records and model are."""
    from vwm.tracking.tracker import describe

    loss = result.metrics.get("train/loss")
    lines = [f"run {result.name}: step {result.metrics.get('step')}"
             + (f", final loss {loss:.4f}" if isinstance(loss, float) else ""),
             f"run folder: {result.run_dir}", f"checkpoint: {result.checkpoint_path}", *describe(result.tracker)]
    if result.model_uri:
        lines.append(f"model: {result.model_uri}  (vwm.load_world_model(\"{result.model_uri}\"))")
    return "\n".join(lines)


def _sweep(args: argparse.Namespace) -> int:
    from vwm.tune.space import SweepConfig
    from vwm.tune.sweep import run_sweep

    cfg = load_or_exit(args, SweepConfig)
    try:
        run_sweep(cfg)
    except ConfigError as e:
        print(f"vwm: config error: {e}", file=sys.stderr)
        return 2
    return 0


def evaluate_and_describe(cfg) -> int:
    """Plan with a world model against the baselines (``vwm evaluate`` and ``jobs/evaluate.py``); a model
    that cannot plan, or a protocol it cannot take, exits 2 before any actor starts."""
    from vwm.data.shards import DataSourceError
    from vwm.eval.planning import EvalError, describe_rows, run_evaluation
    from vwm.planning.episodes import EpisodeError
    from vwm.tracking.tracker import describe

    try:
        result = run_evaluation(cfg)
    except (EvalError, EpisodeError, DataSourceError, FileNotFoundError) as e:
        print(f"vwm: {e}", file=sys.stderr)
        return 2
    print(describe_rows(result.rows))
    print("\n".join([f"model: {result.model_uri}", f"run folder: {result.run_dir}", *describe(result.tracker)]))
    return 0


def probe_and_describe(cfg) -> int:
    """Probe frozen encoders against their controls (``vwm evaluate probe`` and ``jobs/evaluate_probe.py``);
    an encoder that cannot be probed, or labels that cannot be read, exit 2 before any task starts."""
    from vwm.data.shards import DataSourceError
    from vwm.eval.probe_job import ProbeError, describe_rows, run_probe_eval
    from vwm.tracking.tracker import describe

    try:
        result = run_probe_eval(cfg)
    except (ProbeError, DataSourceError, FileNotFoundError) as e:
        print(f"vwm: {e}", file=sys.stderr)
        return 2
    print(describe_rows(result.rows))
    print("\n".join([f"run folder: {result.run_dir}", *describe(result.tracker)]))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from vwm.config import EvalConfig, ProbeEvalConfig

    if args.what == "probe":
        return probe_and_describe(load_or_exit(args, ProbeEvalConfig))
    return evaluate_and_describe(load_or_exit(args, EvalConfig))


def config_model(paths: list[str]) -> type:
    """The config model a file is for, from the top-level keys only its kind has (default: pretraining)."""
    import yaml

    from vwm.config import CollectConfig, EvalConfig, PosttrainConfig, PretrainConfig, ProbeEvalConfig
    from vwm.tune.space import SweepConfig

    keys: set[str] = set()
    for path in paths:
        try:
            data = yaml.safe_load(open(path, encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue  # load_config says what is wrong with the file
        keys |= set(data) if isinstance(data, dict) else set()
    for marker, model in (("space", SweepConfig), ("ac", PosttrainConfig), ("planners", EvalConfig),
                          ("encoders", ProbeEvalConfig), ("policy", CollectConfig)):
        if marker in keys:
            return model
    return PretrainConfig


def _config_show(args: argparse.Namespace) -> int:
    """Any config the CLI takes (pretrain, posttrain, sweep, evaluate plan or probe, data collect), resolved."""
    from vwm.configfile import to_yaml

    print(to_yaml(load_or_exit(args, config_model(args.config))), end="")
    return 0


def _data_synth(args: argparse.Namespace) -> int:
    from vwm.config import SyntheticConfig
    from vwm.data.shards import DataSourceError
    from vwm.data.tools import run_synth
    from vwm.raycluster import connect

    try:
        cfg = SyntheticConfig(video_frames=args.frames, height=args.size, width=args.size, fps=args.fps,
                              max_objects=args.max_objects, num_videos=args.num_videos)
    except ValueError as e:
        print(f"vwm: bad synth option: {e}", file=sys.stderr)
        return 2
    connect()
    try:
        run_synth(args.out, num_videos=args.num_videos, shards=args.shards, seed=args.seed, cfg=cfg,
                  endpoint_url=args.endpoint_url)
    except DataSourceError as e:
        print(f"vwm: {e}", file=sys.stderr)
        return 2
    return 0


def _data_pack(args: argparse.Namespace) -> int:
    from vwm.data.pack import run_pack
    from vwm.data.shards import DataSourceError
    from vwm.raycluster import connect

    if args.shard_videos < 1 or args.shard_mb <= 0:
        print("vwm: --shard-videos must be >= 1 and --shard-mb > 0", file=sys.stderr)
        return 2
    try:
        connect()
        result = run_pack(args.videos, args.out, labels=args.labels, shard_videos=args.shard_videos,
                          shard_mb=args.shard_mb, endpoint_url=args.endpoint_url)
    except DataSourceError as e:
        print(f"vwm: {e}", file=sys.stderr)
        return 2
    unmatched = f"; {len(result.unmatched_rows)} label rows named no video" if result.unmatched_rows else ""
    print(f"wrote {result.videos} videos ({result.labelled} labelled{unmatched}) in {len(result.shards)} shards "
          f"({result.bytes / 1e6:.1f} MB) under {args.out}")
    print(f"train on them with: --set 'data.paths=[\"{result.pattern()}\"]'")  # quoted: braces are YAML's too
    return 0


def _data_inspect(args: argparse.Namespace) -> int:
    from vwm.data.shards import DataSourceError
    from vwm.data.tools import run_inspect
    from vwm.raycluster import connect

    connect()
    try:
        report = run_inspect(args.paths, args.endpoint_url)
    except DataSourceError as e:
        print(f"vwm: {e}", file=sys.stderr)
        return 2
    print(report.text())
    return 0


def collect_and_describe(cfg) -> int:
    """Collect trajectories (``vwm data collect`` and ``jobs/collect.py``); a bad output path exits 2."""
    from vwm.data.collect import check_output, run_collect
    from vwm.data.shards import DataSourceError
    from vwm.raycluster import connect

    try:
        check_output(cfg)
        connect()
        result = run_collect(cfg)
    except DataSourceError as e:
        print(f"vwm: {e}", file=sys.stderr)
        return 2
    print(f"wrote {result.episodes['train']} train and {result.episodes['held_out']} held-out episodes "
          f"({result.bytes / 1e6:.1f} MB) in {result.seconds:.1f} s under {result.out} (dataset.json beside them)")
    return 0


def _data_collect(args: argparse.Namespace) -> int:
    from vwm.config import CollectConfig

    return collect_and_describe(load_or_exit(args, CollectConfig))


def _submit(args: argparse.Namespace) -> int:
    from vwm.submit import main as submit_main

    return submit_main(args)


def add_submit_parser(sub) -> None:
    p = sub.add_parser("submit", help="run a job on a Ray cluster through Ray Jobs; the config is validated here "
                                      "first. List and stop jobs with Ray's own `ray job list|stop|logs`",
                       description="Validate the config here, refuse paths a cluster cannot share, then submit "
                                   "`python -m vwm.cli VERB ...` with the working folder and the vwm package "
                                   "shipped. Example: vwm submit pretrain -c configs/pretrain/debug_cpu.yaml "
                                   "--set train.output_dir=/mnt/shared/vwm --set dist.storage_path=s3://b/ray "
                                   "--follow")
    verbs = p.add_subparsers(dest="verb", required=True)
    for verb, what in [("pretrain", None), ("posttrain", None), ("sweep", None), ("evaluate", ["plan", "probe"]),
                       ("data", ["collect"])]:
        v = verbs.add_parser(verb, help=f"submit `vwm {verb}`")
        if what:
            v.add_argument("what", nargs="?" if verb == "evaluate" else None, choices=what, default=what[0])
        add_config_args(v)
        if verb in ("pretrain", "posttrain"):
            v.add_argument("--resume", action="store_true", help="continue the newest run of this name")
        v.add_argument("--address", help="the head's Ray Jobs address, http://HEAD:8265; default: "
                                         "$RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS")
        v.add_argument("--follow", action="store_true", help="stream the job's logs; exit with its status")
        v.add_argument("--no-wait", action="store_true", help="return once the job is submitted")
        v.add_argument("--working-dir", default=None,
                       help="folder shipped as the job's working folder (configs, jobs); default: this folder")
        v.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                       help="a non-secret variable for the job (secrets belong in the cluster's environment)")
        v.set_defaults(func=_submit)


def build_parser() -> argparse.ArgumentParser:
    from vwm import __version__

    parser = argparse.ArgumentParser(prog="vwm", description="video world models: JEPA pretraining on Ray")
    parser.add_argument("--version", action="version", version=f"vwm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pretrain", help="self-supervised V-JEPA pretraining", **_examples("pretrain"))
    add_training_args(p)
    p.add_argument("--init-from", metavar="URI", default=None,
                   help="start from a registered model's weights (same architecture), e.g. models:/vwm-jepa@candidate, "
                        "runs:/RUN_ID/world_model or a folder: fine-tuning (sets train.init_weights)")
    p.set_defaults(func=_pretrain)
    p = sub.add_parser("posttrain", help="action-conditioned post-training (V-JEPA 2-AC) on trajectory shards",
                       **_examples("posttrain"))
    add_training_args(p)
    p.set_defaults(func=_posttrain)
    p = sub.add_parser("evaluate", help="plan: plan toward held-out goals with a post-trained world model on Ray "
                                        "actors, beside random actions and CEM on the true simulator; probe: "
                                        "linear and attentive probes of frozen encoders beside random-init and pixels",
                       **_examples("evaluate"))
    p.add_argument("what", nargs="?", choices=["plan", "probe"], default="plan",
                   help="what to evaluate (default: plan)")
    add_config_args(p)
    p.set_defaults(func=_evaluate)
    p = sub.add_parser("sweep", help="Ray Tune sweep over a pretrain config (every trial a TorchTrainer run)",
                       **_examples("sweep"))
    add_config_args(p)
    p.set_defaults(func=_sweep)
    data = sub.add_parser("data", help="make and inspect video shards").add_subparsers(dest="data_cmd", required=True)
    p = data.add_parser("synth", help="write synthetic moving-shape videos as WebDataset tar shards")
    p.add_argument("--out", required=True, help="folder or s3:// prefix for shard-NNNNN.tar files")
    p.add_argument("--num-videos", type=int, default=256)
    p.add_argument("--shards", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frames", type=int, default=64, help="frames per video")
    p.add_argument("--size", type=int, default=64, help="frame height and width in pixels")
    p.add_argument("--fps", type=int, default=15)
    p.add_argument("--max-objects", type=int, default=4)
    p.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint for s3:// outputs")
    p.set_defaults(func=_data_synth)
    p = data.add_parser("pack", help="pack a folder or s3:// prefix of videos (and a CSV of labels) into "
                                     "WebDataset tar shards: KEY.mp4 as it is, KEY.json from the video's CSV row")
    p.add_argument("--videos", required=True, help="folder or s3:// prefix; every video below it is packed")
    p.add_argument("--labels", default=None, help="CSV with a path column (relative to --videos) and label columns")
    p.add_argument("--out", required=True, help="folder or s3:// prefix for shard-NNNNN.tar files")
    p.add_argument("--shard-videos", type=int, default=1000, help="videos per shard at most")
    p.add_argument("--shard-mb", type=float, default=1000.0, help="megabytes per shard, about")
    p.add_argument("--endpoint-url", default=None, help="S3-compatible endpoint for s3:// inputs and outputs")
    p.set_defaults(func=_data_pack)
    p = data.add_parser("inspect", help="count videos, duration, resolutions, fps; list unreadable files")
    p.add_argument("paths", nargs="+", help="files, folders, globs or s3:// prefixes")
    p.add_argument("--endpoint-url", default=None)
    p.set_defaults(func=_data_inspect)
    p = data.add_parser("collect", help="roll out env episodes with scripted policies into trajectory shards")
    add_config_args(p)
    p.set_defaults(func=_data_collect)
    p = sub.add_parser("publish", help="send what a tracking outage at a run's end left undone: its unsent "
                                       "metrics, the model's registration, the run's final status")
    p.add_argument("run_dir", help="the run's folder, train.output_dir/RUN_NAME")
    p.set_defaults(func=_publish)
    add_submit_parser(sub)
    p = sub.add_parser("config", help="print any config the commands take, resolved (defaults, files, overrides), "
                                      "as YAML", **_examples("config"))
    add_config_args(p)
    p.set_defaults(func=_config_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
