"""The outbox sends what a transaction recorded once it commits: several messages at once,
each once, with the broker's run recorded."""

from __future__ import annotations

import pytest
from django.db import transaction

from deployer import outbox
from deployer.models import OutboxMessage

pytestmark = pytest.mark.django_db(transaction=True)

# A worker that takes these messages finds no such delivery and does nothing.
TASK = "builds.tasks.process_webhook_delivery"
NO_DELIVERY = 10**12


def test_messages_recorded_together_are_all_sent_after_the_commit():
    with transaction.atomic():
        recorded = [outbox.enqueue(TASK, NO_DELIVERY + n) for n in range(3)]
        assert not OutboxMessage.objects.filter(sent_at__isnull=False).exists()

    messages = OutboxMessage.objects.order_by("pk")
    assert [message.pk for message in messages] == [message.pk for message in recorded if message]
    assert all(message.sent_at is not None for message in messages)
    assert [message.attempts for message in messages] == [1, 1, 1]


def test_a_message_sent_already_is_not_sent_again():
    message = outbox.enqueue(TASK, NO_DELIVERY)
    assert message is not None

    assert outbox.send([message.pk, message.pk]) == 0
    assert OutboxMessage.objects.get().attempts == 1


def test_sending_a_batch_sends_each_waiting_message_once():
    ids = [
        OutboxMessage.objects.create(task=TASK, args=[NO_DELIVERY + n]).pk
        for n in range(outbox.SEND_BATCH + 5)
    ]

    assert outbox.send(ids) == len(ids)
    assert outbox.send(ids) == 0
    assert set(OutboxMessage.objects.values_list("attempts", flat=True)) == {1}
