"""Scaled out: the hook's task message reaches a separate `celery -A deployer worker`, which
sends the notification. (The other tests run the task in-process; this one proves the path
through the broker.)"""

from __future__ import annotations

import time

import pytest

from builds.notifications import deployment_event, notification_create
from projects.models import DeliveryStatus
from tests.support.processes import start_celery_worker, stop

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def notification_worker(tmp_path):
    # The receiver is on loopback, as an on-premise chat server would be on the LAN.
    process = start_celery_worker(
        tmp_path / "worker-data", name="notifier", SLIPWAY_ALLOW_PRIVATE_NOTIFICATION_TARGETS="true"
    )
    yield process
    print(stop(process))


def test_it_sends_through_the_broker_once_the_deployment_commits(
    notification_worker, allow_private, receiver, shop, web1, make_deployment, alice
):
    notification_create(project=shop, actor=alice, kind="discord", url=receiver.url())
    [delivery] = deployment_event(make_deployment(shop, [web1]), "succeeded")

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        delivery.refresh_from_db()
        if delivery.status == DeliveryStatus.SENT:
            break
        assert notification_worker.poll() is None, "the worker exited"
        time.sleep(0.2)
    assert delivery.status == DeliveryStatus.SENT, delivery.error
    assert len(receiver.requests) == 1
