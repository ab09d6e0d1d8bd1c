"""Ray Tune sweeps over dotted config keys; every trial is a full TorchTrainer run."""
