"""Registered world models: where a run's artifact is published, and how a URI becomes a local folder.

Only MLflow has a registry; the other tracking backends register nothing (the artifact stays in the run's
final checkpoint). Callers never branch on the backend: ``make_registry`` returns None where there is none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from vwm.config import TrackingConfig

REMOTE_SCHEMES = ("models:/", "runs:/", "mlflow-artifacts:")


class ModelRegistry(Protocol):
    def register(self, handle: dict, directory: str | Path, name: str, alias: str | None = None,
                 description: str | None = None) -> str: ...  # -> models:/NAME/VERSION

    def download(self, uri: str) -> Path: ...


def make_registry(cfg: TrackingConfig, tracking_uri: str | None = None) -> ModelRegistry | None:
    if cfg.backend != "mlflow" or not cfg.register_as:
        return None
    from vwm.tracking.mlflow import MLflowRegistry

    return MLflowRegistry(cfg, tracking_uri)


def vwm_folder(path: Path) -> Path:
    """The vwm artifact inside an MLflow model folder (registered models are pyfunc models carrying it as
    their ``world_model`` artifact); any other folder as it is."""
    mlmodel = path / "MLmodel"
    if (path / "manifest.json").is_file() or not mlmodel.is_file():
        return path
    import yaml

    artifacts = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {}).get("python_function", {}).get(
        "artifacts") or {}
    inner = artifacts.get("world_model", {}).get("path")
    return path / inner if inner else path


def local_path(uri: str | Path, tracking_uri: str | None = None) -> Path:
    """A local folder for a folder path, ``runs:/...`` or ``models:/NAME@ALIAS`` (``@latest``: the newest
    version). The tracking URI resolves as training resolves it: the argument, else $MLFLOW_TRACKING_URI,
    else ``sqlite:///mlruns.db`` in the current folder."""
    if str(uri).startswith(REMOTE_SCHEMES):
        from vwm.tracking.mlflow import download_artifacts

        return vwm_folder(download_artifacts(str(uri), tracking_uri))
    path = Path(uri)
    if not path.exists():
        raise FileNotFoundError(f"{uri}: no such folder; pass a world-model folder, runs:/RUN_ID/world_model or "
                                "models:/NAME@ALIAS")
    return vwm_folder(path)


def workers_tracking_uri(cfg: TrackingConfig, uris: list[str]) -> str | None:
    """The MLflow URI that workers load models with, resolved on the driver since they may run on other
    nodes; None where neither the run logs to MLflow nor any model URI lives there."""
    if cfg.backend != "mlflow" and not any(str(u).startswith(REMOTE_SCHEMES) for u in uris):
        return None
    from vwm.tracking.mlflow import resolve_tracking_uri

    return resolve_tracking_uri(cfg)


def pin(uri: str, tracking_uri: str | None = None) -> str:
    """A registry alias resolved to the exact version it names now; folders and ``runs:/`` unchanged."""
    if str(uri).startswith("models:/"):
        from vwm.tracking.mlflow import pin_model_uri

        return pin_model_uri(str(uri), tracking_uri)
    return str(uri)


def local_member(uri: str | Path, member: str, tracking_uri: str | None = None) -> Path:
    """One file of an artifact folder (a manifest, read before deciding to fetch the weights)."""
    if str(uri).startswith(REMOTE_SCHEMES):
        from vwm.tracking.mlflow import download_artifacts

        return download_artifacts(str(uri), tracking_uri, member=member)
    path = vwm_folder(Path(uri)) / member
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; {uri} is not a vwm world-model folder")
    return path

