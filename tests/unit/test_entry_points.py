"""The CLI and the job entry point run end to end (levanter style: main(cfg) in-process, tiny model)."""

import importlib.util
import subprocess
import sys

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
