"""A worker that took a message and died before starting it (SIGKILL) strands the message in
Redis's unacknowledged set until the visibility timeout (hours). The relay finds it in neither
the queue nor a live worker and sends it again; a message still waiting in its queue is left
alone. Scaled-out mode: real Redis, and a real kombu consumer killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from django.conf import settings

from deployer import outbox
from deployer.celery import app
from deployer.models import OutboxMessage
from tests.support.processes import ROOT, require_scaled_out

pytestmark = pytest.mark.django_db(transaction=True)

#: Routed to the housekeeping queue by the `builds.tasks.*` route; no worker runs here.
TASK = "builds.tasks.tests_outbox_nothing"

#: Takes one message from the housekeeping queue without acknowledging it, says so, and
#: waits to be killed: a worker that died between taking a message and starting its task.
TAKER = textwrap.dedent(
    """
    import sys, time
    from kombu import Connection
    with Connection(sys.argv[1]) as connection:
        queue = connection.SimpleQueue("housekeeping", no_ack=False)
        message = queue.get(block=True, timeout=20)
        print(message.headers["id"], flush=True)
        time.sleep(600)
    """
)


@pytest.fixture(autouse=True)
def _scaled_out():
    require_scaled_out()
    app.control.purge()
    yield
    app.control.purge()


def test_a_message_waiting_in_its_queue_is_not_sent_again():
    message = outbox.enqueue(TASK, 1)
    assert message is not None

    outbox.relay(stranded_after=0)

    message.refresh_from_db()
    assert message.sent_at is not None and message.attempts == 1  # left alone: it waits


def test_a_message_taken_by_a_worker_killed_before_it_started_is_sent_again():
    message = outbox.enqueue(TASK, 2)
    assert message is not None
    taker = subprocess.Popen(
        [sys.executable, "-c", TAKER, settings.CELERY_BROKER_URL],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert taker.stdout is not None
        assert taker.stdout.readline().strip() == message.task_id
    finally:
        os.kill(taker.pid, signal.SIGKILL)
        taker.wait()

    outbox.relay(stranded_after=0)

    message.refresh_from_db()
    assert message.attempts == 2 and message.sent_at is not None
    assert OutboxMessage.objects.filter(consumed_at__isnull=True).count() == 1
    # Its id comes out of the queue again. A message an earlier test in this test worker
    # left behind may come first (the broker database is this test worker's own).
    seen: list[str] = []
    with app.connection() as connection:
        queue = connection.SimpleQueue("housekeeping")
        while message.task_id not in seen:
            assert len(seen) < 50, seen
            again = queue.get(block=True, timeout=10)
            seen.append(again.headers["id"])
            again.ack()
    assert seen.count(message.task_id) == 1


def test_a_consumed_message_is_never_sent_again():
    message = outbox.enqueue(TASK, 3)
    assert message is not None
    outbox.consumed(message.task_id, worker="w@host")
    app.control.purge()

    outbox.relay(stranded_after=0)

    message.refresh_from_db()
    assert message.attempts == 1
