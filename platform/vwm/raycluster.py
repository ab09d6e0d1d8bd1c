"""Connecting to Ray: an existing cluster through RAY_ADDRESS, else a fresh embedded local one."""

from __future__ import annotations

import logging
import math
import os
import socket
import time

import ray

from vwm.config import ConfigError

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
            # Ray's own processes find the state API through this cluster's dashboard, named here: left to
            # guess, they follow the machine's newest `ray start` session file, which may name a cluster
            # long gone (Train's placement-group cleaner then dies on a GCS timeout, traceback and all)
            port = _free_port()
            runtime_env = dict(runtime_env or {})
            runtime_env["env_vars"] = {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}",
                                       **runtime_env.get("env_vars", {})}
            ray.init(address="local", num_cpus=num_cpus, runtime_env=runtime_env, dashboard_port=port,
                     log_to_driver=True)
    ctx = ray.get_runtime_context()
    return os.environ.get("RAY_ADDRESS") or f"local:{ctx.gcs_address}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_slots(nodes: list[dict], cpus: float, gpus: float) -> int:
    """How many workers of ``cpus`` CPUs (and ``gpus`` GPUs) the alive ``nodes`` (``ray.nodes()``) hold."""
    slots = 0
    for node in nodes:
        if not node.get("Alive"):
            continue
        have = node.get("Resources", {})
        fit = math.floor(have.get("CPU", 0) / cpus + 1e-9)
        if gpus:
            fit = min(fit, math.floor(have.get("GPU", 0) / gpus + 1e-9))
        slots += fit
    return slots


def check_capacity(num_workers: int, cpus: float, gpus: float = 0, wait_s: float = 0) -> None:
    """Raise ConfigError (one line, what would fit) when the cluster's nodes cannot hold the workers: Ray
    would otherwise wait for resources that never come. ``wait_s``: an autoscaling cluster gets that long to
    add nodes."""
    deadline = time.monotonic() + wait_s
    while True:
        nodes = ray.nodes()
        slots = worker_slots(nodes, cpus, gpus)
        if slots >= num_workers:
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))
    alive = [n for n in nodes if n.get("Alive")]
    total_cpu = sum(n.get("Resources", {}).get("CPU", 0) for n in alive)
    total_gpu = sum(n.get("Resources", {}).get("GPU", 0) for n in alive)
    need = f"{num_workers} workers x {cpus:g} CPU" + (f" + {gpus:g} GPU" if gpus else "")
    has = f"{len(alive)} node(s) with {total_cpu:g} CPU" + (f" and {total_gpu:g} GPU" if gpus else "")
    fix = (f"set dist.num_workers<={slots} or lower dist.cpus_per_worker" if slots
           else "lower dist.cpus_per_worker" + (", add GPU nodes or set train.device=cpu" if gpus else ""))
    raise ConfigError(f"dist: {need} do not fit the cluster ({has}: room for {slots}); {fix}, or on an "
                      "autoscaling cluster set dist.wait_for_nodes_s to wait for more nodes")
