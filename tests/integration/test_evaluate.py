"""The evaluators end to end. Planning: a vjepa-ac world model registered in a real ``mlflow server``, 2 Ray
actors that load it by alias and play held-out TwoRooms episodes with CEM through the model, random actions
and CEM on the true simulator; the driver logs a parent run with a child run per planner. Probes: a tiny
registered encoder beside its controls, a Ray task per (encoder, probe), one MLflow run."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from vwm.config import EvalConfig, ModelConfig, TrackingConfig
from tests.conftest import write_held_out, write_tiny_ac_model

pytestmark = pytest.mark.slow


def _register(tmp_path, mlflow_server, folder, name: str) -> str:
    from vwm.tracking.mlflow import MLflowRegistry, MLflowTracker

    tracking = TrackingConfig(backend="mlflow", tracking_uri=mlflow_server, experiment="vwm-test-models")
    run = MLflowTracker(tracking, run_name=name)
    uri = MLflowRegistry(tracking).register(run.handle(), folder, name, alias="candidate")
    run.close()
    return uri


def test_evaluator_plans_on_two_actors_and_logs_to_mlflow(tmp_path, ray_cluster, mlflow_server):
    from vwm.eval.planning import EvalError, run_evaluation
    from vwm.models.artifact import write_artifact

    held_out = write_held_out(tmp_path / "held_out", episodes=4, steps=40, seed=2)
    assert _register(tmp_path, mlflow_server, write_tiny_ac_model(tmp_path / "ac"), "vwm-test-ac") == \
        "models:/vwm-test-ac/1"
    cfg = EvalConfig.model_validate({
        "name": "plan_test", "model_uri": "models:/vwm-test-ac@candidate",
        "episodes": {"paths": [held_out], "count": 4, "goal_offset": 15},
        "planners": [{"planner": "cem", "horizon": 2, "budget": 15,
                      "cem": {"samples": 16, "iterations": 2, "topk": 4}}],
        "videos": 1, "output_dir": str(tmp_path / "eval"),
        "actors": {"num_actors": 2, "cpus_per_actor": 0.5, "episodes_per_task": 1},
        "tracking": {"backend": "mlflow", "tracking_uri": mlflow_server}})
    result = run_evaluation(cfg, progress=False)
    assert result.model_uri == "models:/vwm-test-ac/1"  # the alias, pinned before the actors load it
    assert [r["planner"] for r in result.rows] == ["cem", "random", "oracle-cem"]

    client = MlflowClient(mlflow_server)
    parent = client.get_run(result.tracker["run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["model_uri"] == "models:/vwm-test-ac/1"
    assert {"summary.json", "success.png", "config.yaml"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(c.info.run_name for c in children) == ["two_rooms-cem", "two_rooms-oracle-cem", "two_rooms-random"]
    episodes = {}
    for child in children:
        m = child.data.metrics
        assert m["plan/episodes"] == 4 and m["plan/ci_low"] <= m["plan/success_rate"] <= m["plan/ci_high"]
        for name in ("plan/success_rate_last", "plan/final_distance", "plan/s_per_plan", "plan/s_per_env_step",
                     "plan/episodes_per_s"):
            assert name in m, name
        run_id = child.info.run_id
        assert [a.path for a in client.list_artifacts(run_id, "videos")][0].endswith(".mp4")
        (tmp_path / run_id).mkdir()
        table = json.loads(open(client.download_artifacts(run_id, "episodes.json", str(tmp_path / run_id))).read())
        rows = [dict(zip(table["columns"], row)) for row in table["data"]]
        assert [r["index"] for r in rows] == [0, 1, 2, 3] and all(r["steps"] <= 15 for r in rows)
        episodes[child.info.run_name] = [(r["source"], r["start_step"]) for r in rows]
    assert len(set(map(tuple, episodes.values()))) == 1  # every planner played the same episodes
    rate = {c.info.run_name: c.data.metrics["plan/success_rate"] for c in children}
    assert rate["two_rooms-oracle-cem"] >= rate["two_rooms-random"]

    # a pretraining model cannot plan: refused from its manifest, before any actor or run starts
    runs_before = len(client.search_runs([parent.info.experiment_id]))
    pre = write_artifact(tmp_path / "pre", kind="vjepa", model_config=ModelConfig(preset="debug", dim=32, depth=1,
                                                                                  heads=2),
                         frames=2, crop=64, weights={}, extras={"num_mask_sets": 2})
    _register(tmp_path, mlflow_server, pre, "vwm-test-jepa-eval")
    with pytest.raises(EvalError, match="'vjepa' world model, which cannot plan"):
        run_evaluation(cfg.model_copy(update={"model_uri": "models:/vwm-test-jepa-eval@candidate"}), progress=False)
    assert len(client.search_runs([parent.info.experiment_id])) == runs_before


def test_probe_job_runs_pairs_as_ray_tasks_and_logs_to_mlflow(tmp_path, ray_cluster, mlflow_server):
    from vwm.config import ProbeEvalConfig
    from vwm.eval.probe_job import ProbeError, run_probe_eval
    from vwm.models.artifact import module_state, write_artifact
    from vwm.models.jepa import build_models

    model_cfg = ModelConfig(preset="debug", dim=32, depth=1, heads=2)
    jepa, target = build_models(model_cfg, 4, 32, 2)
    folder = write_artifact(tmp_path / "jepa", kind="vjepa", model_config=model_cfg, frames=4, crop=32,
                            weights={"encoder": module_state(target), "predictor": module_state(jepa.predictor)},
                            extras={"num_mask_sets": 2})
    assert _register(tmp_path, mlflow_server, folder, "vwm-test-probe") == "models:/vwm-test-probe/1"
    cfg = ProbeEvalConfig.model_validate({
        "name": "probe_test", "encoders": [{"name": "tiny", "uri": "models:/vwm-test-probe@candidate"}],
        "targets": ["direction", "position"],
        "data": {"clips": 48, "synthetic": {"video_frames": 16, "height": 32, "width": 32}},
        "attentive": {"steps": 20, "batch_size": 16}, "bootstrap": 100, "output_dir": str(tmp_path / "eval"),
        "tasks": {"cpus_per_task": 0.5}, "tracking": {"backend": "mlflow", "tracking_uri": mlflow_server}})
    result = run_probe_eval(cfg, progress=False)
    assert [(r["target"], r["encoder"], r["probe"]) for r in result.rows[:6]] == [
        ("direction", e, p) for e in ("tiny", "random", "pixels") for p in ("linear", "attentive")]
    assert len(result.rows) == 12 and all(r["ci_low"] <= r["value"] <= r["ci_high"] for r in result.rows)

    client = MlflowClient(mlflow_server)
    run = client.get_run(result.tracker["run_id"])
    assert run.info.status == "FINISHED" and run.data.params["pinned.tiny"] == "models:/vwm-test-probe/1"
    m = run.data.metrics
    for key in ("probe/direction/tiny/attentive/acc", "probe/position/random/linear/r2",
                "probe/position/pixels/attentive/ci_high"):
        assert key in m, key
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"probe_results.json", "probe.png", "config.yaml"} <= artifacts

    # a post-trained model has no video encoder of its own to probe: refused from its manifest alone
    runs_before = len(client.search_runs([run.info.experiment_id]))
    with pytest.raises(ProbeError, match="'vjepa-ac' model; probes read a pretrained video encoder"):
        run_probe_eval(ProbeEvalConfig.model_validate({**cfg.model_dump(), "encoders": [
            {"name": "ac", "uri": str(write_tiny_ac_model(tmp_path / "ac"))}]}), progress=False)
    assert len(client.search_runs([run.info.experiment_id])) == runs_before
