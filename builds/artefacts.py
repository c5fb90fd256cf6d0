"""Build once, promote (docs/promote.md): the database's side of kept build outputs.

The files are in one content-addressed store per project on disk (builds.engine.artefacts,
under SLIPWAY_ARTEFACT_DIR); an ``Artefact`` row records each kept output, the deployment that
built it and whether retention has removed it. The runner records a row after a deployment
that kept its output; the retention job (builds.retention) removes what the project's
settings no longer keep, row first (so no promotion starts from it), then the files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.utils import timezone

from builds.cleanup import project_artefact_dir
from builds.engine.artefacts import ArtefactStore, StoredArtefact
from builds.models import Artefact, Deployment
from deployer.db import retrying
from projects.models import Project

logger = logging.getLogger(__name__)


def project_store(project_id: int) -> ArtefactStore:
    """``SLIPWAY_ARTEFACT_DIR/project-<id>``: the project's artefact store."""
    return ArtefactStore(project_artefact_dir(project_id))


@retrying
def artefact_record(*, deployment: Deployment, revision: str, stored: StoredArtefact) -> Artefact:
    """Record (or revive) the row of the output ``deployment`` kept, and link it from the
    deployment. Two deployments that built the same bytes share one row (unique per project
    and manifest digest); a row retention had removed is kept again, since the store has
    just written its manifest back."""
    artefact, created = Artefact.objects.get_or_create(
        project_id=deployment.project_id,
        digest=stored.digest,
        defaults={
            "deployment": deployment,
            "revision": revision,
            "files": stored.files,
            "size": stored.total_bytes,
        },
    )
    if not created:
        Artefact.objects.filter(pk=artefact.pk).update(
            deployment=deployment, revision=revision, created_at=timezone.now(), removed_at=None
        )
    Deployment.objects.filter(pk=deployment.pk).update(artefact=artefact)
    return artefact


@dataclass(frozen=True)
class ArtefactsPruned:
    artefacts: int
    objects: int
    bytes: int


def artefacts_prune(*, dry_run: bool = False, now: datetime | None = None) -> ArtefactsPruned:
    """Remove each project's artefacts beyond its ``artefacts_keep`` newest or older than
    ``artefacts_keep_days`` (0: no limit of that kind): the rows are marked removed, then
    the store deletes their manifests and every object no kept manifest names. ``dry_run``
    counts the rows only. A store on another machine's disk (scaled out without a shared
    SLIPWAY_ARTEFACT_DIR) is left as it is: its files go when that store is next pruned."""
    now = now or timezone.now()
    removed = objects = size = 0
    for project in Project.objects.only("pk", "artefacts_keep", "artefacts_keep_days"):
        kept = Artefact.objects.kept().filter(project=project).order_by("-created_at", "-id")
        doomed: set[int] = set()
        if project.artefacts_keep:
            doomed |= set(kept.values_list("pk", flat=True)[project.artefacts_keep :])
        if project.artefacts_keep_days:
            cutoff = now - timedelta(days=project.artefacts_keep_days)
            doomed |= set(kept.filter(created_at__lt=cutoff).values_list("pk", flat=True))
        if not doomed:
            continue
        removed += len(doomed)
        if dry_run:
            continue
        digests = list(Artefact.objects.filter(pk__in=doomed).values_list("digest", flat=True))
        Artefact.objects.filter(pk__in=doomed, removed_at__isnull=True).update(removed_at=now)
        try:
            gone = project_store(project.pk).remove(digests)
        except OSError:
            logger.exception("Artefacts of project %s could not be removed from disk", project.pk)
            continue
        objects += gone.objects
        size += gone.bytes
    return ArtefactsPruned(artefacts=removed, objects=objects, bytes=size)
