"""Each delivery is claimed before it is sent, retried with back-off, and sent at most once per
attempt whatever the broker does."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from builds.notifications import (
    MAX_ATTEMPTS,
    RETRY_DELAYS,
    deployment_event,
    notification_create,
    resend_due,
)
from builds.tasks import send_notification_delivery
from projects.models import DeliveryStatus, NotificationDelivery

pytestmark = pytest.mark.django_db

SECRET = "whsec-3f9a8b7c6d5e4f3a2b1c"


@pytest.fixture
def delivery(allow_private, receiver, shop, web1, make_deployment, alice):
    notification_create(
        project=shop, actor=alice, kind="webhook", url=receiver.url(), secret=SECRET
    )
    [recorded] = deployment_event(make_deployment(shop, [web1]), "succeeded")
    return recorded


def send(delivery):
    send_notification_delivery.apply(args=(delivery.pk,), throw=True)
    delivery.refresh_from_db()
    return delivery


def test_it_retries_after_a_500_and_ends_sent(delivery, receiver, make_due):
    receiver.answer(500, 200)

    before = timezone.now()
    delivery = send(delivery)
    assert delivery.status == DeliveryStatus.RETRYING
    assert delivery.attempts == 1 and delivery.status_code == 500
    assert delivery.error.endswith("answered HTTP 500")
    wait = delivery.next_attempt_at - before
    assert timedelta(seconds=RETRY_DELAYS[0]) <= wait < timedelta(seconds=RETRY_DELAYS[0] + 5)

    # The retry's time has not come: running the task early sends nothing.
    delivery = send(delivery)
    assert delivery.attempts == 1 and len(receiver.requests) == 1

    make_due(delivery)
    delivery = send(delivery)
    assert delivery.status == DeliveryStatus.SENT
    assert delivery.attempts == 2 and delivery.status_code == 200
    assert delivery.error == "" and delivery.next_attempt_at is None
    first, second = receiver.requests
    # A retry is the same message: same bytes, same signature, same delivery id.
    assert first.body == second.body
    assert first.headers["x-slipway-signature"] == second.headers["x-slipway-signature"]
    assert first.headers["x-slipway-delivery"] == second.headers["x-slipway-delivery"]


def test_it_gives_up_after_the_last_attempt(delivery, receiver, make_due):
    receiver.answer(always=503)
    for attempt, delay in enumerate(RETRY_DELAYS, start=1):
        before = timezone.now()
        delivery = send(delivery)
        assert delivery.status == DeliveryStatus.RETRYING and delivery.attempts == attempt
        assert timedelta(seconds=delay) <= delivery.next_attempt_at - before
        assert delivery.next_attempt_at - before < timedelta(seconds=delay + 5)
        make_due(delivery)

    delivery = send(delivery)
    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.attempts == MAX_ATTEMPTS == 5
    assert delivery.status_code == 503 and delivery.next_attempt_at is None
    assert len(receiver.requests) == MAX_ATTEMPTS

    make_due(delivery)
    assert send(delivery).attempts == MAX_ATTEMPTS
    assert len(receiver.requests) == MAX_ATTEMPTS


def test_it_gives_up_at_once_on_an_answer_that_retrying_cannot_change(delivery, receiver):
    receiver.answer(404)
    delivery = send(delivery)
    assert delivery.status == DeliveryStatus.FAILED and delivery.attempts == 1
    assert delivery.status_code == 404


def test_it_retries_a_receiver_that_asks_to_slow_down(delivery, receiver):
    receiver.answer(429)
    assert send(delivery).status == DeliveryStatus.RETRYING


def test_it_does_nothing_for_a_redelivered_message_of_a_sent_delivery(delivery, receiver):
    assert send(delivery).status == DeliveryStatus.SENT
    delivery = send(delivery)
    delivery = send(delivery)
    assert delivery.status == DeliveryStatus.SENT and delivery.attempts == 1
    assert len(receiver.requests) == 1


def test_it_does_nothing_while_another_worker_is_sending_it(delivery, receiver):
    NotificationDelivery.objects.filter(pk=delivery.pk).update(
        status=DeliveryStatus.SENDING,
        attempts=1,
        next_attempt_at=timezone.now() + timedelta(minutes=5),
    )
    delivery = send(delivery)
    assert delivery.status == DeliveryStatus.SENDING and delivery.attempts == 1
    assert receiver.requests == []


def test_it_retries_when_the_receiver_does_not_answer(
    allow_private, shop, web1, make_deployment, alice
):
    from tests.support.processes import free_port

    # Nothing listens on this port: the connection is refused.
    notification_create(
        project=shop,
        actor=alice,
        kind="slack",
        url=f"http://127.0.0.1:{free_port()}/services/T1/B2/secret",
    )
    [delivery] = deployment_event(make_deployment(shop, [web1]), "failed")
    delivery = send(delivery)
    assert delivery.status == DeliveryStatus.RETRYING and delivery.status_code is None
    assert "Connection refused" in delivery.error
    assert "secret" not in delivery.error


class TestTheSafetyNet:
    def test_it_sends_a_delivery_whose_message_was_lost(self, delivery, receiver, make_due):
        # Recorded, but the in-memory broker was restarted before the task ran.
        assert resend_due() == 0, "a fresh delivery is left to its own message"
        make_due(delivery)
        assert resend_due() == 1
        delivery.refresh_from_db()
        assert delivery.status == DeliveryStatus.SENT and delivery.attempts == 1
        assert len(receiver.requests) == 1
        assert resend_due() == 0

    def test_it_sends_a_retry_whose_message_was_lost(self, delivery, receiver, make_due):
        receiver.answer(500)
        send(delivery)
        assert resend_due() == 0, "not due yet"
        make_due(delivery)
        assert resend_due() == 1
        delivery.refresh_from_db()
        assert delivery.status == DeliveryStatus.SENT and delivery.attempts == 2

    def test_it_takes_over_a_claim_whose_worker_died(self, delivery, receiver):
        NotificationDelivery.objects.filter(pk=delivery.pk).update(
            status=DeliveryStatus.SENDING,
            attempts=1,
            next_attempt_at=timezone.now() - timedelta(minutes=5),
        )
        assert resend_due() == 1
        delivery.refresh_from_db()
        assert delivery.status == DeliveryStatus.SENT and delivery.attempts == 2

    def test_it_fails_a_last_attempt_whose_worker_died(self, delivery, receiver):
        NotificationDelivery.objects.filter(pk=delivery.pk).update(
            status=DeliveryStatus.SENDING,
            attempts=MAX_ATTEMPTS,
            next_attempt_at=timezone.now() - timedelta(minutes=5),
        )
        assert resend_due() == 0
        delivery.refresh_from_db()
        assert delivery.status == DeliveryStatus.FAILED
        assert "stopped before it finished" in delivery.error
        assert receiver.requests == []

    def test_it_leaves_finished_deliveries_alone(self, delivery, receiver, make_due):
        send(delivery)
        make_due(delivery)
        assert resend_due() == 0
        assert len(receiver.requests) == 1
