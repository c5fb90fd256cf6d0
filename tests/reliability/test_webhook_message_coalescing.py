"""A burst of pushes shares the project's one waiting message; a push recorded while a worker
takes that message is processed by its task, never left behind. PostgreSQL only: the embedded
mode's SQLite runs one transaction at a time."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection, transaction

from builds import webhook_services
from builds.models import WebhookDelivery, WebhookOutcome
from builds.tasks import process_webhooks
from builds.webhook_services import RefPush
from builds.webhooks import InboundDelivery
from deployer.models import OutboxMessage
from servers.models import Server
from tests.support.processes import require_scaled_out

pytestmark = pytest.mark.django_db(transaction=True)


def _inbound(n: int) -> InboundDelivery:
    head = f"{n:040x}"
    return InboundDelivery(
        provider="github",
        event="push",
        delivery_id=f"delivery-{n}",
        pushes=(RefPush(ref="refs/heads/main", kind="branch", name="main", head=head),),
    )


def _advisory_waiters() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
        return int(cursor.fetchone()[0])


def test_a_push_recorded_while_its_message_is_taken_is_processed_by_that_task(
    git_repo_factory, project_factory
):
    require_scaled_out()
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    Server.objects.create(
        project=project,
        name="web1",
        hostname="127.0.0.1",
        username="deploy",
        deploy_path="/srv/web1",
        auto_deploy=True,
        host_key_fingerprint="SHA256:x",
    )
    webhook_services.webhook_receive(project=project, inbound=_inbound(1))
    (message,) = OutboxMessage.objects.all()

    recorded = threading.Event()
    commit = threading.Event()
    results: dict[str, object] = {}

    def door() -> None:
        # A second push: it finds the project's message unconsumed, records none, and has
        # not committed yet when the worker takes the message.
        try:
            with transaction.atomic():
                webhook_services.webhook_receive(project=project, inbound=_inbound(2))
                recorded.set()
                commit.wait(30)
        except BaseException as exc:
            results["door"] = exc
        finally:
            connection.close()

    def worker() -> None:
        try:
            results["processed"] = process_webhooks.apply(
                args=(project.pk,), task_id=message.task_id
            ).get()
        except BaseException as exc:
            results["worker"] = exc
        finally:
            connection.close()

    door_thread = threading.Thread(target=door)
    door_thread.start()
    assert recorded.wait(30)
    worker_thread = threading.Thread(target=worker)
    worker_thread.start()
    # The worker waits for the open transaction that counted on its message.
    deadline = time.monotonic() + 30
    while _advisory_waiters() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _advisory_waiters() == 1
    assert worker_thread.is_alive()
    commit.set()
    door_thread.join(30)
    worker_thread.join(60)

    assert "door" not in results and "worker" not in results, results
    assert results["processed"] == 2
    assert not WebhookDelivery.objects.filter(outcome=WebhookOutcome.ACCEPTED).exists()
    assert OutboxMessage.objects.filter(task=webhook_services.PROCESS_WEBHOOKS_TASK).count() == 1
