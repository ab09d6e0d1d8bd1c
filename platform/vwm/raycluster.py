"""Connecting to Ray: an existing cluster through RAY_ADDRESS, else a fresh embedded local one."""

from __future__ import annotations

import logging
import os

import ray

log = logging.getLogger(__name__)


def connect(num_cpus: int | None = None, runtime_env: dict | None = None) -> str:
    """Initialise Ray once per process and return a description of the cluster for tags and logs.

    Without RAY_ADDRESS we start a new local cluster (``address="local"``): a plain ``ray.init()`` would
    attach to whatever cluster a stale session file names. The dashboard stays on: Ray Train V2's
    controller needs the state API it serves.
    """
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
        else:
            ray.init(address="local", num_cpus=num_cpus, runtime_env=runtime_env, log_to_driver=True)
    ctx = ray.get_runtime_context()
    return os.environ.get("RAY_ADDRESS") or f"local:{ctx.gcs_address}"
