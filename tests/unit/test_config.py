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
