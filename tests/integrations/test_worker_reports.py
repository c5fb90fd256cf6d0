"""Scaled out: an integration's report goes through the broker to a separate
`celery -A deployer worker`, which sends the start and then the finish, in order (the other
tests make attempts in-process; this one proves the path through the broker)."""

from __future__ import annotations

import time

import pytest
from django.db import transaction
from django.utils import timezone

from builds.integrations import integration_create
from builds.models import Deployment, DeploymentTarget, Status, TargetStatus
from builds.notifications import deployment_event, revision_resolved
from projects.models import DeliveryStatus, NotificationDelivery
from projects.services import project_create
from servers.models import Server
from tests.integrations.conftest import TOKENS
from tests.support.processes import start_celery_worker, stop

pytestmark = pytest.mark.django_db(transaction=True)

SHA = "c3" * 20


@pytest.fixture
def reporting_worker(tmp_path):
    # The emulator is on loopback, as an on-premise Gitea would be on the LAN.
    process = start_celery_worker(
        tmp_path / "worker-data", name="reporter", SLIPWAY_ALLOW_PRIVATE_NOTIFICATION_TARGETS="true"
    )
    yield process
    print(stop(process))


def test_a_worker_reports_the_start_then_the_finish(reporting_worker, providers, alice):
    shop = project_create(
        owner=alice, name="Shop", repository_url="https://git.example.com/acme/shop.git"
    )
    web1 = Server.objects.create(
        project=shop, name="web1", hostname="web1.example.com", username="u", deploy_path="/srv"
    )
    integration_create(
        project=shop,
        actor=alice,
        kind="gitea",
        base_url=providers.base_url("gitea"),
        repository="acme/shop",
        token=TOKENS["gitea"],
    )
    deployment = Deployment.objects.create(
        project=shop, status=Status.RUNNING, branch="main", started_at=timezone.now()
    )
    DeploymentTarget.objects.create(deployment=deployment, server=web1, status=TargetStatus.RUNNING)
    with transaction.atomic():
        revision_resolved(deployment, SHA)
    Deployment.objects.filter(pk=deployment.pk).update(status=Status.SUCCEEDED)
    with transaction.atomic():
        deployment_event(deployment, "succeeded")

    deadline = time.monotonic() + 60
    deliveries = NotificationDelivery.objects.filter(integration__isnull=False)
    while time.monotonic() < deadline:
        if set(deliveries.values_list("status", flat=True)) == {DeliveryStatus.SENT}:
            break
        assert reporting_worker.poll() is None, "the worker exited"
        time.sleep(0.2)
    assert list(deliveries.order_by("id").values_list("event", "status")) == [
        ("started", DeliveryStatus.SENT),
        ("succeeded", DeliveryStatus.SENT),
    ]
    assert [c.body["state"] for c in providers.of("gitea")] == ["pending", "success"]
    assert providers.refusals == []
