"""A notification that fails, or whose URL is refused, changes nothing about the deployment
it reports on: recording happens in a savepoint, sending in another task, after the commit."""

from __future__ import annotations

import logging

import pytest
from django.db import transaction

from builds.models import Deployment, Status
from builds.notifications import MAX_ATTEMPTS, deployment_event, notification_create
from builds.services import deployment_finish
from builds.tasks import send_notification_delivery
from projects.models import DeliveryStatus, NotificationDelivery

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "whsec-3f9a8b7c6d5e4f3a2b1c"


def test_it_finishes_a_deployment_whatever_its_notifications_do(
    settings, receiver_factory, shop, web1, make_deployment, make_due, alice
):
    failing, refused = receiver_factory(), receiver_factory()
    failing.answer(always=500)
    settings.ALLOW_PRIVATE_NOTIFICATION_TARGETS = True
    notification_create(project=shop, actor=alice, kind="webhook", url=failing.url(), secret=SECRET)
    notification_create(project=shop, actor=alice, kind="slack", url=refused.url())
    deployment = make_deployment(shop, [web1], status=Status.RUNNING, target_status="running")

    # Finishing the deployment records its notifications (builds.services calls the hook).
    with transaction.atomic():
        deployment_finish(deployment, status=Status.FAILED, error="npm ci exited with 1")
    deliveries = list(NotificationDelivery.objects.filter(deployment=deployment, event="failed"))
    assert len(deliveries) == 2
    assert deployment_event(deployment, "failed") == [], "the same event is recorded once"

    to_webhook, to_slack = sorted(deliveries, key=lambda d: d.receiver.kind != "webhook")
    for _attempt in range(MAX_ATTEMPTS):
        send_notification_delivery.apply(args=(to_webhook.pk,), throw=True)
        make_due(to_webhook)
    settings.ALLOW_PRIVATE_NOTIFICATION_TARGETS = False  # now the slack URL is refused
    send_notification_delivery.apply(args=(to_slack.pk,), throw=True)

    outcomes = dict(NotificationDelivery.objects.values_list("notification__kind", "status"))
    assert outcomes == {"webhook": DeliveryStatus.FAILED, "slack": DeliveryStatus.FAILED}
    assert len(failing.requests) == MAX_ATTEMPTS and refused.requests == []
    deployment = Deployment.objects.get(pk=deployment.pk)
    assert deployment.status == Status.FAILED
    assert deployment.error == "npm ci exited with 1"
    assert deployment.targets.get().status == "failed"


def test_it_returns_nothing_rather_than_raise_into_the_deployment(
    allow_private, receiver, shop, web1, make_deployment, alice, caplog
):
    notification_create(
        project=shop, actor=alice, kind="webhook", url=receiver.url(), secret=SECRET
    )
    deployment = make_deployment(shop, [web1])
    with caplog.at_level(logging.ERROR, logger="builds.notifications"), transaction.atomic():
        assert deployment_event(deployment, "exploded") == []
        # The caller's transaction goes on.
        Deployment.objects.filter(pk=deployment.pk).update(stage="after the hook")
    assert "Recording the 'exploded' notifications" in caplog.text
    assert Deployment.objects.get(pk=deployment.pk).stage == "after the hook"
    assert not NotificationDelivery.objects.exists()
