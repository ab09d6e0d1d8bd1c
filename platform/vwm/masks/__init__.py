"""Multi-block 3D masking for JEPA pretraining; pure sampling, no shared counters."""
