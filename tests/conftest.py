"""Shared fixtures. Tests build tiny models: the whole suite must run on 2 CPU cores."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vwm.config import PretrainConfig
from vwm.configfile import load_config

REPO = Path(__file__).resolve().parents[1]
DEBUG_CONFIG = REPO / "configs" / "pretrain" / "debug_cpu.yaml"


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def debug_cfg(tmp_path) -> PretrainConfig:
    """The debug config with outputs under the test's tmp dir and a quiet tracker."""
    return load_config(DEBUG_CONFIG, [f"train.output_dir={tmp_path}", "train.device=cpu"])
