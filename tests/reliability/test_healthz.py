"""/healthz: the database, the broker and the live workers, with nothing sensitive in it."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection

from deployer import health
from tests.support.processes import start_celery_worker, stop_all

pytestmark = pytest.mark.django_db(transaction=True)


def _health(client):
    health.cluster_state(fresh=True)  # not the reading another test left in the cache
    response = client.get("/healthz")
    return response.status_code, response.json()


def test_it_is_degraded_while_no_worker_consumes_the_deployments_queue(client, settings, request):
    if not settings.EMBEDDED_WORKER:
        request.getfixturevalue("own_broker")  # a broker no worker listens to
    status, document = _health(client)
    assert status == 200
    # Embedded: `serve` was not run, so there is no in-process worker.
    assert document["status"] == "degraded"
    assert document["database"] == {"ok": True}
    assert document["workers"] == {
        "count": 0,
        "queues": {q: 0 for q in document["workers"]["queues"]},
    }
    assert "no live worker consumes the deployments queue" in document["problems"]


def test_it_answers_503_when_the_database_is_down(client, settings, tmp_path):
    saved = dict(connection.settings_dict)
    connection.close()
    if connection.vendor == "sqlite":
        connection.settings_dict["NAME"] = str(tmp_path / "missing-folder" / "db.sqlite3")
    else:
        from tests.support.processes import free_port

        connection.settings_dict["PORT"] = str(free_port())  # nothing listens there
    try:
        response = client.get("/healthz")
    finally:
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(saved)
    assert response.status_code == 503
    document = response.json()
    assert document["status"] == "down"
    assert document["database"] == {"ok": False, "error": "OperationalError"}


def test_it_counts_live_workers_by_queue_and_reports_the_broker_going_away(
    own_broker, client, tmp_path, settings
):
    status, document = _health(client)
    assert (status, document["status"]) == (200, "degraded")
    assert document["broker"] == {"ok": True, "kind": "redis"}
    assert document["workers"]["count"] == 0

    housekeeping = start_celery_worker(
        tmp_path / "h", name="chores", queues="housekeeping", redis_url=own_broker.url
    )
    deployments = None
    try:
        document = _wait_for_workers(client, 1)
        assert document["status"] == "degraded"
        assert document["workers"]["queues"]["housekeeping"] == 1
        assert document["workers"]["queues"]["deployments"] == 0
        assert document["problems"] == [
            f"no live worker consumes the {name} queue"
            for name in ("deployments", "previews", "webhooks", "notifications")
        ]

        deployments = start_celery_worker(
            tmp_path / "d",
            name="deploys",
            queues="deployments,previews,webhooks,notifications",
            redis_url=own_broker.url,
        )
        document = _wait_for_workers(client, 2)
        assert document["status"] == "ok", document
        assert document["workers"]["queues"]["deployments"] == 1
        assert document["problems"] == []

        own_broker.stop()
        status, document = _health(client)
        assert status == 200
        assert document["status"] == "degraded"
        assert document["broker"] == {"ok": False, "kind": "redis", "error": "ConnectionError"}
        assert document["problems"][0].startswith("the broker does not answer")
        body = client.get("/healthz").content.decode()
        for secret in (own_broker.url, settings.DATABASE_URL, "127.0.0.1", "redis://"):
            assert secret not in body
    finally:
        stop_all(process for process in (housekeeping, deployments) if process is not None)


def _wait_for_workers(client, count: int) -> dict[str, Any]:
    import time

    deadline = time.monotonic() + 60
    while True:
        _, document = _health(client)
        if document["workers"]["count"] >= count or time.monotonic() > deadline:
            return document
        time.sleep(0.5)
