"""Retention: old log lines, deliveries, deployments and removed releases' manifests go away
(docs/operations.md).

Everything is removed in batches of at most ``BATCH_SIZE`` rows, each batch its own short
transaction, so pruning never holds locks on many rows for long (PostgreSQL) nor the write lock
for long (SQLite), and a run stopped halfway leaves nothing half-done: the next one goes on.
Run by `celery beat` (builds.tasks.prune_old_records), the embedded mode's periodic loop and
`manage.py prune`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Exists, OuterRef, Q, Subquery
from django.utils import timezone

from builds.artefacts import artefacts_prune
from builds.models import (
    DRIFT_CONCLUSIVE,
    FINAL,
    CommitStatus,
    Deployment,
    DriftCheck,
    DriftStatus,
    LogLine,
    WebhookDelivery,
    WebhookOutcome,
)
from deployer.models import OutboxMessage
from projects.models import DELIVERY_FINAL, NotificationDelivery
from servers.models import Release

BATCH_SIZE = 500

# Deliveries whose handling is over. Listed rather than "every outcome", so that an outcome
# added later for a delivery still to be handled is kept until it is named here.
WEBHOOK_FINAL_OUTCOMES = (
    WebhookOutcome.QUEUED,
    WebhookOutcome.IGNORED,
    WebhookOutcome.DUPLICATE,
    WebhookOutcome.REJECTED,
    WebhookOutcome.SUPERSEDED,
    WebhookOutcome.FAILED,
    WebhookOutcome.RECORDED,
)


@dataclass
class Pruned:
    """What one kind of record lost (or would lose, in a dry run): ``count`` rows, older than
    ``cutoff``; ``cutoff`` is None when the setting is 0 (kept forever)."""

    what: str
    setting: str
    cutoff: datetime | None
    count: int = 0
    #: False for a kind whose limits are per project (artefacts): no one cutoff to show.
    one_cutoff: bool = True


@dataclass
class PruneReport:
    dry_run: bool
    parts: list[Pruned] = field(default_factory=list)

    def count(self, what: str) -> int:
        return next(part.count for part in self.parts if part.what == what)

    def as_dict(self) -> dict[str, int]:
        return {part.what: part.count for part in self.parts}

    def lines(self) -> list[str]:
        """One line per kind of record, as `manage.py prune` prints them."""
        verb = "would remove" if self.dry_run else "removed"
        out = []
        for part in self.parts:
            if not part.one_cutoff:
                out.append(f"{part.what}: {verb} {part.count} ({part.setting})")
            elif part.cutoff is None:
                out.append(f"{part.what}: kept forever ({part.setting}=0)")
            else:
                out.append(
                    f"{part.what}: {verb} {part.count} older than "
                    f"{part.cutoff:%Y-%m-%d %H:%M} UTC ({part.setting})"
                )
        return out


def records_prune(
    *, dry_run: bool = False, now: datetime | None = None, batch_size: int = BATCH_SIZE
) -> PruneReport:
    """Remove what the retention settings (days; 0 keeps forever) say is old enough:

    - log lines of deployments that finished before the cutoff (SLIPWAY_RETAIN_LOG_DAYS);
    - webhook deliveries received, sent or failed notification deliveries made, task
      messages the broker took, commit statuses last reported (the CI gate's,
      builds.gates), and drift checks finished (but each server's newest
      conclusive one), before the cutoff (SLIPWAY_RETAIN_DELIVERIES_DAYS);
    - finished deployments older than the cutoff, with their targets, steps and log, except any
      deployment that made a release still kept on its server, live or not
      (SLIPWAY_RETAIN_DEPLOYMENTS_DAYS); an active deployment is never touched;
    - the manifests of releases removed from their server before the cutoff
      (SLIPWAY_RETAIN_MANIFESTS_DAYS): the row stays, for the server's history;
    - kept build outputs beyond each project's artefact retention (Project.artefacts_keep,
      artefacts_keep_days; builds.artefacts.artefacts_prune, docs/promote.md).

    ``dry_run`` counts and changes nothing. Returns what went, per kind. Database errors are
    raised as they are; whatever batches were committed before stay removed.
    """
    now = now or timezone.now()
    report = PruneReport(dry_run=dry_run)

    cutoff = _cutoff(now, settings.RETAIN_LOG_DAYS)
    part = Pruned("log lines", "SLIPWAY_RETAIN_LOG_DAYS", cutoff)
    if cutoff is not None:
        part.count = _prune_log_lines(cutoff, dry_run=dry_run, batch_size=batch_size)
    report.parts.append(part)

    cutoff = _cutoff(now, settings.RETAIN_DELIVERIES_DAYS)
    webhooks = Pruned("webhook deliveries", "SLIPWAY_RETAIN_DELIVERIES_DAYS", cutoff)
    notifications = Pruned("notification deliveries", "SLIPWAY_RETAIN_DELIVERIES_DAYS", cutoff)
    messages = Pruned("sent task messages", "SLIPWAY_RETAIN_DELIVERIES_DAYS", cutoff)
    statuses = Pruned("commit statuses", "SLIPWAY_RETAIN_DELIVERIES_DAYS", cutoff)
    checks = Pruned("drift checks", "SLIPWAY_RETAIN_DELIVERIES_DAYS", cutoff)
    if cutoff is not None:
        webhooks.count = _delete_in_batches(
            WebhookDelivery.objects.filter(
                received_at__lt=cutoff, outcome__in=WEBHOOK_FINAL_OUTCOMES
            ),
            dry_run=dry_run,
            batch_size=batch_size,
        )
        notifications.count = _delete_in_batches(
            NotificationDelivery.objects.filter(created_at__lt=cutoff, status__in=DELIVERY_FINAL),
            dry_run=dry_run,
            batch_size=batch_size,
        )
        # The outbox's rows (deployer.outbox): one the broker took that long ago is history;
        # one never sent is work still waiting, and stays.
        messages.count = _delete_in_batches(
            OutboxMessage.objects.filter(sent_at__lt=cutoff),
            dry_run=dry_run,
            batch_size=batch_size,
        )
        statuses.count = _delete_in_batches(
            CommitStatus.objects.filter(updated_at__lt=cutoff),
            dry_run=dry_run,
            batch_size=batch_size,
        )
        checks.count = _delete_in_batches(
            _old_drift_checks(cutoff), dry_run=dry_run, batch_size=batch_size
        )
    report.parts += [webhooks, notifications, messages, statuses, checks]

    cutoff = _cutoff(now, settings.RETAIN_DEPLOYMENTS_DAYS)
    part = Pruned("deployments", "SLIPWAY_RETAIN_DEPLOYMENTS_DAYS", cutoff)
    if cutoff is not None:
        part.count = _prune_deployments(cutoff, dry_run=dry_run, batch_size=batch_size)
    report.parts.append(part)

    cutoff = _cutoff(now, settings.RETAIN_MANIFESTS_DAYS)
    part = Pruned("removed releases' manifests", "SLIPWAY_RETAIN_MANIFESTS_DAYS", cutoff)
    if cutoff is not None:
        part.count = _clear_manifests(cutoff, dry_run=dry_run, batch_size=batch_size)
    report.parts.append(part)

    part = Pruned("artefacts", "each project's artefact retention", now, one_cutoff=False)
    part.count = artefacts_prune(dry_run=dry_run, now=now).artefacts
    report.parts.append(part)
    return report


def _old_drift_checks(cutoff: datetime) -> models.QuerySet[DriftCheck]:
    """Finished drift checks older than ``cutoff``, except each server's newest conclusive
    one: the next check compares its drift with it (builds.drift_checks, notify once)."""
    newest = (
        DriftCheck.objects.filter(server_id=OuterRef("server_id"), status__in=DRIFT_CONCLUSIVE)
        .order_by("-finished_at", "-pk")
        .values("pk")[:1]
    )
    return DriftCheck.objects.filter(
        finished_at__lt=cutoff, status__in=(*DRIFT_CONCLUSIVE, DriftStatus.FAILED)
    ).exclude(pk=Subquery(newest))


def _cutoff(now: datetime, days: int) -> datetime | None:
    return now - timedelta(days=days) if days > 0 else None


def _finished_before(cutoff: datetime) -> Q:
    # A deployment cancelled before it started may have no finish time of its own.
    return Q(status__in=FINAL) & (
        Q(finished_at__lt=cutoff) | Q(finished_at__isnull=True, created_at__lt=cutoff)
    )


def _batches(queryset: models.QuerySet[Any], batch_size: int) -> Iterator[list[int]]:
    """Primary keys of ``queryset`` in ascending batches, each read afresh (rows removed by the
    previous batch are gone), until none is left."""
    while True:
        ids = list(queryset.order_by("pk").values_list("pk", flat=True)[:batch_size])
        if not ids:
            return
        yield ids


def _delete_in_batches(queryset: models.QuerySet[Any], *, dry_run: bool, batch_size: int) -> int:
    if dry_run:
        return queryset.count()
    model = queryset.model
    removed = 0
    for ids in _batches(queryset, batch_size):
        # The same filter again: a row that changed since it was read is left alone.
        _, per_model = queryset.filter(pk__in=ids).delete()
        removed += per_model.get(model._meta.label, 0)
        if len(ids) < batch_size:
            break
    return removed


def _prune_log_lines(cutoff: datetime, *, dry_run: bool, batch_size: int) -> int:
    old = Deployment.objects.filter(_finished_before(cutoff))
    if dry_run:
        return LogLine.objects.filter(deployment__in=old).count()
    with_lines = old.filter(Exists(LogLine.objects.filter(deployment=OuterRef("pk"))))
    removed = 0
    for deployment_ids in _batches(with_lines, batch_size):
        removed += _remove_logs_of(deployment_ids, batch_size=batch_size)
    return removed


def _remove_logs_of(deployment_ids: list[int], *, batch_size: int) -> int:
    removed = 0
    for deployment_id in deployment_ids:
        # One deployment's lines through the (deployment, seq) index, a batch at a time: a
        # long log is never removed in one statement.
        removed += _delete_in_batches(
            LogLine.objects.filter(deployment_id=deployment_id),
            dry_run=False,
            batch_size=batch_size,
        )
    return removed


def _prune_deployments(cutoff: datetime, *, dry_run: bool, batch_size: int) -> int:
    kept_release_made = Release.objects.filter(
        removed_at__isnull=True, deployment__isnull=False
    ).values("deployment_id")
    old = Deployment.objects.filter(_finished_before(cutoff)).exclude(pk__in=kept_release_made)
    if dry_run:
        return old.count()
    removed = 0
    for ids in _batches(old, batch_size):
        _remove_logs_of(ids, batch_size=batch_size)
        # Targets, steps and what is left of the log go with it (CASCADE); releases, rollbacks
        # and notification deliveries that point at it keep their row (SET_NULL).
        _, per_model = old.filter(pk__in=ids).delete()
        removed += per_model.get(Deployment._meta.label, 0)
        if len(ids) < batch_size:
            break
    return removed


def _clear_manifests(cutoff: datetime, *, dry_run: bool, batch_size: int) -> int:
    removed = Release.objects.filter(removed_at__lt=cutoff).exclude(manifest={})
    if dry_run:
        return removed.count()
    cleared = 0
    for ids in _batches(removed, batch_size):
        cleared += removed.filter(pk__in=ids).update(manifest={})
        if len(ids) < batch_size:
            break
    return cleared
