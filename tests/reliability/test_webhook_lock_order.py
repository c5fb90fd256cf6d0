"""Lock order: webhook processing locks delivery rows, then the project's lock; deleting the
project takes the project's lock, then (cascade) the delivery rows. PostgreSQL only."""

from __future__ import annotations

import threading
import time
from dataclasses import asdict

import pytest
from django.core.exceptions import ValidationError
from django.db import connection

from builds import webhook_services
from builds.models import WebhookDelivery, WebhookOutcome
from builds.webhook_services import RefPush
from projects.services import project_delete
from servers.models import Server
from tests.support.processes import require_scaled_out

pytestmark = pytest.mark.django_db(transaction=True)


def test_deleting_a_project_while_its_deliveries_are_processed_does_not_deadlock(
    git_repo_factory, project_factory, alice, monkeypatch
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
        host_key_fingerprint="SHA256:x",
    )
    push = RefPush(ref="refs/heads/main", kind="branch", name="main", head="a" * 40)
    delivery = WebhookDelivery.objects.create(
        project=project,
        provider="github",
        outcome=WebhookOutcome.ACCEPTED,
        pushes=[asdict(push)],
    )
    claimed = threading.Event()
    original = webhook_services._plan_push

    def plan_slowly(*args, **kwargs):
        claimed.set()  # the delivery rows are updated (locked) by now
        time.sleep(1.5)  # the project's deletion starts meanwhile
        return original(*args, **kwargs)

    monkeypatch.setattr(webhook_services, "_plan_push", plan_slowly)
    errors: dict[str, BaseException] = {}

    def process() -> None:
        try:
            webhook_services.webhook_process(delivery.pk)
        except BaseException as exc:
            errors["processing"] = exc
        finally:
            connection.close()

    def delete() -> None:
        claimed.wait(10)
        try:
            project_delete(project=project, actor=alice)
        except BaseException as exc:
            errors["project_delete"] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=process), threading.Thread(target=delete)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    # The deletion either went first or was refused with the project's deployment in
    # progress (the contract); what must never happen is a deadlock (a DatabaseError).
    assert "processing" not in errors, errors
    refused = errors.get("project_delete")
    assert refused is None or isinstance(refused, ValidationError), refused
