"""A head and two worker nodes on this machine (``ray.cluster_utils.Cluster``), a debug pretraining spread
across the worker nodes, one of them removed once a checkpoint is on S3 and a fresh one added. Run in its
own process by test_multinode.py (the suite's own Ray stays untouched); prints ``REPORT {json}`` last."""

from __future__ import annotations

import json
import os
import sys
import threading
import time


def checkpoint_steps(fs, prefix: str) -> list[int]:
    fs.invalidate_cache()
    return sorted(json.loads(fs.cat(path))["step"] for path in fs.glob(f"{prefix}/*/checkpoint_*/meta.json"))


def replace_a_worker_node(cluster, nodes, args: dict, report: dict) -> None:
    """In the main thread: Ray's node objects install signal handlers, which only the main thread may."""
    import s3fs
    from ray.util.state import list_actors

    fs = s3fs.S3FileSystem(endpoint_url=args["endpoint"], skip_instance_cache=True)
    deadline = time.monotonic() + 300
    while not checkpoint_steps(fs, args["storage_prefix"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    workers = list_actors(filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
    report["train_worker_nodes"] = sorted(a.node_id for a in workers)
    victim = next(n for n in nodes if n.node_id in report["train_worker_nodes"])
    report["checkpoint_seen"] = checkpoint_steps(fs, args["storage_prefix"])[-1]
    report["removed"], report["removed_at_ms"] = victim.node_id, time.time() * 1000
    cluster.remove_node(victim)  # its raylet and every worker on it die, as when a machine is lost
    report["added"] = cluster.add_node(num_cpus=2).node_id


def main() -> int:
    args = json.loads(sys.argv[1])
    import ray
    from ray.cluster_utils import Cluster

    # a trainer holds 1.5 CPUs: one fits on each 2-CPU worker node and none on the 1-CPU head, whose CPU
    # and the nodes' remaining halves go to Ray Data's decode tasks
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "gcs_server_port": args["gcs_port"], "include_dashboard": True,
        "dashboard_port": args["dashboard_port"]})
    nodes = [cluster.add_node(num_cpus=2) for _ in range(2)]
    report: dict = {"head": cluster.head_node.node_id, "worker_nodes": [n.node_id for n in nodes]}
    try:
        cluster.wait_for_nodes()
        os.environ["RAY_ADDRESS"] = cluster.address
        ray.init(address=cluster.address)
        from vwm.configfile import load_config
        from vwm.tasks.jepa import run_pretrain

        cfg = load_config([args["config"]], args["overrides"])
        outcome: dict = {}

        def train() -> None:
            try:
                outcome["result"] = run_pretrain(cfg)
            except BaseException as e:  # reported by the main thread
                outcome["error"] = e

        trainer = threading.Thread(target=train, daemon=True)
        trainer.start()
        replace_a_worker_node(cluster, nodes, args, report)
        trainer.join()
        if "error" in outcome:
            raise outcome["error"]
        result = outcome["result"]
        report.update(run=result.name, model_uri=result.model_uri, final_step=result.metrics.get("step"))
    finally:
        print("REPORT " + json.dumps(report), flush=True)
        ray.shutdown()
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
