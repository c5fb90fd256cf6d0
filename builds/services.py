"""Deployment services: create, claim, finish, cancel, recover. Views, the API, webhooks and
tasks all change deployments through these functions."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone

from builds.logs import broadcast
from builds.models import (
    ACTIVE,
    TARGET_ACTIVE,
    Deployment,
    DeploymentTarget,
    Kind,
    LogLine,
    Status,
    TargetStatus,
    Trigger,
)
from builds.presenters import deployment_status
from projects.models import Project
from servers.models import Server, ServerGroup

logger = logging.getLogger(__name__)


class DeploymentRefused(Exception):
    """The deployment cannot be created as asked; the message names the field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


def _system_line(deployment: Deployment, text: str) -> None:
    """Append one system line outside a running LogWriter (queueing, cancelling, reaping)."""
    with transaction.atomic():
        locked = Deployment.objects.select_for_update().get(pk=deployment.pk)
        seq = locked.log_seq + 1
        LogLine.objects.create(deployment=locked, seq=seq, stream="system", text=text)
        Deployment.objects.filter(pk=locked.pk).update(log_seq=seq)


def _send(deployment_id: int) -> None:
    from builds.tasks import run_deployment

    run_deployment.delay(deployment_id)


def deployment_create(
    *,
    project: Project,
    servers: Sequence[Server] = (),
    group: ServerGroup | None = None,
    revision: str = "",
    kind: str = Kind.DEPLOY,
    trigger: str = Trigger.MANUAL,
    user: User | None = None,
    full: bool = False,
    skip_build: bool = False,
    skip_cache: bool = False,
    config_only: bool = False,
    rollback_release: str = "",
    rollback_of: Deployment | None = None,
) -> Deployment:
    """Record a deployment and queue it once the transaction commits.

    A newer queued deployment supersedes an older queued one on the same server: the older
    target is cancelled with the reason, so a burst of pushes leaves one queued deployment
    per server, at the newest head.
    """
    targets = list(group.ordered_servers() if group is not None else servers)
    if not targets:
        raise DeploymentRefused("servers", "Choose at least one server or a group")
    for server in targets:
        if server.project_id != project.pk:
            raise DeploymentRefused(
                "servers", f"Server {server.pk} is not part of project {project.slug}"
            )
        if not server.enabled and kind != Kind.PREVIEW:
            raise DeploymentRefused("servers", f"Server {server.name} is disabled")
        if not server.host_key_fingerprint and kind != Kind.PREVIEW:
            raise DeploymentRefused(
                "servers",
                f"Server {server.name}: its host key is not trusted yet. Test the connection, "
                "compare the fingerprint with the server's, then trust it.",
            )
    with transaction.atomic():
        # Lock the servers (in a fixed order, so two creators cannot deadlock) while the
        # older queued targets are superseded and the new ones inserted.
        list(
            Server.objects.select_for_update().filter(pk__in=[s.pk for s in targets]).order_by("pk")
        )
        deployment = Deployment.objects.create(
            project=project,
            kind=kind,
            group=group,
            revision=revision,
            branch=revision or "",
            trigger=trigger,
            triggered_by=user if user is not None and user.is_authenticated else None,
            full=full,
            skip_build=skip_build,
            skip_cache=skip_cache,
            config_only=config_only,
            rollback_release=rollback_release,
            rollback_of=rollback_of,
        )
        if kind != Kind.PREVIEW:
            _supersede_queued(targets, by=deployment)
        DeploymentTarget.objects.bulk_create(
            DeploymentTarget(
                deployment=deployment,
                server=server,
                position=position,
                status=TargetStatus.SKIPPED if kind == Kind.PREVIEW else TargetStatus.QUEUED,
            )
            for position, server in enumerate(targets)
        )
        deployment_id = deployment.pk
        transaction.on_commit(lambda: _send(deployment_id))
    return deployment


def _supersede_queued(servers: Iterable[Server], *, by: Deployment) -> None:
    older = DeploymentTarget.objects.filter(
        server__in=list(servers),
        status=TargetStatus.QUEUED,
        deployment__kind__in=[Kind.DEPLOY, Kind.ROLLBACK],
    ).select_related("deployment", "server")
    touched: set[int] = set()
    for target in older:
        target.status = TargetStatus.CANCELLED
        target.reason = f"Superseded by deployment #{by.pk}"
        target.finished_at = timezone.now()
        target.save(update_fields=["status", "reason", "finished_at"])
        touched.add(target.deployment_id)
    for deployment in Deployment.objects.filter(pk__in=touched, status=Status.QUEUED):
        if not deployment.targets.filter(status=TargetStatus.QUEUED).exists():
            Deployment.objects.filter(pk=deployment.pk, status=Status.QUEUED).update(
                status=Status.CANCELLED,
                error=f"Superseded by deployment #{by.pk}",
                finished_at=timezone.now(),
            )
            _system_line(deployment, f"Superseded by deployment #{by.pk}")


def deployment_claim(
    deployment_id: int, *, task_id: str = "", worker: str = ""
) -> Deployment | None:
    """Move a queued deployment to running, or return None.

    None when another worker claimed it already (a redelivered message), when it is no longer
    queued, or when one of its servers is busy with another running deployment; in that last
    case it stays queued and is dispatched again when that one finishes.
    """
    try:
        with transaction.atomic():
            deployment = Deployment.objects.select_for_update().filter(pk=deployment_id).first()
            if deployment is None or deployment.status != Status.QUEUED:
                return None
            server_ids = list(
                deployment.targets.filter(status=TargetStatus.QUEUED).values_list(
                    "server_id", flat=True
                )
            )
            if deployment.kind != Kind.PREVIEW:
                list(Server.objects.select_for_update().filter(pk__in=server_ids).order_by("pk"))
                busy = DeploymentTarget.objects.filter(
                    server_id__in=server_ids,
                    status__in=[TargetStatus.RUNNING, TargetStatus.WAITING],
                ).exists()
                if busy:
                    return None
            now = timezone.now()
            claimed = Deployment.objects.filter(pk=deployment_id, status=Status.QUEUED).update(
                status=Status.RUNNING,
                started_at=now,
                heartbeat_at=now,
                task_id=task_id,
                worker=worker,
            )
            if claimed != 1:
                return None
            deployment.targets.filter(status=TargetStatus.QUEUED).update(
                status=TargetStatus.RUNNING
            )
    except IntegrityError:
        # Two claims raced for one server; the unique constraint let only one through.
        return None
    deployment.refresh_from_db()
    deployment_broadcast_status(deployment)
    return deployment


def deployment_broadcast_status(deployment: Deployment) -> None:
    broadcast(deployment.pk, {"type": "deployment.status", "status": deployment_status(deployment)})


def deployment_finish(
    deployment: Deployment, *, status: str, error: str = "", error_code: str = ""
) -> None:
    now = timezone.now()
    Deployment.objects.filter(pk=deployment.pk, status__in=ACTIVE).update(
        status=status, error=error, error_code=error_code, finished_at=now, stage=""
    )
    deployment.targets.filter(status__in=TARGET_ACTIVE).update(
        status=TargetStatus.CANCELLED if status == Status.CANCELLED else TargetStatus.FAILED,
        finished_at=now,
        reason=error[:2000] if error else "",
    )
    deployment.refresh_from_db()
    deployment_broadcast_status(deployment)
    dispatch_ready(server_ids=list(deployment.targets.values_list("server_id", flat=True)))


def dispatch_ready(*, server_ids: Sequence[int] | None = None) -> int:
    """Send the oldest queued deployment of each given server (or all) to the workers."""
    queued = Deployment.objects.filter(status=Status.QUEUED)
    if server_ids is not None:
        queued = queued.filter(targets__server_id__in=server_ids)
    sent = 0
    for deployment_id in (
        queued.order_by("created_at", "id").values_list("pk", flat=True).distinct()
    ):
        _send(deployment_id)
        sent += 1
    return sent


def deployment_request_cancel(deployment: Deployment) -> bool:
    """Cancel a queued deployment now, or ask a running one to stop at its next safe point."""
    now = timezone.now()
    if Deployment.objects.filter(pk=deployment.pk, status=Status.QUEUED).update(
        status=Status.CANCELLED, finished_at=now, error="Cancelled before it started"
    ):
        deployment.targets.filter(status=TargetStatus.QUEUED).update(
            status=TargetStatus.CANCELLED, finished_at=now
        )
        _system_line(deployment, "Cancelled before it started")
        deployment.refresh_from_db()
        deployment_broadcast_status(deployment)
        return True
    changed = Deployment.objects.filter(
        pk=deployment.pk, status=Status.RUNNING, cancel_requested_at=None
    ).update(cancel_requested_at=now)
    return bool(changed)


def deployments_reap_stale() -> int:
    """Fail running deployments whose heartbeat went stale (their worker died)."""
    cutoff = timezone.now() - timedelta(seconds=settings.HEARTBEAT_TIMEOUT)
    stale = list(Deployment.objects.filter(status=Status.RUNNING, heartbeat_at__lt=cutoff))
    for deployment in stale:
        message = (
            f"The worker running this deployment ({deployment.worker or 'unknown'}) stopped "
            f"responding: no heartbeat for {settings.HEARTBEAT_TIMEOUT} s"
        )
        _system_line(deployment, message)
        deployment_finish(deployment, status=Status.FAILED, error=message, error_code="worker_lost")
    dispatch_ready()
    return len(stale)


def deployments_recover_after_restart() -> None:
    """Embedded mode: after a restart nothing can still be running in this single process."""
    if settings.EMBEDDED:
        for deployment in Deployment.objects.filter(status=Status.RUNNING):
            message = "Slipway restarted while this deployment was running"
            _system_line(deployment, message)
            deployment_finish(
                deployment, status=Status.FAILED, error=message, error_code="worker_lost"
            )
    dispatch_ready()
