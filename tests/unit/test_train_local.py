"""Single-process training on synthetic moving shapes: learning, checkpoints, resume, bad steps."""

import json

import pytest
import torch

from vwm.configfile import load_config
from vwm.tasks.jepa import context_variance_hinge, run_pretrain
from vwm.train import checkpoint as ckpt
from tests.conftest import DEBUG_CONFIG


def _cfg(tmp_path, *extra):
    return load_config(DEBUG_CONFIG, [f"train.output_dir={tmp_path}", "train.device=cpu", *extra])


def run_local(cfg, **kwargs):
    return run_pretrain(cfg, local=True, progress=False, **kwargs).summary


def test_loss_falls_clearly_without_collapse(tmp_path):
    s = run_local(_cfg(tmp_path, "train.steps=50", "monitor.every=10", "train.eval_every=25"))
    first, last = sum(s.losses[:5]) / 5, sum(s.losses[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    stds = [m["repr/std"] for m in s.monitors if "repr/std" in m]
    assert min(stds) > 0.2, stds  # layer-normed targets: collapse drives this towards 0
    assert all(m["repr/rankme"] > 5 for m in s.monitors if "repr/rankme" in m)
    heldout = [m["eval/rankme"] for m in s.monitors if "eval/rankme" in m]
    assert len(heldout) == 2 and min(heldout) > 15, heldout  # held-out clips: 37 at init, 96 at most (D)
    assert s.skipped_steps == 0


def test_run_writes_resolved_config_metrics_and_checkpoint(tmp_path):
    cfg = _cfg(tmp_path, "train.steps=6", "train.checkpoint_every=3", "train.keep_checkpoints=1")
    s = run_local(cfg)
    saved = load_config(s.run_dir / "config.yaml")
    assert saved.train.run_name == s.run_dir.name and saved.model == cfg.model and saved.optim == cfg.optim
    rows = [json.loads(line) for line in (s.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {"train/loss", "train/lr", "train/ema_momentum", "repr/std", "repr/rankme"} <= set(rows[0])
    assert [p.name for p in ckpt.list_checkpoints(s.run_dir / "checkpoints")] == ["step_00000006"]
    summary = json.loads((s.run_dir / "summary.json").read_text())
    assert summary["step"] == 6 and summary["train/loss"] == pytest.approx(s.losses[-1])
    assert not list((s.run_dir / "checkpoints").glob(".tmp-*"))
    # the final checkpoint carries the world-model artifact, which loads on its own
    import vwm

    wm = vwm.load_world_model(s.last_checkpoint / "world_model")
    assert wm.kind == "vjepa" and wm.manifest["format_version"] == 1
    feats = wm.encode(torch.randint(0, 256, (8, 48, 80, 3), dtype=torch.uint8))  # any size: cropped and resized
    assert feats.shape == (1, 4 * 8 * 8, 96) and torch.isfinite(feats).all()


def test_resume_continues_the_same_loss_curve(tmp_path):
    full = run_local(_cfg(tmp_path / "a", "train.steps=12"))
    half = _cfg(tmp_path / "b", "train.steps=12", "train.checkpoint_every=6")
    first = run_local(half, stop_at=6)  # as if preempted after step 6
    assert first.last_checkpoint.name == "step_00000006"
    meta = json.loads((first.last_checkpoint / "meta.json").read_text())
    assert meta == {"step": 6, "data_position": {"next_step": 6, "position": None}}
    # same run folder, full schedule: resume picks up the checkpoint at step 6
    rest = run_local(half, resume=True)
    assert rest.start_step == 6 and rest.run_dir == first.run_dir
    torch.testing.assert_close(torch.tensor(first.losses[:6]), torch.tensor(full.losses[:6]), rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.tensor(rest.losses), torch.tensor(full.losses[6:]), rtol=0, atol=1e-5)


def test_a_restart_after_a_kill_logs_each_step_once_counts_the_restart_and_clears_the_half_save(tmp_path):
    cfg = _cfg(tmp_path, "train.steps=8", "train.checkpoint_every=4", "train.log_every=1")
    first = run_local(cfg, stop_at=6)
    # as if killed while saving after step 6: its checkpoint unfinished, steps 4-5 (0-based) already logged
    done = first.run_dir / "checkpoints" / "step_00000006"
    done.rename(first.run_dir / "checkpoints" / ".tmp-step_00000006-4242")
    rest = run_local(cfg, resume=True)
    assert rest.start_step == 4
    rows = [json.loads(line) for line in (first.run_dir / "metrics.jsonl").read_text().splitlines()]
    loss_steps = [r["step"] for r in rows if "train/loss" in r]
    assert loss_steps == list(range(8)), loss_steps  # one point per step: the redone 4-5 not logged twice
    logged = {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}
    torch.testing.assert_close(torch.tensor([logged[4], logged[5]]), torch.tensor(rest.losses[:2]), rtol=0,
                               atol=1e-5)  # the redo computed what the killed attempt had logged
    assert [(r["step"], r["train/restarts"]) for r in rows if "train/restarts" in r] == [(4, 1)]
    assert not list((first.run_dir / "checkpoints").glob(".tmp-*"))
    assert [p.name for p in ckpt.list_checkpoints(first.run_dir / "checkpoints")][-1] == "step_00000008"


def test_prune_removes_only_checkpoints_ray_did_not_register(tmp_path):
    for name in ("checkpoint_000001", "checkpoint_000002", "checkpoint_000003", "other"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "meta.json").write_text("{}")
    deleted = ckpt.prune_unregistered(str(tmp_path), [str(tmp_path / "checkpoint_000002"),
                                                      str(tmp_path / "checkpoint_000003") + "/"])
    assert sorted(p.rsplit("/", 1)[-1] for p in deleted) == ["checkpoint_000001"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_000002", "checkpoint_000003", "other"]


def test_resuming_a_finished_run_says_so_and_trains_nothing(tmp_path, capsys):
    from vwm.tasks.jepa import context_variance_hinge, run_pretrain

    cfg = _cfg(tmp_path, "train.steps=2")
    first = run_pretrain(cfg, local=True)
    again = run_pretrain(cfg, local=True, resume=True)
    assert again.name == first.name and again.metrics == {"step": 2} and again.model_uri is None
    assert f"run {first.name} is already at step 2 of train.steps=2: nothing to resume" in capsys.readouterr().out
    assert [p.name for p in (first.run_dir / "checkpoints").iterdir()] == ["step_00000002"]


def test_a_fresh_run_never_writes_into_an_earlier_one(tmp_path):
    a = run_local(_cfg(tmp_path, "train.steps=2"))
    b = run_local(_cfg(tmp_path, "train.steps=2"))
    assert b.run_dir != a.run_dir and b.run_dir.name.startswith("debug_cpu-")
    assert ckpt.latest_checkpoint(a.run_dir / "checkpoints").name == "step_00000002"


def test_non_finite_loss_skips_the_update(tmp_path, monkeypatch):
    import vwm.tasks.jepa as step_mod

    real = step_mod.jepa_loss
    calls = {"n": 0}

    def sometimes_nan(*args):
        calls["n"] += 1
        loss = real(*args)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(step_mod, "jepa_loss", sometimes_nan)
    s = run_local(_cfg(tmp_path, "train.steps=3"))
    assert s.skipped_steps == 1
    assert torch.isnan(torch.tensor(s.losses[1])) and all(map(lambda v: v == v, [s.losses[0], s.losses[2]]))


def test_non_finite_losses_in_a_row_stop_the_run_with_a_clear_error(tmp_path, monkeypatch):
    import vwm.tasks.jepa as step_mod
    from vwm.train.trainer import NonFiniteLoss

    monkeypatch.setattr(step_mod, "jepa_loss", lambda *a: torch.tensor(float("inf"), requires_grad=True))
    with pytest.raises(NonFiniteLoss, match=r"3 non-finite losses in a row .*train.max_nonfinite_steps"):
        run_local(_cfg(tmp_path, "train.steps=10", "train.max_nonfinite_steps=3"))


def test_gradient_accumulation_steps_once_per_k_micro_batches(tmp_path):
    s = run_local(_cfg(tmp_path, "train.steps=3", "optim.grad_accumulation=2"))
    assert s.final_step == 3 and len(s.losses) == 6  # 3 optimizer steps of 2 micro-batches


def test_the_variance_term_adds_to_the_jepa_loss_and_is_logged_beside_it(tmp_path):
    s = run_local(_cfg(tmp_path, "train.steps=3", "train.log_every=1", "loss.variance=2.0"))
    rows = [json.loads(line) for line in (s.run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "train/loss_variance" in r]
    assert len(logged) == 3 and all(r["train/loss_variance"] > 0 for r in logged)  # init: std below the floor
    for r in logged:
        assert r["train/loss"] == pytest.approx(r["train/loss_jepa"] + 2.0 * r["train/loss_variance"], rel=1e-5)


def test_ctrl_c_marks_the_run_killed_says_how_to_resume_and_resume_clears_it(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    cmd = [sys.executable, "-m", "vwm.cli", "pretrain", "--local", "-c", str(DEBUG_CONFIG),
           "--set", f"train.output_dir={tmp_path}", "--set", "train.device=cpu", "--set", "train.steps=2000",
           "--set", "train.checkpoint_every=2", "--set", "train.log_every=1"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("*/checkpoints/step_*/meta.json")) and time.monotonic() < deadline:
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, out[-2000:]
    assert "interrupted: run debug_cpu-" in out and "--resume" in out and "Traceback" not in out
    run_dir = next(tmp_path.glob("debug_cpu-*"))
    tags = json.loads((run_dir / "tags.json").read_text())
    assert tags["status"] == "KILLED" and "interrupted" in tags and "error" not in tags
    done = ckpt.latest_meta(str(run_dir / "checkpoints"))["step"]
    # resumed (here with the schedule ending at the checkpoint, so nothing is left to train)
    again = subprocess.run([*cmd[:-6], "--set", f"train.steps={done}", "--resume"], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and f"already at step {done}" in again.stdout, again.stdout[-2000:]
    tags = json.loads((run_dir / "tags.json").read_text())
    assert "interrupted" not in tags and tags["status"] == "FINISHED"


def test_run_logs_its_mask_and_pca_pictures_as_videos(tmp_path):
    import av

    s = run_local(_cfg(tmp_path, "train.steps=4", "monitor.every=2", "monitor.pictures=2"))
    pictures = s.run_dir / "artifacts" / "pictures"
    assert sorted(p.name for p in pictures.iterdir()) == [
        "masks.mp4", "pca_step_0000001.mp4", "pca_step_0000002.mp4", "pca_step_0000004.mp4"]
    for name, width in (("masks.mp4", 64 * 3), ("pca_step_0000004.mp4", 64 * 2)):  # clip | mask sets or PCA
        with av.open(str(pictures / name)) as f:
            frames = [fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)]
        assert len(frames) == 8 and frames[0].shape == (2 * 64 + 2, width, 3), (name, frames[0].shape)



def test_context_variance_hinge_penalises_clips_that_agree_and_spares_clips_that_differ():
    torch.manual_seed(0)
    idx_BN = torch.stack([torch.randperm(16)[:10] for _ in range(64)])
    same_BND = torch.randn(1, 10, 8).expand(64, -1, -1)
    for over in ("positions", "clips"):
        hinge = context_variance_hinge(same_BND, idx_BN[:1].expand(64, -1), 16, 0.5, over)
        assert float(hinge) == pytest.approx(0.5 - 1e-2)  # floor - sqrt(eps): every channel agrees
    spread_BND = torch.randn(64, 10, 8)
    assert float(context_variance_hinge(spread_BND, idx_BN, 16, 0.5, "positions")) < 0.01
    one_token_per_clip_BND = torch.randn(64, 1, 8).expand(-1, 10, -1)
    assert float(context_variance_hinge(one_token_per_clip_BND, idx_BN, 16, 0.5, "clips")) < 0.01
    # one token per position, shared by every clip: the clips' tokens differ, yet each position has collapsed
    same_at_position_BND = torch.randn(16, 8)[idx_BN]
    assert float(context_variance_hinge(same_at_position_BND, idx_BN, 16, 0.5, "positions")) == \
        pytest.approx(0.5 - 1e-2, abs=1e-3)
    # a position only one clip sees has no spread to measure and adds nothing
    assert float(context_variance_hinge(torch.randn(2, 1, 8), torch.tensor([[0], [1]]), 16, 0.5, "positions")) == 0.0
