"""The cluster definitions: KubeRay manifests and the cluster-launcher YAML parse, pin the Ray version
pyproject.toml pins, keep token auth on, hold no credentials, and name entry points and configs that exist
and validate."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from vwm.configfile import load_config
from vwm.raycompat import validate_launcher_config
from vwm.submit import config_model

KUBERAY = REPO / "cluster" / "kuberay"
JOB_MODELS = {"pretrain.py": ["pretrain"], "posttrain.py": ["posttrain"], "sweep.py": ["sweep"],
              "evaluate.py": ["evaluate", "plan"], "evaluate_probe.py": ["evaluate", "probe"],
              "collect.py": ["data", "collect"]}


def pinned_ray() -> str:
    return re.search(r'"ray\[[^\]]*\]==([0-9.]+)"', (REPO / "pyproject.toml").read_text()).group(1)


def manifests() -> dict[str, list[dict]]:
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in sorted(KUBERAY.glob("*.yaml"))}


def walk(node, key=None):
    """Every (key, value) pair at any depth."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield k, v
            yield from walk(v, k)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item, key)


def containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec.get("workerGroupSpecs", [])]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def test_every_manifest_parses_and_the_cluster_pins_the_ray_version_with_token_auth():
    found = manifests()
    kinds = {doc["kind"] for docs in found.values() for doc in docs}
    assert {"RayCluster", "RayJob", "ConfigMap", "Secret"} <= kinds
    (cluster,) = [d for docs in found.values() for d in docs if d["kind"] == "RayCluster"]
    spec = cluster["spec"]
    assert spec["rayVersion"] == pinned_ray() and spec["authOptions"]["mode"] == "token"
    for c in containers(spec):
        assert f"ray{pinned_ray()}" in c["image"], c["image"]  # our image, built on that Ray
    assert re.search(rf"FROM \$\{{BASE\}}", (REPO / "cluster/image/Dockerfile").read_text())
    assert f"ARG BASE=rayproject/ray:{pinned_ray()}-py311" in (REPO / "cluster/image/Dockerfile").read_text()
    gpu = [g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu"][0]
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    for group in spec["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert spec["enableInTreeAutoscaling"] and spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"


def test_credentials_come_from_secrets_only():
    for name, docs in manifests().items():
        for doc in docs:
            if doc["kind"] == "Secret":
                assert name.endswith(".example.yaml") and set(doc["stringData"].values()) == {"REPLACE_ME"}
                continue
            for key, value in walk(doc):
                if key == "env":
                    for var in value:
                        if re.search(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY", var["name"]):
                            assert "value" not in var and "secretKeyRef" in var["valueFrom"], (name, var)
                if key == "data" and doc["kind"] == "ConfigMap":
                    assert not [k for k in value if re.search(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY", k)]


def rayjobs():
    return [(name, doc) for name, docs in manifests().items() for doc in docs if doc["kind"] == "RayJob"]


@pytest.mark.parametrize("name, job", rayjobs(), ids=[n for n, _ in rayjobs()])
def test_every_rayjob_runs_a_job_that_exists_with_a_config_that_validates(name, job):
    spec = job["spec"]
    # the cluster it selects is the token-auth RayCluster; a job embedding its own cluster keeps auth on
    if "rayClusterSpec" in spec:
        assert spec["rayClusterSpec"]["authOptions"]["mode"] == "token"
    else:
        (cluster,) = [d for docs in manifests().values() for d in docs if d["kind"] == "RayCluster"]
        assert spec["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    words = shlex.split(spec["entrypoint"])
    assert words[:3] == ["cd", "/app", "&&"] and words[3] == "python"
    script = Path(words[4])
    assert script.parent.name == "jobs" and (REPO / script).is_file()
    args = words[5:]
    configs = [args[i + 1] for i, a in enumerate(args) if a == "--config"]
    overrides = [args[i + 1] for i, a in enumerate(args) if a == "--set"]
    assert configs and all((REPO / c).is_file() for c in configs)
    cfg = load_config([REPO / c for c in configs], overrides, config_model(JOB_MODELS[script.name]))
    # what a cluster shares is shared: no relative run folder, no local checkpoint store
    from vwm.submit import check_shared_paths

    check_shared_paths(cfg)
    if JOB_MODELS[script.name] == ["sweep"]:
        from vwm.config import PretrainConfig

        check_shared_paths(load_config([REPO / cfg.base], cfg.overrides, PretrainConfig))


def test_the_launcher_config_passes_rays_schema_with_token_auth_and_the_pinned_stack():
    path = REPO / "cluster" / "launcher" / "aws.yaml"
    raw = yaml.safe_load(path.read_text())
    filled = validate_launcher_config(raw)
    assert set(filled["available_node_types"]) == {"head", "cpu_worker", "gpu_worker"}
    starts = raw["head_start_ray_commands"] + raw["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)
    setup = " ".join(raw["setup_commands"])
    assert setup.index("torch==2.13.0") < setup.index("pip install -q -e")  # torch first, as the Makefile does
    with pytest.raises(Exception, match="resources"):  # the check is real: a node type without resources
        validate_launcher_config({**raw, "available_node_types": {**raw["available_node_types"], "x": {}}})
