"""Deployment notifications: email, Slack, Discord, Microsoft Teams and signed JSON webhooks;
and the delivery of integrations' reports (builds.integrations), which share this machinery.

Record, then act. When a deployment starts, succeeds, fails or is rolled back, builds.services
calls ``deployment_event``, which only *records* one NotificationDelivery per matching
notification (with the payload frozen at that moment) and, once the transaction commits, hands
each to the ``send_notification_delivery`` task. It never sends anything itself, so a slow or
broken receiver can neither delay nor fail a deployment.

The task claims its delivery with a conditional UPDATE (pending/retrying/stale sending →
sending, one more attempt), so a redelivered message or a second worker does nothing. It sends,
then records the outcome: sent, failed for good, or retrying after the next delay of
RETRY_DELAYS. ``resend_due`` is the safety net for messages the broker lost (the in-memory
broker loses everything on a restart): it sends every delivery whose next attempt is overdue.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import smtplib
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.core.mail import EmailMessage
from django.core.validators import validate_email
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from builds import integrations, outbound
from builds.engine.errors import InvalidInput
from builds.engine.masking import Masker
from builds.models import Deployment, DriftCheck, Kind
from deployer import links
from deployer.celery import app
from projects.models import (
    DELIVERY_OPEN,
    DeliveryEvent,
    DeliveryStatus,
    Integration,
    Notification,
    NotificationDelivery,
    NotificationEvent,
    NotificationKind,
    Project,
)
from projects.secrets import project_secrets
from projects.services import audit_record, model_update

logger = logging.getLogger(__name__)

# Seconds to wait after each failed attempt: 5 attempts over about 7 minutes in all.
RETRY_DELAYS = (10, 30, 90, 270)
MAX_ATTEMPTS = len(RETRY_DELAYS) + 1
# A claimed delivery is the claimer's for this long; after it, the claimer is taken for dead
# and the delivery may be claimed again. Above the task's hard time limit (150 s).
CLAIM_LEASE = timedelta(minutes=5)
# The worker that runs a countdown message may see a clock a little behind the sender's.
CLOCK_TOLERANCE = timedelta(seconds=2)
# resend_due leaves a due delivery to its own task message for this long first.
RESEND_GRACE = timedelta(seconds=60)
# Answers that trying again will not change (a deleted Slack webhook answers 404).
RETRYABLE_CLIENT_ERRORS = integrations.RETRYABLE_CLIENT_ERRORS
# A delivery that waits for an earlier one (an integration's finish for its start) looks again
# after this many seconds; waiting costs it no attempt.
DEFER_SECONDS = 10

SIGNATURE_HEADER = "X-Slipway-Signature"
EVENT_HEADER = "X-Slipway-Event"
DELIVERY_HEADER = "X-Slipway-Delivery"
USER_AGENT = "Slipway-Notifications/1"
MIN_SECRET_LENGTH = 16

NOTIFICATION_FIELDS = frozenset(
    {"kind", "url", "address", "events", "servers", "secret", "enabled"}
)


#: An attempt failed (defined with the integrations, which raise it too).
DeliveryError = integrations.DeliveryError


# --------------------------------------------------------------------------- configuration


def email_configuration_problem() -> str | None:
    """Why email cannot be sent from this installation, in words for a person, or None."""
    missing = [
        name
        for name, value in (
            ("SLIPWAY_SMTP_URL", settings.SMTP_URL),
            ("SLIPWAY_EMAIL_FROM", settings.EMAIL_FROM),
        )
        if not value
    ]
    if not missing:
        return None
    return (
        "email notifications need a mail server: the administrator must set "
        f"{' and '.join(missing)} (see docs/notifications.md)."
    )


def _clean_events(value: object) -> list[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        raise InvalidInput("events", f"must be a list of: {', '.join(NotificationEvent.values)}.")
    unknown = sorted(set(value) - set(NotificationEvent.values))
    if unknown:
        raise InvalidInput(
            "events",
            f"{unknown[0]!r} is not an event; choose from {', '.join(NotificationEvent.values)}.",
        )
    if not value:
        raise InvalidInput("events", "choose at least one event.")
    # Stored in the vocabulary's order, each once, whatever order they came in.
    return [event for event in NotificationEvent.values if event in value]


def notification_clean(
    data: Mapping[str, Any], *, instance: Notification | None = None
) -> dict[str, Any]:
    """Check a notification's fields (all of them to create, the changed ones to update).

    Raises InvalidInput naming the first bad field. ``url`` is resolved and checked against the
    outbound guard now; it is checked again at every send, since DNS answers change. ``servers``
    passes through unchecked (the service checks them against the project).
    """
    unknown = set(data) - NOTIFICATION_FIELDS
    if unknown:
        raise InvalidInput(sorted(unknown)[0], "cannot be set on a notification.")
    cleaned = dict(data)
    if instance is None and "kind" not in cleaned:
        raise InvalidInput("kind", f"is required: one of {', '.join(NotificationKind.values)}.")
    kind = cleaned.get("kind", instance.kind if instance is not None else "")
    if kind not in NotificationKind.values:
        raise InvalidInput("kind", f"must be one of {', '.join(NotificationKind.values)}.")
    kind_changed = instance is None or kind != instance.kind
    if "events" in cleaned:
        cleaned["events"] = _clean_events(cleaned["events"])
    if "enabled" in cleaned and not isinstance(cleaned["enabled"], bool):
        raise InvalidInput("enabled", "must be true or false.")

    if kind == NotificationKind.EMAIL:
        # Only where an address is set: turning off or deleting one must stay possible after
        # the administrator removed the mail server.
        problem = email_configuration_problem()
        if problem is not None and (kind_changed or "address" in cleaned):
            raise InvalidInput("kind", problem)
        if cleaned.get("url"):
            raise InvalidInput("url", "email notifications have no URL; give an address.")
        if "address" in cleaned or kind_changed:
            address = str(cleaned.get("address") or "").strip()
            try:
                validate_email(address)
            except ValidationError:
                raise InvalidInput("address", "is not an email address.") from None
            cleaned["address"] = address
        if kind_changed:
            cleaned["url"] = ""
    else:
        if cleaned.get("address"):
            raise InvalidInput("address", f"{kind} notifications go to a URL; give url instead.")
        if "url" in cleaned or kind_changed:
            # Slack to Discord, say, keeps the URL unless a new one is given.
            kept = instance.url if instance is not None else ""
            url = str(cleaned.get("url", kept) or "").strip()
            if not url:
                raise InvalidInput("url", f"is required for {kind} notifications.")
            try:
                outbound.check_url(url)
            except outbound.OutboundError as exc:
                raise InvalidInput("url", f"{exc.message}.") from None
            cleaned["url"] = url
        if kind_changed:
            cleaned["address"] = ""

    if kind == NotificationKind.WEBHOOK:
        secret = cleaned.get("secret", instance.secret if not kind_changed and instance else "")
        # Kept exactly as typed: the receiver checks signatures with the same string.
        if not isinstance(secret, str) or len(secret.strip()) < MIN_SECRET_LENGTH:
            raise InvalidInput(
                "secret",
                f"is required for webhook notifications: at least {MIN_SECRET_LENGTH} "
                "characters (it signs every delivery; see docs/notifications.md).",
            )
    else:
        if cleaned.get("secret"):
            raise InvalidInput("secret", "only webhook notifications are signed.")
        if kind_changed:
            cleaned["secret"] = ""
    return cleaned


# --------------------------------------------------------------------------- services


def notification_create(*, project: Project, actor: User | None, **fields: Any) -> Notification:
    """Add a notification to ``project``; the audit log names the fields, never their values."""

    cleaned = notification_clean(fields)
    servers = integrations.servers_of(project, cleaned)
    with transaction.atomic():
        notification = Notification.objects.create(project=project, **cleaned)
        if servers is not None:
            notification.servers.set(servers)
        audit_record(
            project=project,
            actor=actor,
            action="notification.created",
            target=f"notification {notification}",
            notification=notification.pk,
            kind=notification.kind,
            fields=sorted(fields),
        )
    return notification


def notification_update(
    *, notification: Notification, actor: User | None, **fields: Any
) -> Notification:

    cleaned = notification_clean(fields, instance=notification)
    servers = integrations.servers_of(notification.project, cleaned)
    with transaction.atomic():
        changed = model_update(instance=notification, data=cleaned)
        if servers is not None:
            notification.servers.set(servers)
            changed.append("servers")
        if changed:
            audit_record(
                project=notification.project,
                actor=actor,
                action="notification.updated",
                target=f"notification {notification}",
                notification=notification.pk,
                fields=sorted(changed),
            )
    return notification


def notification_delete(*, notification: Notification, actor: User | None) -> None:

    with transaction.atomic():
        audit_record(
            project=notification.project,
            actor=actor,
            action="notification.deleted",
            target=f"notification {notification}",
            notification=notification.pk,
        )
        notification.delete()


# --------------------------------------------------------------------------- the hook


def deployment_event(deployment: Deployment, event: str) -> list[NotificationDelivery]:
    """Record the deliveries ``event`` calls for, and send them once the transaction commits.

    Called by builds.services when a deployment starts running, succeeds or fails, and with
    ``rolled_back`` when a rollback succeeds or a deployment's servers were rolled back
    automatically, ``cancelled`` when it was cancelled. A finish also records the reports of
    the project's integrations (builds.integrations; their start is ``revision_resolved``).
    Reporting the same event twice records nothing the second time. It never raises: a
    deployment must not fail because its notifications could not be recorded.
    """
    return _record_safely(deployment, event, lambda: _record_deliveries(deployment, event))


def revision_resolved(deployment: Deployment, sha: str) -> list[NotificationDelivery]:
    """Record the ``started`` reports of the project's integrations, now that the commit
    being deployed (``sha``, 40 hex digits) is known. Never raises, as deployment_event."""
    return _record_safely(
        deployment,
        "started",
        lambda: _record_integration_deliveries(_deployment_row(deployment), "started", sha),
    )


def _record_safely(
    deployment: Deployment, event: str, record: Callable[[], list[NotificationDelivery]]
) -> list[NotificationDelivery]:
    try:
        # A savepoint: should recording fail, the caller's transaction goes on unharmed.
        with transaction.atomic():
            deliveries = record()
    except Exception:
        logger.exception(
            "Recording the %r notifications of deployment %s failed", event, deployment.pk
        )
        return []
    if deliveries:
        ids = [delivery.pk for delivery in deliveries]
        transaction.on_commit(lambda: _enqueue_all(ids), robust=True)
    return deliveries


def _deployment_row(deployment: Deployment) -> Deployment:
    return Deployment.objects.select_related("project", "triggered_by").get(pk=deployment.pk)


def _record_deliveries(deployment: Deployment, event: str) -> list[NotificationDelivery]:
    if event not in DeliveryEvent.values or event == DeliveryEvent.DRIFT:
        raise ValueError(f"{event!r} is not a deployment's notification event")
    deployment = _deployment_row(deployment)
    if deployment.kind == Kind.PREVIEW:
        return []  # a preview changes no server: nobody needs telling
    recorded = _record_notification_deliveries(deployment, event)
    if event in integrations.FINISH_EVENTS:
        recorded += _record_integration_deliveries(deployment, event, sha=None)
    return recorded


def _touches(receiver: Notification | Integration, touched: set[int]) -> bool:
    """Whether a notification or integration limited to some servers covers ``touched``."""
    servers = {server.pk for server in receiver.servers.all()}
    return not servers or bool(touched & servers)


def _record_notification_deliveries(
    deployment: Deployment, event: str
) -> list[NotificationDelivery]:
    # The URL and the secret stay encrypted here: recording needs neither.
    candidates = [
        notification
        for notification in Notification.objects.filter(
            project_id=deployment.project_id, enabled=True
        )
        .defer("url", "secret")
        .prefetch_related("servers")
        if event in notification.events
    ]
    if not candidates:
        return []
    touched = set(deployment.targets.values_list("server_id", flat=True))
    wanted = [notification for notification in candidates if _touches(notification, touched)]
    if not wanted:
        return []
    payload = deployment_payload(deployment, event)
    return _create_each(
        [
            {"notification": notification, "deployment": deployment, "event": event}
            for notification in wanted
        ],
        payload=payload,
    )


def _create_each(
    rows: list[dict[str, Any]], *, payload: dict[str, Any]
) -> list[NotificationDelivery]:
    """Create a delivery per row (its receiver, deployment and event) with ``payload`` and
    the row's own ``payload`` parts over it; a row recorded already is skipped."""
    recorded = []
    for row in rows:
        extra = row.pop("payload", {})
        try:
            with transaction.atomic():
                recorded.append(
                    NotificationDelivery.objects.create(**row, payload={**payload, **extra})
                )
        except IntegrityError:
            continue  # this event of this deployment was recorded already
    return recorded


def drift_event(check: DriftCheck) -> list[NotificationDelivery]:
    """Record a ``drift`` delivery for each enabled notification of the check's project that
    lists the event (and the server, or no server), sent once the transaction commits.

    Called by builds.drift_checks in the transaction that records a drift not seen before on
    that server (the caller decides; a drift already reported is not reported again). Never
    raises, as ``deployment_event``."""
    try:
        with transaction.atomic():
            deliveries = _record_drift_deliveries(check)
    except Exception:
        logger.exception("Recording the drift notifications of check %s failed", check.pk)
        return []
    if deliveries:
        ids = [delivery.pk for delivery in deliveries]
        transaction.on_commit(lambda: _enqueue_all(ids), robust=True)
    return deliveries


def _record_drift_deliveries(check: DriftCheck) -> list[NotificationDelivery]:
    check = DriftCheck.objects.select_related("server__project").get(pk=check.pk)
    wanted = [
        notification
        for notification in Notification.objects.filter(
            project_id=check.server.project_id, enabled=True
        )
        .defer("url", "secret")
        .prefetch_related("servers")
        if NotificationEvent.DRIFT in notification.events
        and _touches(notification, {check.server_id})
    ]
    if not wanted:
        return []
    payload = drift_payload(check)
    return [
        NotificationDelivery.objects.create(
            notification=notification, event=NotificationEvent.DRIFT, payload=payload
        )
        for notification in wanted
    ]


#: How many drifted paths a drift message names (the page and the API have them all).
DRIFT_PATHS_IN_MESSAGE = 10


def drift_payload(check: DriftCheck) -> dict[str, Any]:
    """The JSON a webhook receives for a ``drift`` event: the project, the server (with its
    page) and the check (counts, and its first drifted files as the check keeps them)."""
    server = check.server
    project = server.project
    return {
        "event": NotificationEvent.DRIFT.value,
        "project": {
            "slug": project.slug,
            "name": project.name,
            "html_url": links.project_page(project.slug),
        },
        "server": {
            "id": server.pk,
            "name": server.name,
            "html_url": links.server_page(project.slug, server.pk),
        },
        "drift_check": {
            "id": check.pk,
            "release": check.release_name,
            "trigger": check.trigger,
            "finished_at": _iso(check.finished_at),
            "added": check.added_count,
            "changed": check.changed_count,
            "removed": check.removed_count,
            "files": check.files[:DRIFT_PATHS_IN_MESSAGE],
        },
    }


_SHA = re.compile(r"^[0-9a-f]{40}$")


def _record_integration_deliveries(
    deployment: Deployment, event: str, sha: str | None
) -> list[NotificationDelivery]:
    """One delivery per enabled integration that reports ``event`` (integrations.wants).

    The payload is the notifications' with an ``integration`` part: the environment and
    the commit's SHA, ``sha`` for a start; for a finish, the SHA its start reported, else
    the deployment's end revision; nothing is recorded without one.
    """
    if deployment.kind == Kind.PREVIEW:
        return []
    # The token stays encrypted here: recording does not need it.
    candidates = [
        integration
        for integration in Integration.objects.filter(
            project_id=deployment.project_id, enabled=True
        )
        .defer("token")
        .prefetch_related("servers")
        if integrations.wants(integration, event, deployment)
    ]
    if not candidates:
        return []
    touched = set(deployment.targets.values_list("server_id", flat=True))
    wanted = [integration for integration in candidates if _touches(integration, touched)]
    if not wanted:
        return []
    rows = []
    for integration in wanted:
        commit = sha if sha is not None else _started_sha(integration, deployment)
        if not commit or not _SHA.match(commit):
            continue
        report = {
            "environment": integrations.environment_for(integration, deployment),
            "sha": commit,
            "ref": integrations.ref_for(deployment, commit),
        }
        rows.append(
            {
                "integration": integration,
                "deployment": deployment,
                "event": event,
                "payload": {"integration": report},
            }
        )
    if not rows:
        return []
    return _create_each(rows, payload=deployment_payload(deployment, event))


def _started_sha(integration: Integration, deployment: Deployment) -> str:
    started = (
        NotificationDelivery.objects.filter(
            integration=integration, deployment=deployment, event=DeliveryEvent.STARTED
        )
        .values_list("payload", flat=True)
        .first()
    )
    if isinstance(started, dict):
        return str(started.get("integration", {}).get("sha", ""))
    return deployment.end_revision


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def deployment_payload(deployment: Deployment, event: str) -> dict[str, Any]:
    """The JSON a webhook receives (and what the chat and email messages are made from)."""

    project = deployment.project
    targets = list(deployment.targets.select_related("server").order_by("position", "id"))
    # Errors and reasons are shown on the dashboard already, but a message leaves Slipway:
    # mask any stored secret that a command may have printed into them.
    mask = Masker(project_secrets(project, [target.server for target in targets]))
    return {
        "event": event,
        "project": {
            "slug": project.slug,
            "name": project.name,
            "html_url": links.project_page(project.slug),
        },
        "deployment": {
            "id": deployment.pk,
            "kind": deployment.kind,
            "status": deployment.status,
            "revision": deployment.revision,
            "branch": deployment.branch,
            "start_revision": deployment.start_revision,
            "end_revision": deployment.end_revision,
            "trigger": deployment.trigger,
            "triggered_by": (
                deployment.triggered_by.get_username() if deployment.triggered_by else None
            ),
            "rollback_of": deployment.rollback_of_id,
            "created_at": _iso(deployment.created_at),
            "started_at": _iso(deployment.started_at),
            "finished_at": _iso(deployment.finished_at),
            "error": mask(deployment.error),
            "error_code": deployment.error_code,
            "html_url": links.deployment_page(project.slug, deployment.pk),
        },
        "servers": [
            {
                "id": target.server_id,
                "name": target.server.name,
                "status": target.status,
                "release": target.release,
                "reason": mask(target.reason),
            }
            for target in targets
        ],
    }


# --------------------------------------------------------------------------- sending


#: The Celery task that sends one delivery (builds.tasks registers it under this name). Sent
#: by name: the tasks call this module, so it does not import the tasks.
SEND_DELIVERY_TASK = "builds.tasks.send_notification_delivery"


def _enqueue(delivery_id: int, countdown: float | None = None) -> None:
    try:
        # No publishing retries: with the broker down this would hold the caller (a
        # deployment's worker) for nothing; resend_due sends the delivery later.
        options: dict[str, Any] = {"retry": False}
        if countdown is not None:
            options["countdown"] = countdown
        app.send_task(SEND_DELIVERY_TASK, args=(delivery_id,), **options)
    except Exception:
        logger.warning(
            "Could not queue notification delivery %s; resend_due will send it",
            delivery_id,
            exc_info=True,
        )


def _enqueue_all(delivery_ids: Sequence[int]) -> None:
    for delivery_id in delivery_ids:
        _enqueue(delivery_id)


def delivery_claim(delivery_id: int) -> int | None:
    """Take a due delivery for one attempt and return the attempt's number, or None.

    None when it is not due (a retry's time has not come), is being sent by someone else, or
    is over (sent, failed): so a redelivered task message does nothing.
    """
    now = timezone.now()
    claimed = NotificationDelivery.objects.filter(
        pk=delivery_id,
        status__in=DELIVERY_OPEN,
        next_attempt_at__lte=now + CLOCK_TOLERANCE,
        attempts__lt=MAX_ATTEMPTS,
    ).update(
        status=DeliveryStatus.SENDING,
        attempts=F("attempts") + 1,
        next_attempt_at=now + CLAIM_LEASE,
    )
    if claimed != 1:
        return None
    attempt: int = NotificationDelivery.objects.values_list("attempts", flat=True).get(
        pk=delivery_id
    )
    return attempt


def delivery_attempt(delivery_id: int) -> NotificationDelivery | None:
    """Claim, send and record one attempt of a delivery; None when it was not ours to send."""
    attempt = delivery_claim(delivery_id)
    if attempt is None:
        return None
    status_code: int | None = None
    try:
        delivery = NotificationDelivery.objects.select_related("notification", "integration").get(
            pk=delivery_id
        )
        status_code = _send(delivery)
    except DeliveryError as exc:
        _record_failure(
            delivery_id,
            attempt,
            error=exc.message,
            status_code=exc.status_code,
            permanent=exc.permanent,
            deferred=exc.deferred,
        )
    except Exception:
        logger.exception("Notification delivery %s failed", delivery_id)
        _record_failure(
            delivery_id,
            attempt,
            error="Slipway hit an internal error while sending; the worker's log has the details",
            status_code=None,
            permanent=False,
        )
    else:
        NotificationDelivery.objects.filter(
            pk=delivery_id, status=DeliveryStatus.SENDING, attempts=attempt
        ).update(
            status=DeliveryStatus.SENT,
            status_code=status_code,
            error="",
            sent_at=timezone.now(),
            next_attempt_at=None,
        )
    return NotificationDelivery.objects.get(pk=delivery_id)


def _send(delivery: NotificationDelivery) -> int | None:
    notification, integration = delivery.notification, delivery.integration
    if integration is not None:
        if not integration.enabled:
            raise DeliveryError(
                "The integration was turned off before this report was sent", permanent=True
            )
        return integrations.send(integration, delivery)
    assert notification is not None  # a delivery has one receiver (a check constraint)
    if not notification.enabled:
        raise DeliveryError(
            "The notification was turned off before this message was sent", permanent=True
        )
    return SENDERS[notification.kind](notification, delivery)


def _record_failure(
    delivery_id: int,
    attempt: int,
    *,
    error: str,
    status_code: int | None,
    permanent: bool,
    deferred: bool = False,
) -> None:
    now = timezone.now()
    # Only while the claim is still ours: past its lease someone else may have taken it.
    ours = NotificationDelivery.objects.filter(
        pk=delivery_id, status=DeliveryStatus.SENDING, attempts=attempt
    )
    error = error[:2000]
    if deferred:
        # Waiting for an earlier delivery is no failure: the attempt is given back. Bounded:
        # the delivery waited for is sent or given up within its own attempts.
        if ours.update(
            status=DeliveryStatus.RETRYING,
            attempts=F("attempts") - 1,
            error=error,
            next_attempt_at=now + timedelta(seconds=DEFER_SECONDS),
        ):
            transaction.on_commit(
                lambda: _enqueue(delivery_id, countdown=DEFER_SECONDS), robust=True
            )
        return
    if permanent or attempt >= MAX_ATTEMPTS:
        ours.update(
            status=DeliveryStatus.FAILED,
            status_code=status_code,
            error=error,
            next_attempt_at=None,
        )
        return
    delay = RETRY_DELAYS[attempt - 1]
    if ours.update(
        status=DeliveryStatus.RETRYING,
        status_code=status_code,
        error=error,
        next_attempt_at=now + timedelta(seconds=delay),
    ):
        transaction.on_commit(lambda: _enqueue(delivery_id, countdown=delay), robust=True)


def resend_due(*, limit: int = 20) -> int:
    """Send, in this thread, the deliveries whose next attempt is overdue; return how many.

    The safety net for task messages that never ran: queued on an in-memory broker that was
    restarted, or not queued at all while the broker was down. Safe to run at any time and
    in several places at once, as every attempt claims its delivery first.
    """
    now = timezone.now()
    # A worker that died during the last attempt left its claim behind: nothing can retry it.
    NotificationDelivery.objects.filter(
        status=DeliveryStatus.SENDING, next_attempt_at__lte=now, attempts__gte=MAX_ATTEMPTS
    ).update(
        status=DeliveryStatus.FAILED,
        error="The worker sending the last attempt stopped before it finished",
        next_attempt_at=None,
    )
    overdue = list(
        NotificationDelivery.objects.due(now - RESEND_GRACE)
        .order_by("next_attempt_at", "id")
        .values_list("pk", flat=True)[:limit]
    )
    return sum(1 for delivery_id in overdue if delivery_attempt(delivery_id) is not None)


# --------------------------------------------------------------------------- messages

_VERBS = {
    NotificationEvent.STARTED: "started",
    NotificationEvent.SUCCEEDED: "succeeded",
    NotificationEvent.FAILED: "failed",
    NotificationEvent.ROLLED_BACK: "rolled back",
    NotificationEvent.DRIFT: "found drift",
}
# Longest error or reason quoted in a chat message or an email (the page has the rest).
QUOTE_LIMIT = 500


def _clip(text: str, limit: int = QUOTE_LIMIT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def message_link(payload: Mapping[str, Any]) -> str:
    """The page a message links to: the deployment's, or the server's for a drift."""
    if payload["event"] == NotificationEvent.DRIFT:
        return str(payload["server"]["html_url"])
    return str(payload["deployment"]["html_url"])


def message_title(payload: Mapping[str, Any]) -> str:
    if payload["event"] == NotificationEvent.DRIFT:
        return f"{payload['project']['name']}: drift found on {payload['server']['name']}"
    deployment, event = payload["deployment"], payload["event"]
    if deployment["kind"] == Kind.ROLLBACK:
        # "rollback #12 rolled back" would read as if the rollback itself had been undone.
        noun, verb = "rollback", "finished" if event == NotificationEvent.ROLLED_BACK else None
    elif deployment["kind"] == Kind.SWITCH:
        noun, verb = "switch back", None
    else:
        noun, verb = "deployment", None
    return f"{payload['project']['name']}: {noun} #{deployment['id']} {verb or _VERBS[event]}"


def message_facts(payload: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, value) lines shared by every kind of message."""
    if payload["event"] == NotificationEvent.DRIFT:
        return _drift_facts(payload["drift_check"])
    deployment = payload["deployment"]
    facts: list[tuple[str, str]] = []
    start, end = deployment["start_revision"][:7], deployment["end_revision"][:7]
    revision = f"{start} → {end}" if start and end and start != end else end or start
    revision = revision or deployment["revision"]
    if deployment["branch"] and revision:
        facts.append(("Revision", f"{deployment['branch']} @ {revision}"))
    elif revision or deployment["branch"]:
        facts.append(("Revision", revision or deployment["branch"]))
    servers = []
    for server in payload["servers"]:
        line = f"{server['name']}: {server['status']}"
        if server["reason"]:
            line += f" ({_clip(server['reason'], 200)})"
        servers.append(line)
    if servers:
        facts.append(("Servers", "; ".join(servers)))
    who = deployment["triggered_by"] or deployment["trigger"]
    facts.append(("By", f"{who} ({deployment['trigger']})" if deployment["triggered_by"] else who))
    if deployment["error"]:
        facts.append(("Error", _clip(deployment["error"])))
    return facts


def _drift_facts(check: Mapping[str, Any]) -> list[tuple[str, str]]:
    total = check["added"] + check["changed"] + check["removed"]
    shown = [f"{item['path']} ({item['change']})" for item in check["files"]]
    more = f" and {total - len(shown)} more" if total > len(shown) else ""
    return [
        ("Release", check["release"]),
        (
            "Files",
            f"{check['changed']} changed, {check['added']} added, {check['removed']} removed",
        ),
        ("Paths", _clip(", ".join(shown) + more)),
    ]


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_message(payload: Mapping[str, Any]) -> dict[str, Any]:
    title = _slack_escape(message_title(payload))
    link = message_link(payload)
    facts = "\n".join(
        f"*{label}:* {_slack_escape(value)}" for label, value in message_facts(payload)
    )
    text = f"<{link}|{title}>\n{facts}"
    return {
        # Shown in notifications and by clients that do not render blocks.
        "text": text,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
    }


# Markdown that could style or link user text (names, errors); a line never starts with it.
_DISCORD_SPECIAL = "\\*_~`|[]"
DISCORD_LIMIT = 2000


def _discord_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in _DISCORD_SPECIAL else c for c in text)


def discord_message(payload: Mapping[str, Any]) -> dict[str, Any]:
    title = _discord_escape(message_title(payload))
    link = message_link(payload)
    lines = [f"**[{title}]({link})**"]
    lines += [f"**{label}:** {_discord_escape(value)}" for label, value in message_facts(payload)]
    content = "\n".join(lines)
    if len(content) > DISCORD_LIMIT:
        content = content[: DISCORD_LIMIT - 1] + "…"
    # A name or an error that says @everyone must not ping a whole server.
    return {"content": content, "allowed_mentions": {"parse": []}}


def teams_message(payload: Mapping[str, Any]) -> dict[str, Any]:
    """An Adaptive Card, which both Teams incoming webhooks and Workflows accept."""
    event = payload["event"]
    color = {
        "succeeded": "Good",
        "failed": "Attention",
        "rolled_back": "Warning",
        "drift": "Warning",
    }.get(event, "Default")
    card = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": [
            {
                "type": "TextBlock",
                "text": message_title(payload),
                "weight": "Bolder",
                "size": "Medium",
                "color": color,
                "wrap": True,
            },
            {
                "type": "FactSet",
                "facts": [
                    {"title": label, "value": value} for label, value in message_facts(payload)
                ],
            },
        ],
        "actions": [
            {
                "type": "Action.OpenUrl",
                "title": "Open in Slipway",
                "url": message_link(payload),
            }
        ],
    }
    return {
        "type": "message",
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "contentUrl": None,
                "content": card,
            }
        ],
    }


def email_message(payload: Mapping[str, Any]) -> tuple[str, str]:
    """(subject, plain-text body)."""
    # Header injection: a subject is one line, whatever a project is named.
    subject = " ".join(message_title(payload).split())
    lines = [subject, ""]
    lines += [f"{label}: {value}" for label, value in message_facts(payload)]
    lines += ["", f"Details and log: {message_link(payload)}", ""]
    lines += [
        "--",
        "Slipway sends this because a notification of project "
        f"{payload['project']['name']} lists this address.",
    ]
    return subject, "\n".join(lines) + "\n"


def sign(secret: str, body: bytes) -> str:
    """The X-Slipway-Signature value: HMAC-SHA256 of the raw body under the secret."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _json_bytes(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def _post(
    notification: Notification, delivery: NotificationDelivery, body: bytes, **extra: str
) -> int:
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        EVENT_HEADER: delivery.event,
        DELIVERY_HEADER: str(delivery.uuid),
        **extra,
    }
    try:
        response = outbound.post(notification.url, body, headers)
    except outbound.OutboundError as exc:
        raise DeliveryError(exc.message, permanent=exc.permanent) from None
    if response.ok:
        return response.status_code
    code = response.status_code
    via = f" (after redirects from {', '.join(response.redirects)})" if response.redirects else ""
    raise DeliveryError(
        f"{response.origin} answered HTTP {code}{via}",
        status_code=code,
        permanent=400 <= code < 500 and code not in RETRYABLE_CLIENT_ERRORS,
    )


def _send_webhook(notification: Notification, delivery: NotificationDelivery) -> int:
    body = _json_bytes(delivery.payload)
    return _post(
        notification, delivery, body, **{SIGNATURE_HEADER: sign(notification.secret, body)}
    )


def _send_slack(notification: Notification, delivery: NotificationDelivery) -> int:
    return _post(notification, delivery, _json_bytes(slack_message(delivery.payload)))


def _send_discord(notification: Notification, delivery: NotificationDelivery) -> int:
    return _post(notification, delivery, _json_bytes(discord_message(delivery.payload)))


def _send_teams(notification: Notification, delivery: NotificationDelivery) -> int:
    return _post(notification, delivery, _json_bytes(teams_message(delivery.payload)))


def _send_email(notification: Notification, delivery: NotificationDelivery) -> int | None:
    problem = email_configuration_problem()
    if problem is not None:
        raise DeliveryError(problem[0].upper() + problem[1:], permanent=True)
    subject, text = email_message(delivery.payload)
    message = EmailMessage(
        subject=subject,
        body=text,
        from_email=settings.EMAIL_FROM,
        to=[notification.address],
        headers={EVENT_HEADER: delivery.event, DELIVERY_HEADER: str(delivery.uuid)},
    )
    server = f"mail server {settings.EMAIL_HOST}:{settings.EMAIL_PORT}"
    try:
        message.send()
    except smtplib.SMTPRecipientsRefused:
        raise DeliveryError(
            f"The {server} refused the address {notification.address}", permanent=True
        ) from None
    except smtplib.SMTPAuthenticationError as exc:
        raise DeliveryError(
            f"The {server} refused Slipway's user name or password (SMTP {exc.smtp_code})",
            permanent=True,
        ) from None
    except (smtplib.SMTPException, OSError) as exc:
        raise DeliveryError(f"The {server} failed: {exc}") from None
    return None


SENDERS: dict[str, Callable[[Notification, NotificationDelivery], int | None]] = {
    NotificationKind.EMAIL: _send_email,
    NotificationKind.SLACK: _send_slack,
    NotificationKind.DISCORD: _send_discord,
    NotificationKind.TEAMS: _send_teams,
    NotificationKind.WEBHOOK: _send_webhook,
}
