"""Training: objective, schedules, EMA, engines, the step, checkpoints and the loops that drive them."""
