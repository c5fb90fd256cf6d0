"""Pending work across every project: what is queued or running, and why each waits.

For the site admins' Pending work page (builds.views.pending_work). Each queued deployment
is shown with its start message (deployer.outbox: not sent yet and why, sent, taken by which
worker) and the reason it has not started; each running one with its worker and heartbeat.
Webhook deliveries a worker has not processed yet are shown per project, with the project's
processing message.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Count, Min, Prefetch
from django.utils import timezone

from builds import gates
from builds.models import (
    Deployment,
    DeploymentTarget,
    Kind,
    Status,
    TargetStatus,
    WebhookDelivery,
    WebhookOutcome,
)
from builds.services import RUN_DEPLOYMENT_TASK, RUN_PREVIEW_TASK, dispatch_key
from builds.webhook_services import PROCESS_WEBHOOKS_TASK, SWEEP_AFTER, webhooks_key
from deployer import health
from deployer.models import OutboxMessage
from projects.models import Project

#: Seconds between the relay's passes (deployer/settings.py: the relay-outbox beat task).
RELAY_SECONDS = 5


@dataclass(frozen=True)
class PendingDeployment:
    deployment: Deployment
    #: The deployment's newest start message (None: none recorded yet).
    message: OutboxMessage | None
    #: The Celery queue its message goes to.
    queue: str
    #: Why it has not started (queued), or what it is doing (running), in a sentence.
    why: str
    #: Seconds since the last heartbeat (running only).
    heartbeat_age: float | None = None
    #: The heartbeat is older than HEARTBEAT_TIMEOUT: the reaper ends it on its next pass.
    stale: bool = False

    @property
    def message_state(self) -> str:
        """ "unsent", "sent", "consumed" or "none"."""
        return _message_state(self.message)


def _message_state(message: OutboxMessage | None) -> str:
    if message is None:
        return "none"
    if message.consumed_at is not None:
        return "consumed"
    return "sent" if message.sent_at is not None else "unsent"


@dataclass(frozen=True)
class PendingWebhooks:
    """A project's accepted webhook deliveries that no worker has processed yet."""

    project: Project
    waiting: int
    oldest: datetime
    #: The project's newest processing message (None: none recorded).
    message: OutboxMessage | None
    queue: str
    why: str

    @property
    def message_state(self) -> str:
        """ "unsent", "sent", "consumed" or "none"."""
        return _message_state(self.message)


def pending_webhooks(*, now: datetime | None = None) -> list[PendingWebhooks]:
    """Per project, the accepted deliveries still waiting for processing, oldest first."""
    now = now or timezone.now()
    waiting = list(
        WebhookDelivery.objects.filter(outcome=WebhookOutcome.ACCEPTED)
        .values("project_id")
        .annotate(count=Count("id"), oldest=Min("received_at"))
        .order_by("oldest")
    )
    if not waiting:
        return []
    projects = Project.objects.in_bulk([row["project_id"] for row in waiting])
    keys = [webhooks_key(row["project_id"]) for row in waiting]
    messages: dict[str, OutboxMessage] = {}
    for recorded in OutboxMessage.objects.filter(key__in=keys).order_by("id"):
        messages[recorded.key] = recorded  # the newest wins
    route = settings.CELERY_TASK_ROUTES.get(PROCESS_WEBHOOKS_TASK, {})
    queue = str(route.get("queue", settings.CELERY_TASK_DEFAULT_QUEUE))
    consumed_queues = health.cluster_state().queues()
    broker_ok = health.cluster_state().broker_ok
    rows = []
    for row in waiting:
        message = messages.get(webhooks_key(row["project_id"]))
        age = (now - row["oldest"]).total_seconds()
        rows.append(
            PendingWebhooks(
                project=projects[row["project_id"]],
                waiting=row["count"],
                oldest=row["oldest"],
                message=message,
                queue=queue,
                why=_why_webhooks_wait(message, queue, age, consumed_queues, broker_ok),
            )
        )
    return rows


def _why_webhooks_wait(
    message: OutboxMessage | None,
    queue: str,
    age: float,
    consumed_queues: dict[str, int],
    broker_ok: bool,
) -> str:
    if message is None or message.consumed_at is not None:
        if age < SWEEP_AFTER:
            return "A worker is processing the project's deliveries"
        return (
            "Its worker stopped before it finished (it died, or the database was away): the "
            "reaper queues the processing again"
        )
    return _why_unconsumed("processing", message, queue, consumed_queues, broker_ok)


def _why_unconsumed(
    what: str,
    message: OutboxMessage,
    queue: str,
    consumed_queues: dict[str, int],
    broker_ok: bool,
) -> str:
    """Why a message no worker has started yet waits: not sent (and why), no live worker on
    its queue, or every worker busy. ``what`` names it ("start", "processing")."""
    if message.sent_at is None:
        reason = message.last_error or "not sent yet"
        broker = "" if broker_ok else "the broker does not answer; "
        return (
            f"Its {what} message is not sent yet ({broker}{reason}); the relay tries again "
            f"every {RELAY_SECONDS} s"
        )
    if not consumed_queues.get(queue):
        return f"Sent; no live worker consumes the {queue} queue: start one (docs/reliability-invariant.md)"
    return f"Sent; waiting for a free worker on the {queue} queue"


def queue_of(kind: str) -> str:
    """The queue that runs a deployment of ``kind`` (deployer/settings.py's routes)."""
    task = RUN_PREVIEW_TASK if kind == Kind.PREVIEW else RUN_DEPLOYMENT_TASK
    route = settings.CELERY_TASK_ROUTES.get(task, {})
    return str(route.get("queue", settings.CELERY_TASK_DEFAULT_QUEUE))


def pending_deployments(*, now: datetime | None = None) -> list[PendingDeployment]:
    """Every held, queued and running deployment, running first, then oldest first."""
    now = now or timezone.now()
    active = list(
        Deployment.objects.filter(status__in=[Status.RUNNING, Status.QUEUED, Status.GATED])
        .select_related("project", "triggered_by")
        .prefetch_related(
            Prefetch("targets", queryset=DeploymentTarget.objects.select_related("server"))
        )
        .order_by("created_at", "id")
    )
    keys = [dispatch_key(d.pk) for d in active]
    messages: dict[str, OutboxMessage] = {}
    for recorded in OutboxMessage.objects.filter(key__in=keys).order_by("id"):
        messages[recorded.key] = recorded  # the newest wins
    holders = {
        target.server_id: target.deployment_id
        for target in DeploymentTarget.objects.filter(
            status__in=[TargetStatus.RUNNING, TargetStatus.WAITING],
            deployment__status=Status.RUNNING,
        )
    }
    consumed_queues = health.cluster_state().queues() if active else {}
    broker_ok = health.cluster_state().broker_ok if active else True
    rows = []
    for deployment in active:
        message = messages.get(dispatch_key(deployment.pk))
        queue = queue_of(deployment.kind)
        if deployment.status == Status.RUNNING:
            rows.append(_running(deployment, message, queue, now))
        elif deployment.status == Status.GATED:
            checklist = gates.checklist_of(deployment)
            why = "Waiting for its gates (docs/gates.md)" + (
                f": {checklist.describe(checklist.pending)}" if checklist is not None else ""
            )
            rows.append(PendingDeployment(deployment, message, queue, why))
        else:
            why = _why_queued(deployment, message, queue, holders, consumed_queues, broker_ok)
            rows.append(PendingDeployment(deployment, message, queue, why))
    rows.sort(key=lambda row: row.deployment.status != Status.RUNNING)
    return rows


def _running(
    deployment: Deployment, message: OutboxMessage | None, queue: str, now: datetime
) -> PendingDeployment:
    age = (now - deployment.heartbeat_at).total_seconds() if deployment.heartbeat_at else None
    stale = deployment.heartbeat_at is None or deployment.heartbeat_at < now - timedelta(
        seconds=settings.HEARTBEAT_TIMEOUT
    )
    worker = deployment.worker or "an unknown worker"
    why = f"Running on {worker}" + (f", {deployment.stage}" if deployment.stage else "")
    if stale:
        why += (
            f"; no heartbeat for over {settings.HEARTBEAT_TIMEOUT} s: the reaper ends it and "
            "records each server as it finds it"
        )
    return PendingDeployment(deployment, message, queue, why, heartbeat_age=age, stale=stale)


def _why_queued(
    deployment: Deployment,
    message: OutboxMessage | None,
    queue: str,
    holders: dict[int, int],
    consumed_queues: dict[str, int],
    broker_ok: bool,
) -> str:
    waiting = [t for t in deployment.targets.all() if t.status == TargetStatus.QUEUED]
    if deployment.kind != Kind.PREVIEW:
        busy = [
            f"{t.server.name} is busy with deployment #{holders[t.server_id]}"
            for t in waiting
            if holders.get(t.server_id) not in (None, deployment.pk)
        ]
        if busy:
            return "; ".join(busy) + ": it starts when that one finishes"
    if message is None or message.consumed_at is not None:
        return (
            "No start message is waiting: one is sent when its servers are free (the reaper "
            "checks every 30 s)"
        )
    return _why_unconsumed("start", message, queue, consumed_queues, broker_ok)
