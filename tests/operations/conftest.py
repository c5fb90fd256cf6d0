"""Rows as the runner, the webhook view and the notification hook leave them, written straight
to the database with the times a test needs (metrics and retention read only rows)."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from django.utils import timezone

from builds.models import (
    Deployment,
    DeploymentTarget,
    Kind,
    LogLine,
    Status,
    TargetStatus,
    WebhookDelivery,
    WebhookOutcome,
    WebhookProvider,
)
from projects.models import DeliveryStatus, Notification, NotificationDelivery, NotificationKind
from projects.services import project_create
from servers.models import Release, Server


@pytest.fixture
def now() -> datetime:
    """The tests' "now": every row's time is counted back from it."""
    return timezone.now()


@pytest.fixture
def shop(alice):
    return project_create(
        owner=alice, name="Shop", repository_url="https://git.example.com/acme/shop.git"
    )


@pytest.fixture
def web1(shop):
    return Server.objects.create(
        project=shop,
        name="web1",
        hostname="web1.example.com",
        username="deploy",
        deploy_path="/srv/web1",
        host_key_fingerprint="SHA256:" + "w" * 43,
    )


@pytest.fixture
def deployment_at(shop, web1, now):
    """A deployment of ``shop`` created and started ``started`` before ``now``, that took
    ``seconds``, with ``lines`` log lines. A finished one has a target on web1; an active one
    has no finish time and no target (web1 may have one queued and one running at most)."""

    def make(
        *,
        started: timedelta,
        seconds: float = 10,
        status: str = Status.SUCCEEDED,
        kind: str = Kind.DEPLOY,
        lines: int = 0,
    ) -> Deployment:
        start = now - started
        active = status in (Status.QUEUED, Status.RUNNING)
        deployment = Deployment.objects.create(
            project=shop,
            kind=kind,
            status=status,
            created_at=start,
            started_at=None if status == Status.QUEUED else start,
            finished_at=None if active else start + timedelta(seconds=seconds),
        )
        if not active:
            DeploymentTarget.objects.create(
                deployment=deployment, server=web1, status=TargetStatus.SUCCEEDED
            )
        LogLine.objects.bulk_create(
            LogLine(deployment=deployment, seq=seq, text=f"line {seq}", time=start)
            for seq in range(1, lines + 1)
        )
        return deployment

    return make


@pytest.fixture
def release_of(web1, now):
    def make(deployment, name, *, live=False, removed: timedelta | None = None) -> Release:
        return Release.objects.create(
            server=web1,
            name=name,
            revision="a" * 40,
            deployment=deployment,
            manifest={"index.html": [12, "644", "d" * 64, "file"]},
            live=live,
            removed_at=now - removed if removed is not None else None,
        )

    return make


@pytest.fixture
def webhook_delivery(shop, now):
    def make(*, received: timedelta, outcome: str = WebhookOutcome.QUEUED) -> WebhookDelivery:
        return WebhookDelivery.objects.create(
            project=shop,
            provider=WebhookProvider.GITHUB,
            event="push",
            outcome=outcome,
            received_at=now - received,
        )

    return make


@pytest.fixture
def notification(shop):
    return Notification.objects.create(
        project=shop, kind=NotificationKind.WEBHOOK, url="https://hooks.example.com/slipway"
    )


@pytest.fixture
def notification_delivery(notification, now):
    def make(
        *, created: timedelta, status: str = DeliveryStatus.SENT, deployment=None
    ) -> NotificationDelivery:
        return NotificationDelivery.objects.create(
            notification=notification,
            deployment=deployment,
            event="succeeded",
            status=status,
            created_at=now - created,
        )

    return make
