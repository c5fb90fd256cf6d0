"""What the review of issue 11 found, kept as regression tests: every outbox task marks its
message consumed, an answer after the commit, retention of every final outcome, the cancel
check outliving a lost connection, pool sizes, a worker lost before it claimed."""

from __future__ import annotations

import contextlib
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from builds import tasks
from builds.models import Deployment, Status, WebhookDelivery, WebhookOutcome
from builds.retention import records_prune
from builds.runner import DatabaseReporter
from deployer import outbox
from deployer.models import OutboxMessage
from servers.models import Server
from tests.api.conftest import client_for
from tests.support.processes import require_scaled_out

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def project(git_repo_factory, project_factory):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    return project_factory(repo)


def test_the_reconcile_task_marks_its_outbox_message_consumed():
    # builds.tasks._deployment_worker_lost records this message through the outbox.
    message = outbox.enqueue(
        tasks.RECONCILE_LOST_TASK, 424242, "outbox-1", "WorkerLostError", key="reconcile:424242"
    )
    assert message is not None

    tasks.reconcile_lost_deployment.apply(
        args=(424242, "outbox-1", "WorkerLostError"), task_id=message.task_id
    )

    message.refresh_from_db()
    assert message.consumed_at is not None, "the reconcile task never marks its message consumed"


@pytest.mark.parametrize("outcome", [WebhookOutcome.SUPERSEDED, WebhookOutcome.FAILED])
def test_retention_prunes_superseded_and_failed_webhook_deliveries(project, settings, outcome):
    settings.RETAIN_DELIVERIES_DAYS = 30
    WebhookDelivery.objects.create(project=project, provider="github", outcome=outcome)
    WebhookDelivery.objects.filter(project=project).update(
        received_at=timezone.now() - timedelta(days=400)
    )

    records_prune()

    assert not WebhookDelivery.objects.filter(project=project).exists(), (
        f"a {outcome} delivery a year old is kept forever"
    )


def test_a_lost_connection_while_polling_for_cancel_does_not_stop_the_deployment(project):
    require_scaled_out()
    deployment = Deployment.objects.create(
        project=project, status=Status.RUNNING, started_at=timezone.now()
    )
    reporter = DatabaseReporter(deployment, writer=None)  # type: ignore[arg-type]
    with connection.cursor() as cursor, contextlib.suppress(Exception):
        # What pg_terminate_backend, or a PostgreSQL restart, does to the worker's connection
        # while a remote command runs (the fault campaign's "PostgreSQL connections killed").
        cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    # Called about once a second by every running command; whatever it raises stops the
    # command (builds/engine/ssh.py _execute) and fails the deployment.
    try:
        reporter.check_cancelled()
    finally:
        connection.close()


def test_a_pool_size_of_1_is_refused_at_start_or_works(tmp_path):

    from tests.support.processes import clean_env, manage, shared_test_database_url

    require_scaled_out()
    env = clean_env(
        SLIPWAY_DATA_DIR=str(tmp_path),
        DATABASE_URL=shared_test_database_url(),
        REDIS_URL="redis://127.0.0.1:1/0",
        SLIPWAY_SECRET_KEY="x" * 50,
        SLIPWAY_ENCRYPTION_KEYS="p5QCyJ7jmK2m1tyx9Y1sS3wt9tyCzGxkGTrXcqXkK0c=",
        SLIPWAY_PROCESS_ROLE="web",
        SLIPWAY_DB_POOL_SIZE="1",  # accepted: env.integer(minimum=1)
    )
    result = manage(
        "shell", "-c", "from django.db import connection; connection.ensure_connection()", env=env
    )
    assert result.returncode == 0 or "SLIPWAY_DB_POOL_SIZE" in result.stderr, result.stderr[-600:]


def test_a_worker_lost_before_it_marked_the_message_consumed_gets_a_new_message(project):
    from builds import reconcile, services

    server = Server.objects.create(
        project=project,
        name="web1",
        hostname="127.0.0.1",
        username="deploy",
        deploy_path="/srv/web1",
        host_key_fingerprint="SHA256:x",
    )
    deployment = services.deployment_create(project=project, servers=[server])
    message = OutboxMessage.objects.get(key=services.dispatch_key(deployment.pk))
    # The pool process took (and, acks early, acknowledged) the message, then died before
    # _claim_and_run's first line (outbox.consumed): Celery fails it with WorkerLostError.

    requeued = reconcile.deployment_worker_lost(
        deployment.pk, task_id=message.task_id, reason="WorkerLostError"
    )

    assert requeued, "no new message: the deployment waits for the stranded-message scan"


def test_a_real_pg_terminate_backend_after_the_commit_is_still_answered_201(
    alice, project, monkeypatch
):
    from builds import api as builds_api

    require_scaled_out()
    server = Server.objects.create(
        project=project,
        name="web1",
        hostname="127.0.0.1",
        username="deploy",
        deploy_path="/srv/app",
        host_key_fingerprint="SHA256:abc",
    )
    original = builds_api.deployment_data

    def killed_then_read(deployment_id: int) -> dict[str, object]:
        with connection.cursor() as cursor, contextlib.suppress(Exception):
            cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")
        return original(deployment_id)

    monkeypatch.setattr(builds_api, "deployment_data", killed_then_read)
    api = client_for(alice)
    api.raise_request_exception = False
    url = f"/api/v1/projects/{project.slug}/deployments/"

    first = api.post(url, {"servers": [server.pk]}, format="json")
    connection.close()

    # Recorded, so answered as recorded: a client told to try again would make a second one.
    assert first.status_code == 201, first.content
    assert first.json()["id"] == Deployment.objects.get(project=project).pk
