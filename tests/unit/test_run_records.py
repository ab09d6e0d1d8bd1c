"""What a run shows and records: rank 0's progress lines, the params that apply, the inputs it logs, and
where a registered MLflow model keeps the vwm artifact."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import REPO
from vwm.configfile import flatten, load_config
from vwm.tracking.registry import vwm_folder
from vwm.tracking.tracker import JsonlTracker, dataset_input, describe
from vwm.train.trainer import ProgressLines


def test_progress_lines_say_step_loss_lr_rankme_rate_and_eta(capsys, monkeypatch):
    clock = iter([100.0, 111.0, 116.0, 121.0])
    monkeypatch.setattr("vwm.train.trainer.time.perf_counter", lambda: next(clock))
    lines = ProgressLines("run-1", total=40, start=0, shown={"rankme": ("eval/rankme", "repr/rankme")})
    first = lines.update(1, {"train/loss": 0.8281, "train/lr": 1.9e-4, "repr/rankme": 32.14}, show=True)
    assert first == "run-1 step 1/40  loss 0.8281  lr 1.90e-04  rankme 32.1  first line after 11.0 s"
    lines.update(3, {"repr/rankme": 30.0}, show=False)  # a monitor between log steps: remembered, not shown
    line = lines.update(6, {"train/loss": 0.7468, "train/lr": 6.4e-4}, show=True)
    # 5 s for 5 steps since the last line: 1 s/step, 34 steps left
    assert line == "run-1 step 6/40  loss 0.7468  lr 6.40e-04  rankme 30.0  1.00 s/step  ETA 0:00:34"
    assert capsys.readouterr().out.splitlines() == [first, line]


def test_progress_lines_after_a_resume_count_from_the_restored_step(monkeypatch):
    clock = iter([0.0, 4.0, 3604.0])
    monkeypatch.setattr("vwm.train.trainer.time.perf_counter", lambda: next(clock))
    lines = ProgressLines("r", total=10_000, start=5000)
    assert lines.update(5002, {"train/loss": 1.0}, show=True).endswith("first line after 4.0 s")
    assert lines.update(6002, {"train/loss": 1.0}, show=True).endswith("3.60 s/step  ETA 3:59:52")


def test_params_leave_out_what_does_not_apply():
    shards = flatten(load_config(REPO / "configs/pretrain/debug_shards.yaml"))
    cfg = load_config(REPO / "configs/pretrain/debug_shards.yaml")
    assert {k for k in shards if k.startswith(cfg.unused_keys(local=False))} == {
        k for k in shards if k.startswith(("data.synthetic.", "monitor.probe."))}
    synthetic = load_config(REPO / "configs/pretrain/debug_cpu.yaml")
    unused = synthetic.unused_keys(local=True)
    kept = [k for k in flatten(synthetic) if not k.startswith(unused)]
    assert "data.synthetic.num_videos" in kept and "data.frames" in kept and "optim.lr.peak" in kept
    assert not any(k.startswith(("dist.", "data.paths", "data.shuffle_buffer")) for k in kept)


def test_dataset_input_names_absolute_roots_counts_files_and_digests_the_list(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a = dataset_input("videos", "training", [f"{tmp_path}/s/a.tar", f"{tmp_path}/s/b.tar"], roots=["s"])
    assert json.loads(a["source"]) == [str(tmp_path / "s")] and a["profile"] == {"files": 2}
    same = dataset_input("videos", "training", [f"{tmp_path}/s/b.tar", f"{tmp_path}/s/a.tar"], roots=["s"])
    more = dataset_input("videos", "training", [f"{tmp_path}/s/a.tar", f"{tmp_path}/s/c.tar"], roots=["s"])
    assert a["digest"] == same["digest"] != more["digest"] and re.fullmatch(r"[0-9a-f]{16}", a["digest"])
    s3 = dataset_input("videos", "training", ["s3://b/x.tar"], roots=["s3://b/"])
    assert json.loads(s3["source"]) == ["s3://b/"]
    tracker = JsonlTracker(tmp_path / "run")
    tracker.log_inputs([a])
    assert json.loads((tmp_path / "run" / "inputs.json").read_text()) == [a]


def test_describe_gives_the_run_page_of_a_served_tracking_uri():
    handle = {"backend": "mlflow", "tracking_uri": "http://user:secret@mlflow:5000", "run_id": "abc",
              "experiment_id": "7"}
    (line,) = describe(handle)
    assert line.startswith("MLflow run: http://") and line.endswith("mlflow:5000/#/experiments/7/runs/abc")
    assert "secret" not in line
    local = describe({**handle, "tracking_uri": "sqlite:////x/mlruns.db"})
    assert "mlflow ui --backend-store-uri sqlite:////x/mlruns.db" in local[1] and local[1].endswith("/runs/abc")


@pytest.mark.parametrize("layout", ["vwm", "pyfunc", "other"])
def test_vwm_folder_finds_the_artifact_inside_an_mlflow_model(tmp_path, layout):
    if layout == "vwm":
        (tmp_path / "manifest.json").write_text("{}")
        assert vwm_folder(tmp_path) == tmp_path
    elif layout == "pyfunc":
        (tmp_path / "MLmodel").write_text("flavors:\n  python_function:\n    artifacts:\n      world_model:\n"
                                          "        path: artifacts/world_model\n")
        assert vwm_folder(tmp_path) == tmp_path / "artifacts" / "world_model"
    else:
        assert vwm_folder(tmp_path) == tmp_path  # read_world_model then says what the folder lacks


def test_the_recorded_command_line_masks_secret_options(monkeypatch):
    from vwm.tracking.tracker import run_tags

    monkeypatch.setattr("sys.argv", ["default_worker.py", "--redis-password=abc", "--token", "xyz",
                                     "--set", "tracking.tracking_uri=http://u:pw@host:5000", "--node-ip-address=1.2"])
    source = run_tags("pretrain", "r")["mlflow.source.name"]
    assert not any(secret in source for secret in ("abc", "xyz", ":pw@")), source
    assert source.startswith("default_worker.py --redis-password=*** --token ***") and "1.2" in source
