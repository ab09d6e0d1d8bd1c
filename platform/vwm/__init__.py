"""vwm: distributed training of JEPA video world models on Ray."""

__version__ = "0.1.0"


def load_world_model(uri, device="cpu", tracking_uri=None):
    """Load a trained world model: ``vwm.load_world_model("models:/vwm-jepa@candidate")``, ``runs:/ID/world_model``
    or a folder; ``wm.encode(frames_uint8)`` gives its features."""
    from vwm.models.artifact import read_world_model
    from vwm.tracking.registry import local_path

    return read_world_model(local_path(uri, tracking_uri), device)
