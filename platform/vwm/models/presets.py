"""Encoder and predictor sizes. The large presets follow V-JEPA / V-JEPA 2 so results compare.

Published encoder sizes (V-JEPA 2 paper, Table 1 / model cards): ViT-L 300M, ViT-H 600M+, ViT-g 1B.
``tests/unit/test_models.py`` checks our parameter counts against them.
"""

from __future__ import annotations

_VJEPA_PREDICTOR = {"dim": 384, "depth": 12, "heads": 12, "mlp_ratio": 4.0}

PRESETS: dict[str, dict] = {
    # CPU tests and the quickstart: a few hundred thousand parameters, 8x8 patches on small crops.
    "debug": {"dim": 96, "depth": 4, "heads": 4, "mlp_ratio": 4.0, "patch_size": 8, "tubelet_size": 2,
              "predictor": {"dim": 64, "depth": 2, "heads": 4, "mlp_ratio": 4.0}},
    "vit_tiny": {"dim": 192, "depth": 12, "heads": 3, "mlp_ratio": 4.0,
                 "predictor": {"dim": 192, "depth": 6, "heads": 6, "mlp_ratio": 4.0}},
    "vit_small": {"dim": 384, "depth": 12, "heads": 6, "mlp_ratio": 4.0, "predictor": _VJEPA_PREDICTOR},
    "vit_base": {"dim": 768, "depth": 12, "heads": 12, "mlp_ratio": 4.0, "predictor": _VJEPA_PREDICTOR},
    "vit_l": {"dim": 1024, "depth": 24, "heads": 16, "mlp_ratio": 4.0, "predictor": _VJEPA_PREDICTOR},
    "vit_h": {"dim": 1280, "depth": 32, "heads": 16, "mlp_ratio": 4.0, "predictor": _VJEPA_PREDICTOR},
    "vit_g": {"dim": 1408, "depth": 40, "heads": 22, "mlp_ratio": 48 / 11, "predictor": _VJEPA_PREDICTOR},
}

# Encoder parameter counts as published, in millions, for the parameter-count test.
PUBLISHED_PARAMS_M = {"vit_l": 300, "vit_h": 630, "vit_g": 1000}
