"""vwm: distributed training of JEPA video world models on Ray."""

__version__ = "0.1.0"


def load_world_model(uri, device="cpu", tracking_uri=None):
    """Load a pretrained world model: ``vwm.load_world_model("models:/vwm-jepa@latest")``."""
    from vwm.eval.world_model import load_world_model as _load

    return _load(uri, device, tracking_uri)
