"""deployer.outbox, in both modes (the embedded mode's in-memory broker, PostgreSQL and Redis
when DATABASE_URL and REDIS_URL are set): a message is a row first, sent once its transaction
commits, at most one waiting per key, each sent once however many senders run, and marked
consumed by the task it started. (Redis away and restarted: tests/foundation/test_redis_away.py.)
"""

from __future__ import annotations

import threading

import pytest
from django.conf import settings
from django.db import connection, transaction

from deployer import outbox
from deployer.celery import app
from deployer.models import OutboxMessage

pytestmark = pytest.mark.django_db(transaction=True)

#: No worker knows this task: a worker that meets one of these messages drops it.
TASK = "tests.outbox.nothing"


@pytest.fixture(autouse=True)
def _empty_queue():
    yield
    if settings.REDIS_URL:  # this run's own Redis database: leave nothing for other tests
        app.control.purge()


def test_a_message_is_sent_once_its_transaction_commits():
    with transaction.atomic():
        message = outbox.enqueue(TASK, 7, "x")
        assert message is not None
        message.refresh_from_db()
        assert message.sent_at is None  # the work is not committed yet: nothing to start

    message.refresh_from_db()
    assert message.sent_at is not None
    assert (message.args, message.attempts, message.last_error) == ([7, "x"], 1, "")


def test_a_rolled_back_transaction_leaves_no_message():
    @transaction.atomic
    def failing_work() -> None:
        outbox.enqueue(TASK, 7, key="deployment:7")
        raise RuntimeError("the work failed")

    with pytest.raises(RuntimeError):
        failing_work()

    assert not OutboxMessage.objects.exists()
    assert outbox.relay() == 0


def test_one_message_waits_per_key_until_a_worker_consumes_it():
    first = outbox.enqueue(TASK, 7, key="deployment:7")
    assert first is not None

    assert outbox.enqueue(TASK, 7, key="deployment:7") is None
    assert outbox.unconsumed("deployment:7") == first
    assert outbox.enqueue(TASK, 8, key="deployment:8") is not None  # another key

    consumed = outbox.consumed(first.task_id, worker="celery@w1")
    assert consumed is not None and consumed.consumed_by == "celery@w1"
    assert outbox.unconsumed("deployment:7") is None
    second = outbox.enqueue(TASK, 7, key="deployment:7")
    assert second is not None and second.pk != first.pk


def test_consumed_ignores_a_task_that_did_not_come_from_the_outbox():
    message = outbox.enqueue(TASK, 1)
    assert message is not None

    for task_id in (None, "", "3f2a9c1e-celery-uuid", "outbox-", "outbox-x1", "outbox-999999"):
        assert outbox.consumed(task_id) is None
    message.refresh_from_db()
    assert message.consumed_at is None
    # Consumed twice (a redelivery): the first worker stays recorded.
    outbox.consumed(message.task_id, worker="celery@w1")
    outbox.consumed(message.task_id, worker="celery@w2")
    message.refresh_from_db()
    assert message.consumed_by == "celery@w1"


def test_the_relay_sends_what_waits_oldest_first():
    # Recorded while the broker was away: rows nobody sent.
    waiting = [OutboxMessage.objects.create(task=TASK, args=[n]) for n in range(3)]

    assert outbox.relay(limit=2) == 2
    sent = set(OutboxMessage.objects.filter(sent_at__isnull=False).values_list("pk", flat=True))
    assert sent == {waiting[0].pk, waiting[1].pk}
    assert outbox.relay() == 1
    assert outbox.relay() == 0  # nothing sent twice
    assert set(OutboxMessage.objects.values_list("attempts", flat=True)) == {1}


def test_senders_running_at_once_send_each_message_once():
    ids = [OutboxMessage.objects.create(task=TASK, args=[n]).pk for n in range(20)]
    start = threading.Barrier(4, timeout=30)
    counts: list[int] = []
    errors: list[BaseException] = []

    def sender() -> None:
        try:
            start.wait()
            counts.append(outbox.send(ids))
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=sender) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert errors == []
    assert sum(counts) == 20
    assert set(OutboxMessage.objects.values_list("attempts", flat=True)) == {1}


def test_after_a_restart_the_embedded_mode_sends_again_what_no_worker_started():
    started = outbox.enqueue(TASK, 1)
    lost = outbox.enqueue(TASK, 2)
    assert started is not None and lost is not None
    outbox.consumed(started.task_id, worker="embedded@here")

    # The in-memory broker died with the process: what it held is sent again.
    assert outbox.resend_unconsumed() == 1

    lost.refresh_from_db()
    started.refresh_from_db()
    assert lost.sent_at is not None and lost.attempts == 2
    assert started.attempts == 1
