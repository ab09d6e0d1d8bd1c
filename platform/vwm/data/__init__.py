"""Video data: synthetic generation, transforms and (in pipeline.py) the Ray Data pipeline."""
