"""Many deployment requests at once, on PostgreSQL, through the real web process: every one
answers as the API's contract says (201, or 400 naming the field), none 500s or deadlocks,
every 201 is a recorded deployment and coalescing leaves one queued deployment per server.
With workers claiming while requests create, no deployment fails on an internal error and
every server ends with its newest release live, on disk and in the database.

Scaled-out mode only (tests/support/processes.py): the embedded mode's SQLite has one writer.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
from django.db import connection

from builds.models import FINAL, Deployment, DeploymentTarget, Status, TargetStatus
from deployer.models import OutboxMessage
from projects.models import ApiToken
from servers.models import Release, Server
from tests.support.processes import (
    ReadyOutput,
    RedisServer,
    Web,
    require_scaled_out,
    start_celery_worker,
    stop_all,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def redis_server(tmp_path):
    require_scaled_out()
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def web(tmp_path, redis_server):
    web = Web(tmp_path, redis_server.url)
    yield web
    print(web.stop()[-5000:])


def deadlocks() -> int:
    """PostgreSQL's count of deadlocks in the test database (its statistics, flushed by each
    backend at exit at the latest: read after the web process stopped)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        return int(cursor.fetchone()[0])


def post_at_once(
    base: str, token: str, path: str, bodies: list[dict[str, list[int]]]
) -> list[httpx.Response]:
    """POST every body from its own thread, all released at the same instant."""
    start = threading.Barrier(len(bodies), timeout=60)
    answers: list[httpx.Response | BaseException | None] = [None] * len(bodies)

    def send(index: int) -> None:
        with httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=120
        ) as client:
            start.wait()
            try:
                answers[index] = client.post(path, json=bodies[index])
            except BaseException as exc:  # reported by the test
                answers[index] = exc

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(180)
    failures = [a for a in answers if not isinstance(a, httpx.Response)]
    assert failures == [], failures
    return answers  # type: ignore[return-value]


def overlapping(servers: list[Server], count: int, width: int) -> list[dict[str, list[int]]]:
    """Request i deploys ``width`` servers starting at i (wrapping): neighbours overlap."""
    return [
        {"servers": [servers[(i + k) % len(servers)].pk for k in range(width)]}
        for i in range(count)
    ]


def test_fifty_requests_at_once_for_overlapping_servers_all_answer_and_coalesce(
    web, git_repo_factory, project_factory, alice
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    servers = [
        Server.objects.create(
            project=project,
            name=f"web{i}",
            hostname="127.0.0.1",
            username="deploy",
            deploy_path=f"/srv/web{i}",
            host_key_fingerprint="SHA256:not-contacted-in-this-test",
        )
        for i in range(6)
    ]
    _, token = ApiToken.issue(user=alice, name="burst")
    bodies = overlapping(servers, 45, 3)
    # And five the contract refuses: a server of no project of hers.
    bodies += [{"servers": [servers[0].pk, 999_999]} for _ in range(5)]
    before = deadlocks()

    answers = post_at_once(web.url, token, f"/api/v1/projects/{project.slug}/deployments/", bodies)

    statuses = [answer.status_code for answer in answers]
    assert statuses.count(201) == 45, [(a.status_code, a.text[:200]) for a in answers]
    refused = [answer for answer in answers if answer.status_code != 201]
    assert [a.status_code for a in refused] == [400] * 5
    assert all("servers" in answer.json() for answer in refused)
    created = [answer.json()["id"] for answer in answers if answer.status_code == 201]
    # Every 201 is a recorded deployment, and nothing else was recorded.
    assert sorted(Deployment.objects.values_list("pk", flat=True)) == sorted(created)
    for server in servers:
        queued = DeploymentTarget.objects.filter(server=server, status=TargetStatus.QUEUED)
        # Coalescing: one queued deployment per server, the newest request for it.
        newest = max(
            pk
            for pk, body in zip(created, bodies[:45], strict=True)
            if server.pk in body["servers"]
        )
        assert list(queued.values_list("deployment_id", flat=True)) == [newest]
    for deployment in Deployment.objects.all():
        if deployment.status == Status.CANCELLED:
            assert deployment.error.startswith("Superseded by deployment #")
        else:
            assert deployment.status == Status.QUEUED
    # One start message per deployment, each taken by the broker.
    messages = OutboxMessage.objects.filter(key__startswith="deployment:")
    assert sorted(messages.values_list("key", flat=True)) == sorted(
        f"deployment:{pk}" for pk in created
    )
    assert not messages.filter(sent_at__isnull=True).exists()
    log = web.stop()
    assert deadlocks() == before, log[-5000:]
    assert "Traceback" not in log, log[-5000:]


def test_workers_claim_while_requests_create_and_no_deployment_fails(
    tmp_path,
    web,
    redis_server,
    git_repo_factory,
    project_factory,
    server_factory,
    sshd_factory,
    alice,
):
    repo = git_repo_factory()
    repo.commit({"index.html": "served\n"}, "A")
    project = project_factory(repo)
    targets = [sshd_factory() for _ in range(3)]
    servers = [server_factory(project, target) for target in targets]
    _, token = ApiToken.issue(user=alice, name="burst")
    workers = [
        start_celery_worker(
            tmp_path / f"worker-{i}", name=f"claimer{i}", REDIS_URL=redis_server.url
        )
        for i in range(2)
    ]
    logs = [ReadyOutput(worker) for worker in workers]
    before = deadlocks()
    try:
        for log in logs:
            assert log.ready.wait(120), log.text()
        path = f"/api/v1/projects/{project.slug}/deployments/"
        answers = []
        # Three bursts: the later ones arrive while workers claim and run the earlier ones.
        for width in (2, 1, 3):
            answers += post_at_once(web.url, token, path, overlapping(servers, 6, width))
        assert [a.status_code for a in answers] == [201] * 18, [a.text[:200] for a in answers]
        deadline = time.monotonic() + 300
        while Deployment.objects.exclude(status__in=FINAL).exists():
            assert time.monotonic() < deadline, list(
                Deployment.objects.exclude(status__in=FINAL).values("pk", "status")
            )
            assert all(worker.poll() is None for worker in workers), "a worker exited"
            time.sleep(0.1)
    finally:
        stop_all(workers)

    outcomes = list(Deployment.objects.values("pk", "status", "error"))
    failed = [o for o in outcomes if o["status"] not in (Status.SUCCEEDED, Status.CANCELLED)]
    assert failed == [], "\n".join(log.text() for log in logs)[-5000:]
    for outcome in outcomes:
        if outcome["status"] == Status.CANCELLED:
            assert outcome["error"].startswith("Superseded by deployment #"), outcome
    for server, target in zip(servers, targets, strict=True):
        live = Release.objects.get(server=server, live=True)
        assert Path(target.deploy_path / "current").resolve().name == live.name
        # The newest deployment that reached the server made the live release.
        last = (
            DeploymentTarget.objects.filter(server=server, status=TargetStatus.SUCCEEDED)
            .order_by("-deployment_id")
            .first()
        )
        assert last is not None and last.release == live.name
    log = web.stop()
    assert deadlocks() == before, log[-5000:]
