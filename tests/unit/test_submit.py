"""`vwm submit`'s checks before any request: shared paths, tracking, secrets, what ships with the job."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from vwm import submit
from vwm.cli import build_parser
from vwm.submit import SubmitError, prepare, resolve_address

SHARED = ["train.output_dir=/mnt/shared/vwm", "dist.storage_path=s3://bucket/ray"]
MLFLOW = {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}


def job(verb, config, overrides=(), env=None, **kw):
    return prepare(verb, [str(REPO / config)], list(overrides), working_dir=str(REPO), env=env or {}, **kw)


def test_a_shared_pretraining_becomes_the_vwm_command_with_forwarded_settings():
    env = {**MLFLOW, "AWS_ENDPOINT_URL": "http://minio:9000", "AWS_SECRET_ACCESS_KEY": "s3cret",
           "AWS_ACCESS_KEY_ID": "AKIA"}
    j = job(["pretrain"], "configs/pretrain/debug_cpu.yaml", [*SHARED, "tracking.backend=mlflow"], env, resume=True)
    assert j.entrypoint == ("python -m vwm.cli pretrain --config configs/pretrain/debug_cpu.yaml "
                            "--set train.output_dir=/mnt/shared/vwm --set dist.storage_path=s3://bucket/ray "
                            "--set tracking.backend=mlflow --resume")
    renv = j.runtime_env()
    assert renv["env_vars"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert renv["env_vars"]["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert not any("s3cret" in v or "AKIA" in v for v in renv["env_vars"].values())  # credentials stay behind
    assert Path(renv["py_modules"][0]).name == "vwm" and renv["working_dir"] == str(REPO)


@pytest.mark.parametrize("override, says", [
    ("train.output_dir=outputs", "train.output_dir=outputs is relative"),
    ("train.output_dir=s3://b/out", "takes a folder, not s3://"),
    ("dist.storage_path=outputs/ray", "dist.storage_path=outputs/ray is relative"),
    ("data.paths=[shards/a.tar]", "data.paths=shards/a.tar is relative"),
    ("dist.storage_path=ftp://host/x", "a scheme the cluster's storage does not read"),
])
def test_paths_a_cluster_cannot_share_are_refused_with_what_to_use(override, says):
    with pytest.raises(SubmitError, match=says.replace("(", r"\(").replace(".", r"\.")):
        job(["pretrain"], "configs/pretrain/debug_cpu.yaml", [*SHARED, override])


def test_registry_uris_pass_where_a_model_is_expected_but_their_paths_are_still_checked():
    j = job(["posttrain"], "configs/posttrain/debug_cpu.yaml",
            [*SHARED, "data.paths=[s3://b/traj/train]", "monitor.heldout_paths=[/mnt/shared/traj/held_out]"], MLFLOW)
    assert "--config configs/posttrain/debug_cpu.yaml" in j.entrypoint
    with pytest.raises(SubmitError, match="monitor.heldout_paths=outputs/trajectories/two_rooms/held_out"):
        job(["posttrain"], "configs/posttrain/debug_cpu.yaml", [*SHARED, "data.paths=[s3://b/traj/train]"], MLFLOW)


@pytest.mark.parametrize("env, says", [
    ({}, "no tracking URI"),
    ({"MLFLOW_TRACKING_URI": "sqlite:///mlruns.db"}, "a file store on a cluster"),
    ({"MLFLOW_TRACKING_URI": "http://alice:pw@mlflow:5000"}, "carries credentials"),
])
def test_tracking_must_be_a_server_the_cluster_reaches_without_credentials_in_the_uri(env, says):
    with pytest.raises(SubmitError, match=says):
        job(["pretrain"], "configs/pretrain/debug_cpu.yaml", [*SHARED, "tracking.backend=mlflow"], env)


def test_a_models_uri_needs_a_tracking_server_even_without_mlflow_tracking():
    with pytest.raises(SubmitError, match="no tracking URI"):
        job(["evaluate", "probe"], "configs/eval/probe_debug.yaml", ["output_dir=/mnt/shared/eval",
                                                                      "tracking.backend=jsonl"])


def test_secrets_never_go_in_the_runtime_env_and_other_variables_do():
    with pytest.raises(SubmitError, match="--env AWS_SECRET_ACCESS_KEY"):
        job(["pretrain"], "configs/pretrain/debug_cpu.yaml", SHARED, extra_env=["AWS_SECRET_ACCESS_KEY=x"])
    j = job(["pretrain"], "configs/pretrain/debug_cpu.yaml", SHARED, extra_env=["OMP_NUM_THREADS=4"])
    assert j.env_vars["OMP_NUM_THREADS"] == "4"


def test_a_sweep_checks_its_base_config_too():
    with pytest.raises(SubmitError, match="train.output_dir=outputs is relative"):
        job(["sweep"], "configs/sweep/mask_ema_debug.yaml", ["output_dir=/mnt/shared/sweeps"], MLFLOW)


def test_a_config_outside_the_working_folder_is_refused(tmp_path):
    outside = tmp_path / "mine.yaml"
    outside.write_text((REPO / "configs/pretrain/debug_cpu.yaml").read_text())
    with pytest.raises(SubmitError, match="outside the working folder"):
        prepare(["pretrain"], [str(outside)], SHARED, working_dir=str(REPO), env={})


def test_the_address_is_the_job_servers_http_address():
    assert resolve_address(None, {"RAY_API_SERVER_ADDRESS": "http://h:8265", "RAY_ADDRESS": "h:6379"}) \
        == "http://h:8265"
    with pytest.raises(SubmitError, match="not the GCS address"):
        resolve_address(None, {"RAY_ADDRESS": "h:6379"})
    with pytest.raises(SubmitError, match="--address"):
        resolve_address(None, {})


def excluded(rel: Path) -> bool:
    """gitignore semantics for the unanchored patterns EXCLUDES uses: ``name/`` is a folder at any depth,
    anything else a file name (glob) at any depth."""
    for pattern in submit.EXCLUDES:
        assert not pattern.startswith("/") and "/" not in pattern.rstrip("/")  # the forms handled here
        if pattern.endswith("/") and pattern.rstrip("/") in rel.parts[:-1]:
            return True
        if not pattern.endswith("/") and fnmatch.fnmatch(rel.name, pattern):
            return True
    return False


def test_excludes_match_the_runtime_env_file_and_spare_every_file_of_the_package():
    spec = yaml.safe_load((REPO / "cluster/runtime_env.yaml").read_text())
    assert spec["excludes"] == submit.EXCLUDES
    package = REPO / "platform/vwm"  # Ray applies the excludes to py_modules as well
    shipped = [p.relative_to(package) for p in package.rglob("*.py") if "__pycache__" not in p.parts]
    assert len(shipped) > 50 and not [p for p in shipped if excluded(p)]
    assert excluded(Path("outputs/run/x.pt")) and excluded(Path("videos/a.mp4"))


def test_the_cli_parses_every_verb_and_its_submit_options():
    parser = build_parser()
    args = parser.parse_args(["submit", "evaluate", "probe", "-c", "configs/eval/probe_debug.yaml", "--follow",
                              "--env", "A=1"])
    assert (args.verb, args.what, args.follow, args.env) == ("evaluate", "probe", True, ["A=1"])
    args = parser.parse_args(["submit", "data", "collect", "-c", "configs/data/collect_two_rooms.yaml", "--no-wait"])
    assert (args.verb, args.what, args.no_wait) == ("data", "collect", True)
    assert parser.parse_args(["submit", "pretrain", "-c", "x.yaml", "--resume"]).resume
