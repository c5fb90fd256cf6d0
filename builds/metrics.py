"""Prometheus metrics, read from the database at scrape time (docs/operations.md).

Nothing is counted in a process: any web process answers a scrape with the same figures,
whatever process or worker did the work, and a restart loses nothing. Everything is a gauge
(or a gauge histogram) over rows: either all stored rows in a state, or the rows of the last
SLIPWAY_METRICS_WINDOW seconds. Counters would go backwards whenever retention prunes rows
(builds.retention), which Prometheus would read as a reset.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, DurationField, ExpressionWrapper, F, Min, Q, Sum
from django.utils import timezone
from prometheus_client.metrics_core import GaugeHistogramMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from builds.models import FINAL, Deployment, Kind, Status, WebhookDelivery, WebhookOutcome
from builds.notifications import SEND_DELIVERY_TASK
from builds.services import RUN_DEPLOYMENT_TASK, RUN_PREVIEW_TASK
from deployer.celery import app
from deployer.models import OutboxMessage
from projects.models import DELIVERY_OPEN, DeliveryStatus, NotificationDelivery

# Upper bounds (seconds) of the duration buckets: from a config-only push to the hour-long
# deployment that SLIPWAY_DEPLOYMENT_TIME_LIMIT allows by default.
DURATION_BUCKETS = (5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600)
# As prometheus-client writes bounds: "5.0".
BUCKET_LABELS = tuple(repr(float(bound)) for bound in DURATION_BUCKETS)

# Every queue a worker may be asked to consume (deployer/settings.py, CELERY_TASK_QUEUES).
TASK_QUEUES = tuple(queue.name for queue in settings.CELERY_TASK_QUEUES)


class DatabaseCollector(Collector):
    """Collects Slipway's metrics with a handful of aggregate queries, at each scrape.

    ``window_seconds``: how far back the recent metrics look. ``now``: the time of the scrape
    (tests pass one). Raises django.db.DatabaseError when the database does not answer.
    """

    def __init__(self, *, window_seconds: int, now: datetime | None = None) -> None:
        self.window_seconds = window_seconds
        self.now = now

    def collect(self) -> Iterator[Metric]:
        now = self.now or timezone.now()
        since = now - timedelta(seconds=self.window_seconds)
        yield _deployments_by_status()
        yield _durations(since)
        yield from _queues(now)
        yield from _outbox(now)
        yield _webhook_deliveries(since)
        yield _notification_deliveries(since)
        window = GaugeMetricFamily(
            "slipway_metrics_window_seconds",
            "How far back the recent metrics (durations, deliveries) look",
        )
        window.add_metric([], self.window_seconds)
        yield window


def _deployments_by_status() -> Metric:
    metric = GaugeMetricFamily(
        "slipway_deployments",
        "Deployments stored in each status (finished ones fall when retention prunes them)",
        labels=["kind", "status"],
    )
    counts = {
        (row["kind"], row["status"]): row["n"]
        for row in Deployment.objects.order_by().values("kind", "status").annotate(n=Count("id"))
    }
    for kind in Kind.values:
        for status in Status.values:
            metric.add_metric([kind, status], counts.get((kind, status), 0))
    return metric


def _durations(since: datetime) -> Metric:
    """Start to finish of the deployments that finished since ``since``, by kind and status."""
    metric = GaugeHistogramMetricFamily(
        "slipway_deployment_duration_seconds",
        "Start to finish of the deployments that finished within the window",
        labels=["kind", "status"],
    )
    duration = ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField())
    buckets = {
        f"le_{bound}": Count("id", filter=Q(duration__lte=timedelta(seconds=bound)))
        for bound in DURATION_BUCKETS
    }
    rows = (
        Deployment.objects.filter(
            status__in=FINAL, finished_at__gte=since, started_at__isnull=False
        )
        .annotate(duration=duration)
        .order_by()
        .values("kind", "status")
        .annotate(total=Count("id"), seconds=Sum("duration"), **buckets)
    )
    found: dict[tuple[str, str], dict[str, Any]] = {
        (row["kind"], row["status"]): dict(row) for row in rows
    }
    for kind in Kind.values:
        for status in (final.value for final in FINAL):
            row = found.get((kind, status))
            total = row["total"] if row else 0
            seconds = row["seconds"] if row else None
            metric.add_metric(
                [kind, status],
                [
                    *(
                        (label, row[f"le_{bound}"] if row else 0)
                        for bound, label in zip(DURATION_BUCKETS, BUCKET_LABELS, strict=True)
                    ),
                    ("+Inf", total),
                ],
                gsum_value=_seconds(seconds),
            )
    return metric


def _seconds(value: timedelta | float | None) -> float:
    if value is None:
        return 0.0
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value) / 1_000_000  # SQLite sums durations as microseconds


def _queues(now: datetime) -> Iterator[Metric]:
    depth = GaugeMetricFamily(
        "slipway_queue_depth",
        "Work waiting in the database for each Celery queue: queued deployments, and "
        "notification deliveries not yet sent or given up",
        labels=["queue"],
    )
    oldest = GaugeMetricFamily(
        "slipway_queue_oldest_seconds",
        "Age of the oldest work waiting for each queue (0 when none waits)",
        labels=["queue"],
    )
    waiting: dict[str, tuple[int, datetime | None]] = {
        _queue_of(task): (0, None) for task in (RUN_DEPLOYMENT_TASK, RUN_PREVIEW_TASK)
    }
    rows = (
        Deployment.objects.filter(status=Status.QUEUED)
        .order_by()
        .values("kind")
        .annotate(n=Count("id"), first=Min("created_at"))
    )
    for row in rows:
        task = RUN_PREVIEW_TASK if row["kind"] == Kind.PREVIEW else RUN_DEPLOYMENT_TASK
        queue = _queue_of(task)
        count, first = waiting.get(queue, (0, None))
        starts = [moment for moment in (first, row["first"]) if moment is not None]
        waiting[queue] = (count + row["n"], min(starts) if starts else None)
    open_deliveries = NotificationDelivery.objects.filter(status__in=DELIVERY_OPEN).aggregate(
        n=Count("id"), first=Min("created_at")
    )
    waiting[_queue_of(SEND_DELIVERY_TASK)] = (open_deliveries["n"], open_deliveries["first"])
    for queue, (count, first) in waiting.items():
        depth.add_metric([queue], count)
        oldest.add_metric([queue], max((now - first).total_seconds(), 0.0) if first else 0.0)
    yield depth
    yield oldest


def _outbox(now: datetime) -> Iterator[Metric]:
    """Messages recorded but not yet taken by the broker (deployer.outbox), per the queue
    their task is routed to: more than a few, for long, means the broker is away."""
    unsent = GaugeMetricFamily(
        "slipway_outbox_unsent",
        "Task messages recorded but not yet taken by the broker, by the queue they go to",
        labels=["queue"],
    )
    oldest = GaugeMetricFamily(
        "slipway_outbox_oldest_unsent_seconds",
        "Age of the oldest message the broker has not taken yet (0 when none waits)",
    )
    per_queue: dict[str, int] = {}
    rows = (
        OutboxMessage.objects.filter(sent_at__isnull=True)
        .order_by()
        .values("task")
        .annotate(n=Count("id"), first=Min("created_at"))
    )
    first_of_all: datetime | None = None
    for row in rows:
        queue = _queue_of(row["task"])
        per_queue[queue] = per_queue.get(queue, 0) + row["n"]
        if first_of_all is None or row["first"] < first_of_all:
            first_of_all = row["first"]
    for queue in sorted({*TASK_QUEUES, *per_queue}):
        unsent.add_metric([queue], per_queue.get(queue, 0))
    oldest.add_metric([], max((now - first_of_all).total_seconds(), 0.0) if first_of_all else 0.0)
    yield unsent
    yield oldest


def _queue_of(task: str) -> str:
    """The queue deployer/settings.py's CELERY_TASK_ROUTES sends ``task`` to."""
    return str(app.amqp.router.route({}, task)["queue"].name)


def _webhook_deliveries(since: datetime) -> Metric:
    metric = GaugeMetricFamily(
        "slipway_webhook_deliveries",
        "Webhook deliveries received within the window, by what Slipway did with them",
        labels=["outcome"],
    )
    counts = dict(
        WebhookDelivery.objects.filter(received_at__gte=since)
        .order_by()
        .values_list("outcome")
        .annotate(n=Count("id"))
    )
    for outcome in sorted({*WebhookOutcome.values, *counts}):
        metric.add_metric([outcome], counts.get(outcome, 0))
    return metric


def _notification_deliveries(since: datetime) -> Metric:
    metric = GaugeMetricFamily(
        "slipway_notification_deliveries",
        "Notification deliveries made within the window, by status: `failed` gave up after "
        "its last attempt, `retrying` failed and waits for another",
        labels=["status"],
    )
    counts = dict(
        NotificationDelivery.objects.filter(created_at__gte=since)
        .order_by()
        .values_list("status")
        .annotate(n=Count("id"))
    )
    for status in sorted({*DeliveryStatus.values, *counts}):
        metric.add_metric([status], counts.get(status, 0))
    return metric
