"""Credentials never reach a log, a param, a printed line or a written file.

A tracking URI may carry them (``http://user:PASSWORD@host:5000``, ``...?token=...``); a storage URI may
carry S3 keys in its query (``s3://bucket/runs?access_key=...&secret_key=...``). ``secure_tracking_env``
moves a tracking URI's user and password into ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD``
(MLflow's own variables: a local Ray cluster's processes inherit them; on a shared cluster they come from
the cluster's own environment, a Kubernetes Secret, never from the job's runtime env, which Ray stores in
plain text) and leaves the URI without them; ``redact`` masks whatever is written or logged anyway.
"""

from __future__ import annotations

import os
import re
from collections.abc import MutableMapping
from typing import Any

# scheme://user:password@  or  scheme://token@
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s'\"]+)@")
_SECRET_QUERY = re.compile(r"(?P<key>[?&][^=&#\s]*(?:token|password|passwd|secret|key|signature|credential|auth)"
                           r"[^=&#\s]*=)[^&#\s'\"]*", re.IGNORECASE)
MASK = "***"


def redact(value: Any) -> Any:
    """``value`` with any URI's user:password and credential-bearing query values masked (strings only)."""
    if not isinstance(value, str):
        return value
    return _SECRET_QUERY.sub(lambda m: m["key"] + MASK, _USERINFO.sub(lambda m: m["scheme"] + MASK + "@", value))


def redact_all(values: dict[str, Any]) -> dict[str, Any]:
    return {k: redact(v) for k, v in values.items()}


def split_userinfo(uri: str) -> tuple[str, str | None, str | None]:
    """(the URI without ``user:password@``, user, password); (uri, None, None) when it has none."""
    m = _USERINFO.search(uri)
    if not m or not uri.startswith(m["scheme"]):
        return uri, None, None
    user, _, password = m["userinfo"].partition(":")
    return uri[:m.start("userinfo")] + uri[m.end():], user, password or None


def secure_tracking_env(uri: str | None, environ: MutableMapping[str, str] | None = None) -> str | None:
    """``uri`` (or, when None, ``$MLFLOW_TRACKING_URI``) without its user and password, which move into
    MLflow's ``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` variables of ``environ``; ``$MLFLOW_TRACKING_URI``
    itself is cleaned too, so that no process started from here sees them in a URI. Call it before Ray starts:
    a local cluster's workers inherit this environment."""
    environ = os.environ if environ is None else environ
    env_uri = environ.get("MLFLOW_TRACKING_URI")
    if env_uri:
        clean, user, password = split_userinfo(env_uri)
        if user is not None:
            _export(environ, user, password)
            environ["MLFLOW_TRACKING_URI"] = clean
    if uri is None:
        return environ.get("MLFLOW_TRACKING_URI")
    clean, user, password = split_userinfo(uri)
    if user is not None:
        _export(environ, user, password)
    return clean


def _export(environ: MutableMapping[str, str], user: str, password: str | None) -> None:
    if password is None:  # http://TOKEN@host: a bearer token
        environ["MLFLOW_TRACKING_TOKEN"] = user
    else:
        environ["MLFLOW_TRACKING_USERNAME"], environ["MLFLOW_TRACKING_PASSWORD"] = user, password


def secure_config(cfg):
    """A job's config with its tracking URI's credentials moved into the environment (see
    ``secure_tracking_env``); configs without a ``tracking`` section are returned as they are."""
    tracking = getattr(cfg, "tracking", None)
    clean = secure_tracking_env(tracking.tracking_uri if tracking is not None else None)
    if tracking is None or not tracking.tracking_uri or clean == tracking.tracking_uri:
        return cfg
    from vwm.config import with_overrides

    return with_overrides(cfg, {"tracking.tracking_uri": clean})
