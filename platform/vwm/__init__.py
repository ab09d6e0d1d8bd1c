"""vwm: distributed training of JEPA video world models on Ray."""

__version__ = "0.1.0"
