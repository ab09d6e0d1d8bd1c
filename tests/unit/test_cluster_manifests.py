"""The cluster definitions: KubeRay manifests and the cluster-launcher YAML parse, pin the Ray version
pyproject.toml pins (and the torch version the Makefile installs), keep token auth on, hold no credentials,
and run entry points that exist with configs that validate and write where every node can read."""

from __future__ import annotations

import argparse
import ast
import importlib
import re
import shlex
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from vwm.cli import add_config_args, add_training_args
from vwm.configfile import flatten, load_config
from vwm.raycompat import validate_launcher_config

CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
LAUNCHER = CLUSTER / "launcher" / "aws.yaml"
DOCKERFILE = CLUSTER / "image" / "Dockerfile"
MAIN_JOBS = {"pretrain.py", "posttrain.py", "sweep.py", "evaluate.py", "evaluate_probe.py", "collect.py"}
SHARED_MOUNT = "/mnt/shared/"
SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|CREDENTIAL|PRIVATE_KEY", re.IGNORECASE)
SECRET_VALUE = [
    re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b"),  # an AWS access key id
    re.compile(r"(?<![\w/+=.-])[A-Za-z0-9/+]{40}(?![\w/+=.-])"),  # the shape of an AWS secret key
    re.compile(r"^[a-z][a-z0-9+.-]*://[^/@\s]*:[^/@\s]+@"),  # a URL with user:password
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
]


def pinned_ray() -> str:
    """The Ray version tested (constraints.txt), which pyproject's range admits."""
    version = re.search(r"^ray==([0-9][0-9.]*[0-9])$", (REPO / "constraints.txt").read_text(), re.M).group(1)
    low, high = re.search(r'"ray\[[^\]]*\]>=([0-9.]+),<([0-9.]+)"', (REPO / "pyproject.toml").read_text()).groups()
    as_tuple = lambda v: tuple(int(x) for x in v.split("."))  # noqa: E731
    assert as_tuple(low) <= as_tuple(version) < as_tuple(high), (low, version, high)
    return version


def pinned_torch() -> str:
    return re.search(r"torch==([0-9][0-9.]*[0-9])", (REPO / "Makefile").read_text()).group(1)


def manifests() -> dict[str, list[dict]]:
    return {p.name: [d for d in yaml.safe_load_all(p.read_text()) if d] for p in sorted(KUBERAY.glob("*.yaml"))}


def of_kind(kind: str) -> list[dict]:
    return [d for docs in manifests().values() for d in docs if d["kind"] == kind]


def walk(node, key=None):
    """Every (key, value) pair at any depth; list items carry the key of their list."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield k, v
            yield from walk(v, k)
    elif isinstance(node, list):
        for item in node:
            yield key, item
            yield from walk(item, key)


def pod_specs(cluster_spec: dict) -> list[dict]:
    return [g["template"]["spec"] for g in [cluster_spec["headGroupSpec"], *cluster_spec.get("workerGroupSpecs", [])]]


def containers(cluster_spec: dict) -> list[dict]:
    return [c for spec in pod_specs(cluster_spec) for c in spec["containers"]]


def the_cluster() -> dict:
    (cluster,) = of_kind("RayCluster")
    return cluster


def test_every_manifest_parses_and_pins_the_ray_version_of_pyproject():
    found = manifests()
    assert {"raycluster.yaml", "configmap.yaml", "secret.example.yaml"} <= set(found)
    kinds = {doc["kind"] for docs in found.values() for doc in docs}
    assert {"RayCluster", "RayJob", "ConfigMap", "Secret"} <= kinds
    assert all(doc["apiVersion"] == "ray.io/v1" for docs in found.values() for doc in docs
               if doc["kind"].startswith("Ray"))
    ray = pinned_ray()
    for docs in found.values():
        for doc in docs:
            for key, value in walk(doc):
                if key == "rayVersion":
                    assert value == ray, (doc["metadata"]["name"], value)
    spec = the_cluster()["spec"]
    assert spec["rayVersion"] == ray
    # our image (cluster/image/Dockerfile), tagged with exactly that Ray; GPU workers get its -gpu build
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        for c in group["template"]["spec"]["containers"]:
            gpu = "nvidia.com/gpu" in c["resources"]["limits"]
            assert re.fullmatch(rf"([\w.:-]+/)*vwm:ray{re.escape(ray)}-py311{'-gpu' if gpu else ''}", c["image"]), c
    dockerfile = DOCKERFILE.read_text()
    assert re.search(r"^ARG BASE=rayproject/ray:(\S+)$", dockerfile, re.MULTILINE).group(1) == f"{ray}-py311"
    assert re.search(r"^FROM \$\{BASE\}$", dockerfile, re.MULTILINE)


def test_every_ray_image_and_torch_pin_under_cluster_names_the_pinned_versions():
    texts = {p: p.read_text() for p in [*KUBERAY.glob("*.yaml"), LAUNCHER, DOCKERFILE]}
    ray_tags = [(p.name, t) for p, text in texts.items() for t in re.findall(r"rayproject/ray:([\w.-]+)", text)]
    assert len(ray_tags) >= 3  # the Dockerfile's base, the launcher's CPU and GPU images
    assert all(re.fullmatch(rf"{re.escape(pinned_ray())}-py311(-gpu)?", t) for _, t in ray_tags), ray_tags
    torch_pins = [(p.name, v) for p, text in texts.items() for v in re.findall(r"torch==([0-9.]+[0-9])", text)]
    assert {name for name, _ in torch_pins} >= {"Dockerfile", "aws.yaml"}
    assert {v for _, v in torch_pins} == {pinned_torch()}, torch_pins


def test_the_raycluster_has_token_auth_gpus_autoscaling_and_a_head_without_work():
    spec = the_cluster()["spec"]
    # KubeRay >= 1.5.1 makes the token Secret and sets RAY_AUTH_MODE/RAY_AUTH_TOKEN in every Ray container
    assert spec["authOptions"]["mode"] == "token"
    assert not [c for c in containers(spec) for var in c.get("env", []) if var["name"] == "RAY_AUTH_MODE"
                and var.get("value") != "token"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert {"cpu", "gpu"} <= set(groups)
    for group in groups.values():
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"] and group["maxReplicas"] > 0
    (gpu,) = groups["gpu"]["template"]["spec"]["containers"]
    gpus = gpu["resources"]["limits"]["nvidia.com/gpu"]
    assert int(gpus) >= 1
    assert gpu["resources"].get("requests", {}).get("nvidia.com/gpu") in (None, gpus)  # Kubernetes: equal or unset
    (cpu,) = groups["cpu"]["template"]["spec"]["containers"]
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]
    for c in containers(spec):
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]) & set(c["resources"]["limits"])


def test_pods_read_settings_from_the_configmap_and_credentials_from_the_secret():
    (configmap,) = of_kind("ConfigMap")
    (secret,) = of_kind("Secret")
    assert {"MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL"} <= set(configmap["data"])
    spec = the_cluster()["spec"]
    for c in containers(spec):
        assert {"name": configmap["metadata"]["name"]} in [e.get("configMapRef") for e in c.get("envFrom", [])], c
        refs = {var["name"]: var["valueFrom"]["secretKeyRef"] for var in c.get("env", [])
                if "secretKeyRef" in var.get("valueFrom", {})}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            assert refs[key]["name"] == secret["metadata"]["name"] and refs[key]["key"] in secret["stringData"]
    # the run folders the RayJobs write are on one volume that every pod mounts
    for pod in pod_specs(spec):
        claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod.get("volumes", [])}
        mounts = {m["mountPath"]: m["name"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
        assert claims[mounts[SHARED_MOUNT.rstrip("/")]] == "vwm-shared"


def credential_problems(doc) -> list[str]:
    """Literal credentials in a parsed YAML document (the example Secret aside)."""
    problems = []
    for key, value in walk(doc):
        if (key == "env" and isinstance(value, dict) and SECRET_NAME.search(value.get("name", ""))
                and ("value" in value or "secretKeyRef" not in value.get("valueFrom", {}))):
            problems.append(f"env {value['name']} not from a secretKeyRef")
        if key == "data" and isinstance(value, dict):  # a ConfigMap's keys
            problems += [f"ConfigMap key {k}" for k in value if SECRET_NAME.search(k)]
        if isinstance(value, str):
            problems += [f"{key}: {value!r}" for pattern in SECRET_VALUE if pattern.search(value)]
            if re.search(r"\b(AWS_SECRET_ACCESS_KEY|AWS_ACCESS_KEY_ID|RAY_AUTH_TOKEN)=\S", value):
                problems.append(f"{key}: a credential set in a command: {value!r}")
    return problems


def test_no_literal_credentials_anywhere():
    for name, docs in manifests().items():
        for doc in docs:
            if doc["kind"] == "Secret":  # only the example shape, with placeholders
                assert name.endswith(".example.yaml") and set(doc["stringData"].values()) == {"REPLACE_ME"}
                continue
            assert credential_problems(doc) == [], name
    assert credential_problems(yaml.safe_load(LAUNCHER.read_text())) == []
    # the check finds what it is for
    planted = {"env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}],
               "command": "AWS_ACCESS_KEY_ID=AKIAABCDEFGHIJKLMNOP ray start",
               "uri": "http://user:hunter2@mlflow:5000",
               "key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}
    assert len(credential_problems(planted)) >= 4


def rayjobs() -> list[tuple[str, dict]]:
    return [(name, doc) for name, docs in manifests().items() for doc in docs if doc["kind"] == "RayJob"]


def job_model(script: Path) -> tuple[type, bool]:
    """The config model a job passes to ``run_job`` and whether it is a training job, read from its source
    so that this test follows the job rather than a list of its own."""
    tree = ast.parse(script.read_text())
    (call,) = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "run_job"]
    name = call.args[1].id
    (module,) = [n.module for n in tree.body if isinstance(n, ast.ImportFrom) and name in {a.name for a in n.names}]
    training = any(k.arg == "training" and k.value.value is True for k in call.keywords)
    return getattr(importlib.import_module(module), name), training


def test_there_is_a_rayjob_for_every_main_job():
    scripts = {Path(shlex.split(job["spec"]["entrypoint"])[4]).name for _, job in rayjobs()}
    assert scripts == MAIN_JOBS


@pytest.mark.parametrize("name, job", rayjobs(), ids=[n for n, _ in rayjobs()])
def test_every_rayjob_runs_a_job_that_exists_with_a_config_that_validates(name, job):
    spec = job["spec"]
    if "rayClusterSpec" in spec:
        assert spec["rayClusterSpec"]["authOptions"]["mode"] == "token"
    else:  # the token-auth RayCluster; KubeRay gives the submitter its token
        assert spec["clusterSelector"] == {"ray.io/cluster": the_cluster()["metadata"]["name"]}
    words = shlex.split(spec["entrypoint"])
    assert words[:4] == ["cd", "/app", "&&", "python"]  # /app: where the Dockerfile copies the repository
    script = Path(words[4])
    assert script.parent == Path("jobs") and (REPO / script).is_file()
    model, training = job_model(REPO / script)
    parser = argparse.ArgumentParser(exit_on_error=False)
    (add_training_args if training else add_config_args)(parser)
    args = parser.parse_args(words[5:])  # the job's own flags, nothing else
    assert all((REPO / c).is_file() for c in args.config)
    cfg = load_config([REPO / c for c in args.config], args.overrides, model)  # every --set is a real key

    run_cfgs = [cfg]
    if hasattr(cfg, "base"):  # a sweep: its trials run the base config with the sweep's overrides
        from vwm.config import PretrainConfig

        run_cfgs.append(load_config(REPO / cfg.base, cfg.overrides, PretrainConfig))
    for run_cfg in run_cfgs:
        flat = flatten(run_cfg)
        for key, value in flat.items():
            if key.split(".")[-1] == "output_dir":
                assert value.startswith(SHARED_MOUNT), (key, value)
            if key.split(".")[-1] in ("storage_path", "out"):
                assert value.startswith("s3://"), (key, value)
        if "tracking.backend" in flat:
            assert flat["tracking.backend"] == "mlflow" and not flat.get("tracking.tracking_uri")  # the ConfigMap's
    assert any(k.endswith(("output_dir", "out")) for c in run_cfgs for k in flatten(c))


def test_the_launcher_config_passes_rays_schema_with_token_auth_and_the_pinned_stack():
    raw = yaml.safe_load(LAUNCHER.read_text())
    filled = validate_launcher_config(LAUNCHER)  # as `ray up` reads it
    types = filled["available_node_types"]
    assert set(types) == {"head", "cpu_worker", "gpu_worker"} and filled["head_node_type"] == "head"
    assert types["head"]["resources"] == {"CPU": 0} and types["head"]["max_workers"] == 0
    assert all(types[t]["min_workers"] <= types[t]["max_workers"] for t in ("cpu_worker", "gpu_worker"))
    ray = pinned_ray()
    assert filled["docker"]["image"] == f"rayproject/ray:{ray}-py311"
    assert types["gpu_worker"]["docker"]["worker_image"] == f"rayproject/ray:{ray}-py311-gpu"
    starts = [c for c in raw["head_start_ray_commands"] + raw["worker_start_ray_commands"] if "ray start" in c]
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token ray start" in c for c in starts)
    assert raw["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # the token every node reads
    setup = "\n".join(raw["setup_commands"])
    assert setup.index(f"torch=={pinned_torch()}") < setup.index("pip install -q -e")  # torch first, as the Makefile
    with pytest.raises(Exception, match="resources"):  # the check is real: a node type without resources
        validate_launcher_config({**raw, "available_node_types": {**raw["available_node_types"], "x": {}}})
