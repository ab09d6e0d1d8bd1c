"""Model kinds on the shared trainer: one module per task (see ``vwm.train.trainer.Task``)."""
