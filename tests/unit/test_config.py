import subprocess
import sys

import pytest

from vwm.config import ConfigError, PretrainConfig
from vwm.configfile import load_config, to_yaml
from tests.conftest import DEBUG_CONFIG, REPO


def test_debug_config_loads_with_preset_values():
    cfg = load_config(DEBUG_CONFIG)
    assert cfg.model.preset == "debug" and cfg.model.dim == 96 and cfg.model.patch_size == 8
    assert [s.num_blocks for s in cfg.mask.sets] == [8, 2]


def test_defaults_follow_vjepa():
    cfg = PretrainConfig()
    assert (cfg.model.dim, cfg.model.depth, cfg.model.heads) == (1024, 24, 16)
    assert (cfg.model.predictor.dim, cfg.model.predictor.depth) == (384, 12)
    assert [(s.num_blocks, s.spatial_scale) for s in cfg.mask.sets] == [(8, (0.15, 0.15)), (2, (0.7, 0.7))]
    assert cfg.mask.sets[0].aspect_ratio == (0.75, 1.5)
    assert (cfg.optim.ema.start, cfg.optim.ema.end) == (0.998, 1.0)
    assert (cfg.optim.weight_decay.start, cfg.optim.weight_decay.end) == (0.04, 0.4)
    assert cfg.optim.lr.peak == 6.25e-4


def test_overrides_are_typed_and_explicit_fields_beat_the_preset():
    cfg = load_config(DEBUG_CONFIG, ["model.depth=2", "train.steps=7", "mask.sets.1.num_blocks=3",
                                     "optim.betas=[0.8, 0.95]"])
    assert cfg.model.depth == 2 and cfg.model.dim == 96
    assert cfg.train.steps == 7 and cfg.mask.sets[1].num_blocks == 3 and cfg.optim.betas == (0.8, 0.95)


def test_unknown_key_in_file_names_file_key_and_suggestion(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  dpeth: 4\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    msg = str(e.value)
    assert "unknown key model.dpeth" in msg and str(bad) in msg and "did you mean model.depth?" in msg
    assert "\n" not in msg


def test_unknown_key_in_override_names_the_override():
    with pytest.raises(ConfigError, match=r"unknown key train.stpes in --set train.stpes=3; did you mean train.steps"):
        load_config(DEBUG_CONFIG, ["train.stpes=3"])


def test_unknown_section():
    with pytest.raises(ConfigError, match=r"unknown key modle .*did you mean model\?"):
        load_config(DEBUG_CONFIG, ["modle.depth=3"])


@pytest.mark.parametrize("override, pattern", [
    ("model.depth=abc", r"--set model.depth=abc: model.depth: .*valid integer"),
    ("data.crop=60", r"data.crop=60 is not divisible by model.patch_size=8"),
    ("data.frames=7", r"data.frames=7 is not divisible by model.tubelet_size=2"),
    ("mask.sets.0.spatial_scale=[1.0, 1.0]", r"mask.sets.0 .* leaves no context"),
    ("model.preset=vit_q", r"unknown model.preset 'vit_q'; allowed: debug"),
    ("model.heads=5", r"model.dim=96 is not divisible by model.heads=5"),
    ("mask.sets.4.num_blocks=1", r"'4' is not an index of a 2-item list"),
    ("train.steps", r"not of the form key.path=value"),
])
def test_bad_values_fail_with_actionable_messages(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(DEBUG_CONFIG, [override])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file .*nope.yaml not found"):
        load_config(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: {depth: 3\n")
    with pytest.raises(ConfigError, match=r"broken.yaml line \d+: not valid YAML"):
        load_config(broken)


@pytest.mark.parametrize("name, content, pattern", [
    ("dup.yaml", b"train:\n  steps: 3\n  steps: 4\n", r"dup.yaml line 3: .*key 'steps' appears twice"),
    ("latin1.yaml", b"train:\n  run_name: caf\xe9\n", r"latin1.yaml: not UTF-8 text \(byte 22\)"),
    ("empty.yaml", b"", r"empty.yaml is empty: it would run the built-in defaults"),
    ("comments.yaml", b"# nothing here\n", r"comments.yaml is empty"),
])
def test_files_that_would_load_silently_wrong_are_refused(tmp_path, name, content, pattern):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ConfigError, match=pattern):
        load_config(tmp_path / name)


def test_a_folder_as_config_and_booleans_for_numbers_are_refused():
    with pytest.raises(ConfigError, match=r"config .*pretrain is a folder; pass a YAML file such as"):
        load_config(REPO / "configs" / "pretrain")
    for override in ("train.steps=true", "dist.cpus_per_worker=false", "train.eval_every=true"):
        with pytest.raises(ConfigError, match=r"is a boolean where a number is expected"):
            load_config(DEBUG_CONFIG, [override])
    assert load_config(DEBUG_CONFIG, ["train.steps=7", "data.augment.hflip=0.0"]).train.steps == 7


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(DEBUG_CONFIG, ["model.depth=3"])
    path = tmp_path / "resolved.yaml"
    path.write_text(to_yaml(cfg))
    assert load_config(path) == cfg


def test_cli_config_error_exits_2_before_any_work(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "vwm.cli", "pretrain", "--local", "-c", str(DEBUG_CONFIG),
                           "--set", "model.dpeth=4", "--set", f"train.output_dir={tmp_path}"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "unknown key model.dpeth" in lines[0] and "did you mean model.depth" in lines[0]
    assert not any(tmp_path.iterdir()), "nothing may be written before the config is valid"


RECIPES = REPO / "configs" / "pretrain"


@pytest.mark.parametrize("recipe", ["vjepa_vitl.yaml", "vjepa2_vitg.yaml"])
def test_gpu_recipes_need_data_paths_and_load_with_them(recipe):
    with pytest.raises(ConfigError, match=r"data.source=shards needs data.paths"):
        load_config(RECIPES / recipe)
    cfg = load_config(RECIPES / recipe, ["data.paths=[s3://bucket/videos/]"])
    assert cfg.data.source == "shards" and cfg.data.paths == ["s3://bucket/videos/"]
    assert (cfg.train.device, cfg.train.precision, cfg.tracking.backend) == ("cuda", "bf16", "mlflow")
    assert cfg.dist.cpus_per_worker >= 4
    # the reference's batch: 24 clips per GPU on 128 GPUs; its schedules span 1.25x the run (ipe_scale)
    assert cfg.data.batch_size * cfg.dist.num_workers * cfg.optim.grad_accumulation == 3072
    assert cfg.optim.schedule_scale == 1.25 and cfg.optim.lr.warmup_steps == 40 * 300


def test_recipes_follow_their_reference_configs():
    vitl = load_config(RECIPES / "vjepa_vitl.yaml", ["data.paths=videos"])
    assert vitl.train.steps == 300 * 300 and vitl.model.sincos_uniform_power and vitl.model.predictor.heads == 16
    assert not vitl.model.predictor.shared_mask_token and vitl.optim.grad_clip == 10.0
    vitg = load_config(RECIPES / "vjepa2_vitg.yaml", ["data.paths=videos"])
    assert vitg.train.steps == 800 * 300 + 40 * 300 and vitg.optim.lr.decay_steps == 40 * 300
    assert vitg.model.pos_embed == "rope" and vitg.model.predictor.shared_mask_token
    assert vitg.optim.grad_clip == 0.0 and vitg.data.target_fps == 4.0


def test_cli_names_the_missing_data_paths_of_a_recipe():
    recipe = str(RECIPES / "vjepa_vitl.yaml")
    proc = subprocess.run([sys.executable, "-m", "vwm.cli", "config", "-c", recipe], cwd=REPO,
                          capture_output=True, text=True)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "needs data.paths" in lines[0], proc.stderr
    proc = subprocess.run([sys.executable, "-m", "vwm.cli", "config", "-c", recipe,
                           "--set", "data.paths=[s3://bucket/videos/]"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and "s3://bucket/videos/" in proc.stdout, proc.stderr


def test_worker_slots_count_per_node_and_skip_dead_nodes():
    from vwm.raycluster import worker_slots

    nodes = [{"Alive": True, "Resources": {"CPU": 2.0}}, {"Alive": True, "Resources": {"CPU": 3.0, "GPU": 1.0}},
             {"Alive": False, "Resources": {"CPU": 64.0}}, {"Alive": True, "Resources": {"CPU": 0.0}}]
    assert worker_slots(nodes, 1.5, 0) == 3  # 1 + 2: CPUs do not pool across nodes
    assert worker_slots(nodes, 0.5, 0) == 10
    assert worker_slots(nodes, 1, 1) == 1
