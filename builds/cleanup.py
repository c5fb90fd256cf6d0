"""A deleted project's files on every worker: its mirror, workspace, build cache and scratch
directories, all under ``SLIPWAY_BUILD_DIR/project-<id>/`` (builds.runner.project_dirs), and
its kept build outputs under ``SLIPWAY_ARTEFACT_DIR/project-<id>/`` (docs/promote.md).

Workers may run on machines of their own, each with its own build directory, so deleting a
project removes them in three ways:

- here, at once, in the process that deleted it (in the embedded mode, the only worker);
- on every running worker, through a Celery remote-control broadcast
  (``REMOVE_PROJECT_FILES``, registered in builds.tasks), which every worker's control
  channel receives whatever queues it consumes;
- on a worker that was down and missed the broadcast, by a sweep when it starts
  (builds.tasks, on ``worker_ready``) of every ``project-<id>`` directory whose project no
  longer exists.

A directory is removed only once its project is gone from the database: a broadcast naming a
project that exists (forged by whoever reaches the broker, or a race) removes nothing.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings

from deployer.celery import app
from projects.models import Project

logger = logging.getLogger(__name__)

#: The remote-control command every worker answers (builds.tasks registers it).
REMOVE_PROJECT_FILES = "slipway_remove_project_files"

_PROJECT_DIRECTORY = re.compile(r"project-([1-9][0-9]{0,18})")


def project_build_dir(project_id: int) -> Path:
    """``SLIPWAY_BUILD_DIR/project-<id>``: everything a worker keeps for one project."""
    return Path(settings.BUILD_DIR) / f"project-{project_id}"


def project_artefact_dir(project_id: int) -> Path:
    """``SLIPWAY_ARTEFACT_DIR/project-<id>``: the project's artefact store."""
    return Path(settings.ARTEFACT_DIR) / f"project-{project_id}"


def project_files_remove(project_id: int) -> bool:
    """Remove a deleted project's directories on this machine; True if there was one.

    Does nothing while the project exists. Folders a build left without write permission (Go's
    module cache) are made writable first; what still cannot be removed is logged, not raised
    (the next start-up sweep tries again).
    """
    if Project.objects.filter(pk=project_id).exists():
        return False
    found = False
    for path in (project_build_dir(project_id), project_artefact_dir(project_id)):
        if os.path.lexists(path):
            _remove_tree(path)
            found = True
    return found


def project_files_sweep() -> list[int]:
    """Remove the directory of every project that no longer exists; the ids removed.

    Run when a worker starts, for the deletions it missed while it was down.
    """
    found: dict[int, list[Path]] = {}
    for root in (Path(settings.BUILD_DIR), Path(settings.ARTEFACT_DIR)):
        try:
            names = [entry.name for entry in os.scandir(root)]
        except FileNotFoundError:
            continue
        for name in names:
            if (match := _PROJECT_DIRECTORY.fullmatch(name)) is not None:
                found.setdefault(int(match.group(1)), []).append(root / name)
    existing = set(Project.objects.filter(pk__in=found).values_list("pk", flat=True))
    removed = []
    for project_id in sorted(set(found) - existing):
        for path in found[project_id]:
            _remove_tree(path)
        removed.append(project_id)
    if removed:
        logger.info("Removed the files of deleted projects %s", removed)
    return removed


def project_files_remove_everywhere(project_id: int) -> None:
    """After a project is deleted (on commit): remove its files here and on every worker."""
    project_files_remove(project_id)
    if settings.EMBEDDED_WORKER:
        return  # this process hosts the only worker, and has just done it
    try:
        # Fire and forget: a worker that misses it sweeps when it starts.
        app.control.broadcast(REMOVE_PROJECT_FILES, arguments={"project_id": project_id})
    except Exception:  # the broker being down must not fail the deletion
        logger.warning("Could not ask the workers to remove project %s's files", project_id)


def _remove_tree(path: Path) -> None:
    if path.is_symlink():
        path.unlink()
        return

    def make_writable_and_retry(function: Callable[..., Any], failed: str, _error: Any) -> None:
        os.chmod(os.path.dirname(failed), 0o700)
        function(failed)

    try:
        shutil.rmtree(path, onerror=make_writable_and_retry)
    except OSError:
        logger.warning("Could not remove %s completely", path, exc_info=True)
