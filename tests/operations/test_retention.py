"""Retention: what is old enough goes, in batches; what a server still needs, and anything
active, stays. Run in both modes (SQLite in `make test` without DATABASE_URL, PostgreSQL in CI)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.urls import reverse

from builds.models import Deployment, DeploymentTarget, LogLine, Status, WebhookDelivery
from builds.retention import records_prune
from builds.tasks import prune_old_records
from deployer.embedded import PRUNE_INTERVAL_SECONDS, periodic_round
from deployer.models import OutboxMessage
from projects.models import DeliveryStatus, NotificationDelivery
from servers.models import Release

pytestmark = pytest.mark.django_db

DAY = timedelta(days=1)


@pytest.fixture(autouse=True)
def retention(settings):
    settings.RETAIN_LOG_DAYS = 90
    settings.RETAIN_DELIVERIES_DAYS = 30
    settings.RETAIN_DEPLOYMENTS_DAYS = 365
    settings.RETAIN_MANIFESTS_DAYS = 30
    return settings


def test_it_removes_the_log_of_deployments_finished_before_the_cutoff(deployment_at, now):
    old = deployment_at(started=91 * DAY, lines=7)
    recent = deployment_at(started=89 * DAY, lines=3)
    running = deployment_at(started=200 * DAY, status=Status.RUNNING, lines=4)

    report = records_prune(now=now, batch_size=2)

    assert report.count("log lines") == 7
    assert not LogLine.objects.filter(deployment=old).exists()
    assert LogLine.objects.filter(deployment=recent).count() == 3
    assert LogLine.objects.filter(deployment=running).count() == 4
    # The deployment itself stays, for another 274 days.
    assert Deployment.objects.filter(pk=old.pk).exists()


def test_the_deployment_page_says_its_log_was_removed(deployment_at, alice_client, now):
    old = deployment_at(started=91 * DAY, lines=3)
    Deployment.objects.filter(pk=old.pk).update(log_seq=3)
    page = reverse("deployment-detail", args=[old.project.slug, old.pk])
    assert 'id="log-removed"' not in alice_client.get(page).content.decode()

    records_prune(now=now)

    assert "log was removed" in alice_client.get(page).content.decode()


def test_it_removes_old_webhook_and_finished_notification_deliveries(
    webhook_delivery, notification_delivery, now
):
    old = webhook_delivery(received=31 * DAY)
    recent = webhook_delivery(received=29 * DAY)
    sent = notification_delivery(created=31 * DAY, status=DeliveryStatus.SENT)
    failed = notification_delivery(created=40 * DAY, status=DeliveryStatus.FAILED)
    # Still to be sent, however old: its message was lost and the safety net will send it.
    pending = notification_delivery(created=60 * DAY, status=DeliveryStatus.PENDING)

    report = records_prune(now=now, batch_size=1)

    assert report.count("webhook deliveries") == 1
    assert report.count("notification deliveries") == 2
    assert list(WebhookDelivery.objects.all()) == [recent]
    assert not WebhookDelivery.objects.filter(pk=old.pk).exists()
    assert list(NotificationDelivery.objects.all()) == [pending]
    assert not NotificationDelivery.objects.filter(pk__in=[sent.pk, failed.pk]).exists()


def test_it_removes_task_messages_sent_before_the_cutoff_and_keeps_unsent_ones(now):
    sent_long_ago = OutboxMessage.objects.create(
        task="builds.tasks.run_deployment", args=[1], created_at=now - 31 * DAY
    )
    OutboxMessage.objects.filter(pk=sent_long_ago.pk).update(sent_at=now - 31 * DAY)
    sent_lately = OutboxMessage.objects.create(
        task="builds.tasks.run_deployment", args=[2], sent_at=now - 29 * DAY
    )
    never_sent = OutboxMessage.objects.create(
        task="builds.tasks.run_deployment", args=[3], created_at=now - 60 * DAY
    )

    report = records_prune(now=now)

    assert report.count("sent task messages") == 1
    assert set(OutboxMessage.objects.all()) == {sent_lately, never_sent}


def test_it_removes_old_deployments_but_never_one_a_kept_release_was_made_by(
    deployment_at, release_of, webhook_delivery, notification_delivery, now
):
    old = [deployment_at(started=400 * DAY, lines=5) for _ in range(3)]
    made_live = deployment_at(started=500 * DAY, lines=2)
    made_kept = deployment_at(started=450 * DAY)
    made_removed = deployment_at(started=420 * DAY)
    release_of(made_live, "20250101-live", live=True)
    release_of(made_kept, "20250201-kept")
    removed_release = release_of(made_removed, "20250301-removed", removed=10 * DAY)
    failed_old = deployment_at(started=366 * DAY, status=Status.FAILED)
    young = deployment_at(started=300 * DAY)
    stuck = deployment_at(started=600 * DAY, status=Status.RUNNING)
    waiting = deployment_at(started=700 * DAY, status=Status.QUEUED)
    delivery = webhook_delivery(received=DAY)
    delivery.deployments.add(old[0])
    message = notification_delivery(created=DAY, deployment=old[1])

    report = records_prune(now=now, batch_size=2)

    assert report.count("deployments") == 5
    assert set(Deployment.objects.all()) == {made_live, made_kept, young, stuck, waiting}
    assert not DeploymentTarget.objects.filter(deployment_id__in=[d.pk for d in old]).exists()
    assert not LogLine.objects.filter(deployment_id__in=[d.pk for d in old]).exists()
    assert not Deployment.objects.filter(pk=failed_old.pk).exists()
    # What pointed at a removed deployment stays, pointing at nothing.
    removed_release.refresh_from_db()
    assert removed_release.deployment is None
    assert list(delivery.deployments.all()) == []
    message.refresh_from_db()
    assert message.deployment is None


def test_it_empties_the_manifests_of_releases_removed_before_the_cutoff(
    deployment_at, release_of, now
):
    made = deployment_at(started=40 * DAY)
    long_gone = release_of(made, "20251001-a", removed=31 * DAY)
    just_gone = release_of(made, "20251002-b", removed=29 * DAY)
    live = release_of(made, "20251003-c", live=True)

    report = records_prune(now=now)

    assert report.count("removed releases' manifests") == 1
    long_gone.refresh_from_db()
    just_gone.refresh_from_db()
    live.refresh_from_db()
    assert long_gone.manifest == {}
    # The row stays: the server's page still lists it among the removed ones.
    assert long_gone.name == "20251001-a"
    assert just_gone.manifest != {}
    assert live.manifest != {}
    assert records_prune(now=now).count("removed releases' manifests") == 0


def test_zero_keeps_everything(retention, deployment_at, webhook_delivery, release_of, now):
    retention.RETAIN_LOG_DAYS = 0
    retention.RETAIN_DELIVERIES_DAYS = 0
    retention.RETAIN_DEPLOYMENTS_DAYS = 0
    retention.RETAIN_MANIFESTS_DAYS = 0
    old = deployment_at(started=3000 * DAY, lines=2)
    release_of(old, "20180101-a", removed=2000 * DAY)
    webhook_delivery(received=3000 * DAY)

    report = records_prune(now=now)

    assert report.as_dict() == dict.fromkeys(report.as_dict(), 0)
    assert LogLine.objects.count() == 2
    assert Deployment.objects.count() == WebhookDelivery.objects.count() == 1
    assert Release.objects.get().manifest != {}
    assert "log lines: kept forever (SLIPWAY_RETAIN_LOG_DAYS=0)" in report.lines()


def test_the_dry_run_prints_what_it_would_remove_and_removes_nothing(
    deployment_at, webhook_delivery, capsys
):
    deployment_at(started=400 * DAY, lines=4)
    deployment_at(started=100 * DAY, lines=6)
    webhook_delivery(received=31 * DAY)

    call_command("prune", "--dry-run")

    out = capsys.readouterr().out
    assert "log lines: would remove 10 older than" in out
    assert "webhook deliveries: would remove 1 older than" in out
    assert "deployments: would remove 1 older than" in out
    assert "(SLIPWAY_RETAIN_DEPLOYMENTS_DAYS)" in out
    assert LogLine.objects.count() == 10
    assert Deployment.objects.count() == 2
    assert WebhookDelivery.objects.count() == 1


def test_the_command_removes_and_says_how_much(deployment_at, capsys):
    deployment_at(started=100 * DAY, lines=6)

    call_command("prune")

    assert "log lines: removed 6 older than" in capsys.readouterr().out
    assert LogLine.objects.count() == 0


def test_beat_runs_the_task_that_prunes(settings, deployment_at, webhook_delivery):
    assert settings.CELERY_BEAT_SCHEDULE["prune-old-records"]["task"] == prune_old_records.name
    deployment_at(started=400 * DAY, lines=1)
    webhook_delivery(received=31 * DAY)

    counts = prune_old_records.apply().get()

    assert counts["deployments"] == 1
    assert counts["webhook deliveries"] == 1
    assert Deployment.objects.count() == WebhookDelivery.objects.count() == 0


def test_the_embedded_loop_prunes_once_an_hour(deployment_at, webhook_delivery):
    webhook_delivery(received=31 * DAY)

    next_prune = periodic_round(1000.0, next_prune=0.0)

    assert next_prune == 1000.0 + PRUNE_INTERVAL_SECONDS
    assert WebhookDelivery.objects.count() == 0
    webhook_delivery(received=31 * DAY)
    assert periodic_round(1030.0, next_prune=next_prune) == next_prune
    assert WebhookDelivery.objects.count() == 1
    periodic_round(next_prune, next_prune=next_prune)
    assert WebhookDelivery.objects.count() == 0
