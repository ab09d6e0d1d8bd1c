"""Fine-tuning from a model: `vwm pretrain --init-from URI` starts both encoders and the predictor from the
model's weights, refuses another architecture before training, and records where it started."""

import json

import pytest
import torch

from tests.conftest import DEBUG_CONFIG
from vwm.cli import main
from vwm.config import ConfigError
from vwm.configfile import load_config
from vwm.models.artifact import read_world_model
from vwm.tasks.jepa import JepaTask, check_init_weights, run_pretrain


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A world-model folder from a short local run."""
    out = tmp_path_factory.mktemp("base")
    cfg = load_config(DEBUG_CONFIG, [f"train.output_dir={out}", "train.device=cpu", "train.steps=3"])
    summary = run_pretrain(cfg, local=True, progress=False).summary
    return summary.last_checkpoint / "world_model"


def test_both_encoders_and_the_predictor_start_from_the_model(trained, tmp_path):
    cfg = load_config(DEBUG_CONFIG, [f"train.output_dir={tmp_path}", f"train.init_weights={trained}"])
    task = JepaTask(cfg, rank=0, device=torch.device("cpu"), run_name="ft", provenance={})
    jepa = task.build()
    wm = read_world_model(trained)
    for name, value in wm.encoder.state_dict().items():
        assert torch.equal(jepa.encoder.state_dict()[name], value), name
        assert torch.equal(task.target.state_dict()[name], value), name
    for name, value in wm.predictor.state_dict().items():
        assert torch.equal(jepa.predictor.state_dict()[name], value), name
    fresh = JepaTask(load_config(DEBUG_CONFIG), rank=0, device=torch.device("cpu"), run_name="x",
                     provenance={}).build()
    assert not torch.equal(next(fresh.encoder.parameters()), next(jepa.encoder.parameters()))  # not the init


@pytest.mark.parametrize("override, key", [("model.depth=2", "model.depth"), ("data.frames=4", "data.frames")])
def test_another_architecture_is_refused_naming_the_key(trained, override, key):
    cfg = load_config(DEBUG_CONFIG, [f"train.init_weights={trained}", override])
    with pytest.raises(ConfigError, match=rf"has another architecture: set {key}="):
        check_init_weights(cfg)


def test_cli_fine_tunes_from_a_folder_and_records_it(trained, tmp_path, capsys):
    code = main(["pretrain", "--local", "--config", str(DEBUG_CONFIG), "--init-from", str(trained),
                 "--set", f"train.output_dir={tmp_path}", "--set", "train.steps=2", "--set", "train.device=cpu"])
    assert code == 0
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert load_config(run_dir / "config.yaml").train.init_weights == str(trained)
    (final,) = sorted((run_dir / "checkpoints").glob("step_*"))[-1:]
    assert json.loads((final / "world_model" / "manifest.json").read_text())["parent_uri"] == str(trained)
    bad = main(["pretrain", "--local", "--config", str(DEBUG_CONFIG), "--init-from", str(tmp_path / "nowhere"),
                "--set", f"train.output_dir={tmp_path}/x"])
    assert bad == 2 and "train.init_weights=" in capsys.readouterr().err


def test_a_resume_keeps_the_weights_the_run_started_from(trained, tmp_path):
    """The configured URI may name another version by now (an alias moved): a resume takes the one the run
    recorded, and its weights come from the checkpoint anyway."""
    cfg = load_config(DEBUG_CONFIG, [f"train.output_dir={tmp_path}", "train.device=cpu", "train.steps=4",
                                     "train.checkpoint_every=2", f"train.init_weights={trained}"])
    first = run_pretrain(cfg, local=True, progress=False, stop_at=2)
    moved = load_config(DEBUG_CONFIG, [f"train.output_dir={tmp_path}", "train.device=cpu", "train.steps=4",
                                       "train.checkpoint_every=2", f"train.init_weights={tmp_path}/gone"])
    rest = run_pretrain(moved, local=True, progress=False, resume=True)
    assert rest.name == first.name and rest.summary.start_step == 2 and rest.summary.final_step == 4
    assert load_config(rest.run_dir / "config.yaml").train.init_weights == str(trained)
