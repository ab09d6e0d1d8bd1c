"""The world-model artifact: manifest + weights that load with weights_only, encode() with preprocessing inside,
wave-1 folders, and clear errors for what is not an artifact."""

import json

import pytest
import torch

import vwm
from vwm.config import ModelConfig
from vwm.models.artifact import ArtifactError, read_world_model, write_artifact
from vwm.models.jepa import build_models
from vwm.models.preprocess import normalize_clips

CFG = ModelConfig(preset="debug")


def _artifact(tmp_path):
    jepa, target = build_models(CFG, frames=8, crop=64, num_mask_sets=2)
    write_artifact(tmp_path / "wm", kind="vjepa", model_config=CFG, frames=8, crop=64,
                   weights={"encoder": target.state_dict(), "predictor": jepa.predictor.state_dict()},
                   extras={"num_mask_sets": 2}, git_commit="abc")
    return tmp_path / "wm", target


def test_manifest_weights_and_encode_match_the_encoder(tmp_path):
    folder, target = _artifact(tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["kind"] == "vjepa" and manifest["format_version"] == 1 and manifest["git_commit"] == "abc"
    assert manifest["geometry"] == {"frames": 8, "crop": 64, "patch_size": 8, "tubelet_size": 2, "grid": [4, 8, 8]}
    torch.load(folder / "weights.pt", weights_only=True)  # plain tensors only
    wm = vwm.load_world_model(folder)
    frames_THWC = torch.randint(0, 256, (8, 64, 64, 3), dtype=torch.uint8)
    expected = target.eval()(normalize_clips(frames_THWC[None]))
    torch.testing.assert_close(wm.encode(frames_THWC), expected)
    assert not any(p.requires_grad for p in wm.encoder.parameters())


def test_shared_mask_token_predictor_round_trips(tmp_path):
    """V-JEPA 2's single mask token: the artifact rebuilds a predictor with one token, used by every set."""
    cfg = ModelConfig(preset="debug", predictor={"shared_mask_token": True})
    jepa, target = build_models(cfg, frames=8, crop=64, num_mask_sets=2)
    with torch.no_grad():
        jepa.predictor.mask_tokens.normal_()  # a trained token, not the zero init
    write_artifact(tmp_path / "wm", kind="vjepa", model_config=cfg, frames=8, crop=64,
                   weights={"encoder": target.state_dict(), "predictor": jepa.predictor.state_dict()},
                   extras={"num_mask_sets": 2})
    wm = read_world_model(tmp_path / "wm")
    assert wm.model_config.predictor.shared_mask_token and wm.predictor.mask_tokens.shape == (1, 64)
    ctx_BND, ctx, tgt = torch.randn(1, 3, 96), torch.tensor([[0, 5, 9]]), torch.tensor([[1, 2]])
    preds = [wm.predictor(ctx_BND, ctx, tgt, mask_set=i) for i in (0, 1)]
    torch.testing.assert_close(preds[0], preds[1])
    torch.testing.assert_close(preds[0], jepa.predictor.eval()(ctx_BND, ctx, tgt, mask_set=1))
    per_set = ModelConfig(preset="debug")
    assert build_models(per_set, frames=8, crop=64, num_mask_sets=2)[0].predictor.mask_tokens.shape == (2, 64)


def test_wave1_world_model_file_still_loads(tmp_path):
    jepa, target = build_models(CFG, frames=8, crop=64, num_mask_sets=2)
    (tmp_path / "old").mkdir()
    torch.save({"model_config": CFG.model_dump(mode="json"), "frames": 8, "crop": 64, "num_mask_sets": 2,
                "encoder": target.state_dict(), "predictor": jepa.predictor.state_dict()},
               tmp_path / "old" / "world_model.pt")
    wm = read_world_model(tmp_path / "old")
    assert wm.frames == 8 and wm.encode(torch.zeros(8, 64, 64, 3, dtype=torch.uint8)).shape == (1, 256, 96)


def test_bad_artifacts_and_inputs_fail_with_what_to_do(tmp_path):
    with pytest.raises(ArtifactError, match=r"neither manifest.json nor world_model.pt"):
        read_world_model(tmp_path)
    folder, _ = _artifact(tmp_path)
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "format_version": 9}))
    with pytest.raises(ArtifactError, match=r"format version 9.*re-export"):
        read_world_model(folder)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    wm = read_world_model(folder)
    with pytest.raises(ArtifactError, match=r"uint8"):
        wm.encode(torch.zeros(8, 64, 64, 3))
    with pytest.raises(ArtifactError, match=r"T=8"):
        wm.encode(torch.zeros(4, 64, 64, 3, dtype=torch.uint8))
    with pytest.raises(FileNotFoundError, match=r"models:/NAME@ALIAS"):
        vwm.load_world_model(tmp_path / "missing")


def test_a_notebook_loads_a_model_with_the_core_install_alone(tmp_path):
    """The `train` extra (Ray, DeepSpeed, MLflow, S3, PyAV, ...) is not needed to load and run a model."""
    import subprocess
    import sys

    folder, _ = _artifact(tmp_path)
    code = f"""
import importlib.abc, sys
EXTRAS = {{"ray", "deepspeed", "mlflow", "s3fs", "fsspec", "av", "pyarrow", "matplotlib", "gymnasium", "pandas"}}
class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in EXTRAS:
            raise ImportError(f"{{name}} is not installed")
sys.meta_path.insert(0, NotInstalled())
import numpy as np, vwm
print(tuple(vwm.load_world_model({str(folder)!r}).encode(np.zeros((8, 64, 64, 3), np.uint8)).shape))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "(1, 256, 96)", out.stderr[-2000:]
