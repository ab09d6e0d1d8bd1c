"""The CLI and the job entry point run end to end (levanter style: main(cfg) in-process, tiny model)."""

import importlib.util
import subprocess
import sys

import pytest

from vwm.configfile import load_config
from tests.conftest import DEBUG_CONFIG, REPO


def test_vwm_pretrain_local_cli(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "vwm.cli", "pretrain", "--local", "-c", str(DEBUG_CONFIG),
                           "--set", f"train.output_dir={tmp_path}", "--set", "train.steps=3"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "step 3, final loss" in proc.stdout
    (run_dir,) = tmp_path.glob("debug_cpu-*")
    assert (run_dir / "checkpoints" / "step_00000003" / "world_model" / "manifest.json").is_file()
    resumed = subprocess.run([sys.executable, "-m", "vwm.cli", "pretrain", "--local", "--resume", "-c",
                              str(DEBUG_CONFIG), "--set", f"train.output_dir={tmp_path}", "--set", "train.steps=5"],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0 and "step 5, final loss" in resumed.stdout, resumed.stderr[-2000:]
    assert f"run folder: {run_dir}" in resumed.stdout  # the same run, continued


def test_jobs_pretrain_main_in_process(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("pretrain_job", REPO / "jobs" / "pretrain.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    cfg = load_config(DEBUG_CONFIG, [f"train.output_dir={tmp_path}", "train.steps=2"])
    assert job.main(cfg, local=True) == 0
    assert "step 2, final loss" in capsys.readouterr().out


def test_every_example_in_the_help_parses_and_its_config_loads(monkeypatch):
    import shlex

    from vwm.cli import EXAMPLES, build_parser, config_model
    from vwm.configfile import load_config

    monkeypatch.chdir(REPO)
    parser = build_parser()
    for verb, commands in EXAMPLES.items():
        for command in commands:
            argv = shlex.split(command)
            assert argv[0] == "vwm", command
            args = parser.parse_args(argv[1:])
            model = config_model(args.config)
            cfg = load_config(args.config, args.overrides, model)
            if argv[1] in ("pretrain", "posttrain", "evaluate", "sweep"):  # the verb loads the file as its kind
                expected = {"pretrain": "PretrainConfig", "posttrain": "PosttrainConfig", "sweep": "SweepConfig",
                            "evaluate": "ProbeEvalConfig" if "probe" in argv else "EvalConfig"}[argv[1]]
                assert type(cfg).__name__ == expected, command
            if type(cfg).__name__ == "SweepConfig":
                load_config(cfg.base)  # the base every trial starts from


def test_vwm_version_and_config_of_a_sweep_file(capsys):
    from vwm import __version__
    from vwm.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"vwm {__version__}"
    assert main(["config", "--config", str(REPO / "configs/sweep/mask_ema_debug.yaml")]) == 0
    out = capsys.readouterr().out
    assert "space:" in out and "base: configs/pretrain/debug_cpu.yaml" in out
