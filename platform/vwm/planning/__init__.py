"""Planning in representation space (Mode 2): imagine rollouts of candidate action sequences, score them
against the goal, refine, act, re-plan.

``dynamics``: the ``Dynamics`` protocol, the learned-model and true-simulator adapters, the latent cost;
``cem``: the cross-entropy method and keyed generators; ``gradient``: Adam through the rollout, and random
actions; ``mpc``: the MPC loop over a real env and its per-episode record; ``episodes``: start and goal
pairs from held-out trajectories. No evaluator, tracking or Ray here: an evaluator maps ``run_episode``
over episodes.
"""
