"""/metrics: Prometheus' text read back with prometheus_client's own parser, every figure
checked against rows the test wrote; who may read it."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from builds.metrics import DatabaseCollector
from builds.models import Kind, Status, WebhookOutcome
from builds.notifications import SEND_DELIVERY_TASK
from builds.services import RUN_DEPLOYMENT_TASK
from deployer.models import OutboxMessage
from projects.models import DeliveryStatus
from tests.support.processes import clean_env, manage

pytestmark = pytest.mark.django_db

TOKEN = "scrape-token-0123456789abcdef"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found, name: str, **labels: str) -> float:
    return found[(name, frozenset(labels.items()))]


@pytest.fixture
def token(settings):
    settings.METRICS_TOKEN = TOKEN
    return TOKEN


@pytest.fixture
def scraper(token) -> Client:
    return Client(HTTP_AUTHORIZATION=f"Bearer {token}")


@pytest.fixture
def history(deployment_at, webhook_delivery, notification_delivery):
    """A morning's work: within the last hour and before it."""
    minutes = timedelta(minutes=1)
    deployment_at(started=10 * minutes, seconds=20)
    deployment_at(started=20 * minutes, seconds=400)
    deployment_at(started=5 * minutes, seconds=3, status=Status.FAILED)
    deployment_at(started=180 * minutes, seconds=50)  # finished before the window
    deployment_at(started=30 * minutes, seconds=8, kind=Kind.PREVIEW)
    deployment_at(started=2 * minutes, status=Status.QUEUED)
    deployment_at(started=7 * minutes, status=Status.QUEUED, kind=Kind.ROLLBACK)
    deployment_at(started=1 * minutes, status=Status.QUEUED, kind=Kind.PREVIEW)
    deployment_at(started=3 * minutes, status=Status.RUNNING)
    for outcome in (WebhookOutcome.QUEUED,) * 3 + (WebhookOutcome.REJECTED,):
        webhook_delivery(received=5 * minutes, outcome=outcome)
    webhook_delivery(received=120 * minutes, outcome=WebhookOutcome.IGNORED)
    for status in DeliveryStatus.SENT, DeliveryStatus.FAILED, DeliveryStatus.RETRYING:
        notification_delivery(created=15 * minutes, status=status)
    notification_delivery(created=4 * minutes, status=DeliveryStatus.PENDING)
    notification_delivery(created=90 * minutes, status=DeliveryStatus.FAILED)


def test_it_counts_every_deployment_by_kind_and_status(history, now):
    found = samples(generate_latest(DatabaseCollector(window_seconds=3600, now=now)).decode())

    assert value(found, "slipway_deployments", kind="deploy", status="succeeded") == 3
    assert value(found, "slipway_deployments", kind="deploy", status="failed") == 1
    assert value(found, "slipway_deployments", kind="deploy", status="queued") == 1
    assert value(found, "slipway_deployments", kind="deploy", status="running") == 1
    assert value(found, "slipway_deployments", kind="rollback", status="queued") == 1
    assert value(found, "slipway_deployments", kind="preview", status="succeeded") == 1
    assert value(found, "slipway_deployments", kind="preview", status="queued") == 1
    # A state nothing is in is 0, not missing: an alert on it needs no `or vector(0)`.
    assert value(found, "slipway_deployments", kind="rollback", status="cancelled") == 0


def test_its_durations_are_those_of_the_deployments_finished_within_the_window(history, now):
    found = samples(generate_latest(DatabaseCollector(window_seconds=3600, now=now)).decode())

    def bucket(le: str, **labels: str) -> float:
        return value(found, "slipway_deployment_duration_seconds_bucket", le=le, **labels)

    succeeded = {"kind": "deploy", "status": "succeeded"}
    # 20 s and 400 s; the 50 s one finished three hours ago.
    assert bucket("10.0", **succeeded) == 0
    assert bucket("30.0", **succeeded) == 1
    assert bucket("300.0", **succeeded) == 1
    assert bucket("600.0", **succeeded) == 2
    assert bucket("+Inf", **succeeded) == 2
    assert value(found, "slipway_deployment_duration_seconds_gcount", **succeeded) == 2
    assert value(found, "slipway_deployment_duration_seconds_gsum", **succeeded) == 420
    assert bucket("5.0", kind="deploy", status="failed") == 1
    assert bucket("10.0", kind="preview", status="succeeded") == 1
    assert bucket("+Inf", kind="rollback", status="succeeded") == 0
    assert value(found, "slipway_metrics_window_seconds") == 3600

    wider = samples(generate_latest(DatabaseCollector(window_seconds=4 * 3600, now=now)).decode())
    assert value(wider, "slipway_deployment_duration_seconds_bucket", le="60.0", **succeeded) == 2


def test_its_queue_depth_is_the_work_waiting_in_the_database(history, now):
    found = samples(generate_latest(DatabaseCollector(window_seconds=3600, now=now)).decode())

    # A deployment and a rollback wait for the deployments queue, a preview for the previews
    # queue, a pending and a retrying delivery for the notifications queue.
    assert value(found, "slipway_queue_depth", queue="deployments") == 2
    assert value(found, "slipway_queue_depth", queue="previews") == 1
    assert value(found, "slipway_queue_depth", queue="notifications") == 2
    assert value(found, "slipway_queue_oldest_seconds", queue="deployments") == 7 * 60
    assert value(found, "slipway_queue_oldest_seconds", queue="previews") == 60
    assert value(found, "slipway_queue_oldest_seconds", queue="notifications") == 15 * 60


def test_it_counts_the_messages_the_broker_has_not_taken_by_queue(now):
    minutes = timedelta(minutes=1)
    for created in 3 * minutes, 1 * minutes:
        OutboxMessage.objects.create(task=RUN_DEPLOYMENT_TASK, args=[1], created_at=now - created)
    OutboxMessage.objects.create(task=SEND_DELIVERY_TASK, args=[1], created_at=now - minutes)
    OutboxMessage.objects.create(
        task=RUN_DEPLOYMENT_TASK, args=[2], created_at=now - 9 * minutes, sent_at=now - 9 * minutes
    )

    found = samples(generate_latest(DatabaseCollector(window_seconds=3600, now=now)).decode())

    assert value(found, "slipway_outbox_unsent", queue="deployments") == 2
    assert value(found, "slipway_outbox_unsent", queue="notifications") == 1
    assert value(found, "slipway_outbox_unsent", queue="housekeeping") == 0
    assert value(found, "slipway_outbox_oldest_unsent_seconds") == 180


def test_it_counts_the_deliveries_of_the_window_by_outcome(history, now):
    found = samples(generate_latest(DatabaseCollector(window_seconds=3600, now=now)).decode())

    assert value(found, "slipway_webhook_deliveries", outcome="queued") == 3
    assert value(found, "slipway_webhook_deliveries", outcome="rejected") == 1
    assert value(found, "slipway_webhook_deliveries", outcome="ignored") == 0
    assert value(found, "slipway_notification_deliveries", status="failed") == 1
    assert value(found, "slipway_notification_deliveries", status="retrying") == 1
    assert value(found, "slipway_notification_deliveries", status="sent") == 1
    assert value(found, "slipway_notification_deliveries", status="pending") == 1


def test_an_empty_database_gives_zeros(now):
    found = samples(generate_latest(DatabaseCollector(window_seconds=3600, now=now)).decode())

    assert value(found, "slipway_queue_depth", queue="deployments") == 0
    assert value(found, "slipway_queue_oldest_seconds", queue="deployments") == 0
    assert (
        value(found, "slipway_deployment_duration_seconds_gsum", kind="deploy", status="failed")
        == 0
    )


def test_a_scrape_with_the_token_reads_the_rows(scraper, history):
    response = scraper.get("/metrics")

    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    found = samples(response.content.decode())
    assert value(found, "slipway_deployments", kind="deploy", status="succeeded") == 3
    assert value(found, "slipway_queue_depth", queue="deployments") == 2
    assert value(found, "slipway_webhook_deliveries", outcome="queued") == 3


def test_prometheus_asking_for_openmetrics_gets_it(scraper, history):
    response = scraper.get("/metrics", HTTP_ACCEPT="application/openmetrics-text; version=1.0.0")

    assert response["Content-Type"].startswith("application/openmetrics-text")
    families = {family.name: family for family in openmetrics_families(response.content.decode())}
    assert families["slipway_deployment_duration_seconds"].type == "gaugehistogram"
    assert families["slipway_queue_depth"].type == "gauge"


@pytest.mark.parametrize(
    "authorization",
    ["", "Bearer wrong-token-0123456789abcdef", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer"],
)
def test_a_scrape_without_the_right_token_is_refused(token, authorization):
    response = Client(HTTP_AUTHORIZATION=authorization).get("/metrics")

    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert b"slipway_" not in response.content


def test_without_a_token_set_there_is_no_such_page_for_anybody_but_a_site_admin(
    settings, bob_client, site_admin, alice_client
):
    settings.METRICS_TOKEN = ""

    assert Client().get("/metrics").status_code == 404
    assert Client(HTTP_AUTHORIZATION="Bearer ").get("/metrics").status_code == 404
    assert bob_client.get("/metrics").status_code == 404
    response = alice_client.get("/metrics")
    assert response.status_code == 200
    assert "slipway_queue_depth" in response.content.decode()


def test_a_site_admin_reads_it_with_a_token_set_too(token, site_admin, alice_client, bob_client):
    assert alice_client.get("/metrics").status_code == 200
    assert bob_client.get("/metrics").status_code == 401


def test_a_short_token_is_refused_at_start(tmp_path):
    result = manage(
        "check",
        env=clean_env(SLIPWAY_DATA_DIR=str(tmp_path), SLIPWAY_METRICS_TOKEN="short"),
    )
    assert result.returncode != 0
    assert "SLIPWAY_METRICS_TOKEN must be at least 16 characters" in result.stderr
