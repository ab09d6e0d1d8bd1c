"""Credentials in URIs: moved into MLflow's variables, masked wherever a URI is written or logged."""

from vwm.config import PretrainConfig
from vwm.tracking.credentials import redact, secure_config, secure_tracking_env, split_userinfo


def test_redact_masks_userinfo_and_credential_queries_and_nothing_else():
    text = ("tracking http://alice:pw1@mlflow:5000/x and s3://bucket/runs?endpoint_override=h:9000"
            "&secret_key=AbC&access_key=K1&session_token=T")
    out = redact(text)
    assert "pw1" not in out and "alice" not in out and "AbC" not in out and "K1" not in out and "=T" not in out
    assert "http://***@mlflow:5000/x" in out and "endpoint_override=h:9000" in out
    assert redact("s3://bucket/clips@2x/a.mp4") == "s3://bucket/clips@2x/a.mp4"
    assert redact(3) == 3


def test_split_userinfo_and_token_only_uris():
    assert split_userinfo("https://bob:p%40ss@h:443/api") == ("https://h:443/api", "bob", "p%40ss")
    assert split_userinfo("http://h:5000") == ("http://h:5000", None, None)
    env = {}
    assert secure_tracking_env("https://TOKEN123@h", env) == "https://h"
    assert env == {"MLFLOW_TRACKING_TOKEN": "TOKEN123"}


def test_the_environment_uri_and_a_config_uri_are_both_cleaned():
    env = {"MLFLOW_TRACKING_URI": "http://alice:pw@h:5000"}
    assert secure_tracking_env(None, env) == "http://h:5000"
    assert env == {"MLFLOW_TRACKING_URI": "http://h:5000", "MLFLOW_TRACKING_USERNAME": "alice",
                   "MLFLOW_TRACKING_PASSWORD": "pw"}


def test_secure_config_rewrites_the_tracking_uri(monkeypatch):
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):  # restored after the test
        monkeypatch.setenv(name, "")
    cfg = PretrainConfig.model_validate({"tracking": {"tracking_uri": "http://u:secretpw@h:5000"}})
    clean = secure_config(cfg)
    assert clean.tracking.tracking_uri == "http://h:5000"
    import os

    assert os.environ["MLFLOW_TRACKING_PASSWORD"] == "secretpw"
    assert secure_config(clean) is clean
