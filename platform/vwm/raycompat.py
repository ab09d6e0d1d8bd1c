"""Work-arounds that reach past Ray's public API, in one place, guarded by the Ray versions they were tested on.

- ``remove_orphaned_groups``: placement groups whose creating actor is dead (a Train controller killed with
  its trial by ASHA or PBT). Ray scopes such groups to the job and Train V2's own cleaner died on a GCS
  timeout here, so they held their CPUs until the sweep's driver exited. The public
  ``placement_group_table()`` leaves out who created a group, so the GCS table is read directly.
- ``validate_launcher_config``: the cluster launcher's own schema check (``ray up`` runs it), which Ray
  exposes only as ``ray.autoscaler._private.util``; the tests check ``cluster/launcher/*.yaml`` with it.
- ``quiet_train_reports``: Train V2 logs every report of every rank at INFO ("Reporting training result N:
  TrainingReport(...)") through a logger named after its source file, outside ``ray.train``, so Train's own
  ``LoggingConfig`` does not reach it.
- ``TrainToTune``: a Train ``UserCallback`` that hands each report, checkpoint included, to the trial's Tune
  function (``TuneReportCallback`` passes only the checkpoint's path, so PBT would have nothing to clone).
"""

from __future__ import annotations

import logging
from pathlib import Path

import ray
import yaml
from ray.train import UserCallback

log = logging.getLogger(__name__)

TESTED_RAY = ("2.60.",)


class UntestedRay(RuntimeError):
    """The installed Ray is not one these work-arounds were tested on."""


def check_ray_version(version: str | None = None) -> None:
    version = version or ray.__version__
    if not version.startswith(TESTED_RAY):
        raise UntestedRay(f"vwm's Ray work-arounds (vwm/raycompat.py) were tested on Ray {', '.join(TESTED_RAY)}x, "
                          f"not {version}: install ray=={TESTED_RAY[0]}0 (pyproject.toml pins it), or re-test them")


def orphaned_groups() -> list[str]:
    """Ids of placement groups that no live actor or driver owns any more."""
    check_ray_version()
    from ray._private.state import state
    from ray.core.generated.gcs_pb2 import PlacementGroupTableData as Table

    orphans = []
    for raw in state._connect_and_get_accessor().get_placement_group_table():
        group = Table.FromString(raw)
        if (group.state != Table.REMOVED and not group.is_detached and group.creator_actor_dead
                and group.creator_actor_id.strip(b"\xff")):  # an all-ones id: created by a driver
            orphans.append(group.placement_group_id.hex())
    return orphans


def remove_orphaned_groups() -> int:
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    orphans = orphaned_groups()
    for group_id in orphans:
        log.warning("removing placement group %s: the trainer that created it is gone", group_id)
        remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(group_id))))
    return len(orphans)


def quiet_train_reports() -> None:
    """In a Train worker: Ray Train's per-report INFO lines off (warnings stay). Cosmetic, so an untested
    Ray only keeps its chatter."""
    try:
        check_ray_version()
        from ray.train.v2._internal.execution import context
    except (UntestedRay, ImportError):
        return
    context.logger.setLevel(logging.WARNING)


class TrainToTune(UserCallback):
    """Puts ``(metrics, checkpoint)`` of every report on a ``ray.util.queue.Queue``, blocking until the
    trial function has taken the previous one."""

    def __init__(self, queue):
        check_ray_version()
        self.queue = queue

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        self.queue.put((dict(metrics[0]), checkpoint))


def validate_launcher_config(config: dict | str | Path) -> dict:
    """Fill a cluster-launcher config (a dict, or the path of its YAML) with Ray's defaults as ``ray up``
    does and check it against Ray's schema; raises on a config ``ray up`` would refuse, returns the filled
    config."""
    check_ray_version()
    from ray.autoscaler._private.util import prepare_config, validate_config

    if not isinstance(config, dict):
        config = yaml.safe_load(Path(config).read_text())
    filled = prepare_config(config)
    validate_config(filled)
    return filled
