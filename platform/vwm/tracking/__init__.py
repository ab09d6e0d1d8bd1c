"""Experiment tracking behind a small Tracker interface; backends live in their own modules."""
