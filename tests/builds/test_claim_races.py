"""A deployment runs once: its claim is a conditional update, so workers that receive its
message at the same instant (a redelivery, a relay's second send) start it once between them.
Both modes: the embedded mode's worker threads on SQLite, workers on PostgreSQL."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from builds import services
from builds.models import Deployment, Status, TargetStatus
from servers.models import Server

pytestmark = pytest.mark.django_db(transaction=True)


def server(project, name: str) -> Server:
    return Server.objects.create(
        project=project,
        name=name,
        hostname="127.0.0.1",
        username="deploy",
        deploy_path=f"/srv/{name}",
        host_key_fingerprint="SHA256:not-contacted-in-this-test",
    )


def claim_at_once(deployment_ids: list[int]) -> list[Deployment | None]:
    """One thread per id, all released at the same instant: what each claim returned."""
    start = threading.Barrier(len(deployment_ids), timeout=30)
    results: list[Deployment | BaseException | None] = [None] * len(deployment_ids)

    def claim(index: int) -> None:
        try:
            start.wait()
            results[index] = services.deployment_claim(
                deployment_ids[index], worker=f"celery@w{index}"
            )
        except BaseException as exc:  # reported below
            results[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(deployment_ids))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not [r for r in results if isinstance(r, BaseException)], results
    return results  # type: ignore[return-value]


def test_eight_workers_claiming_one_deployment_start_it_once(git_repo_factory, project_factory):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    deployment = services.deployment_create(project=project, servers=[server(project, "web1")])

    results = claim_at_once([deployment.pk] * 8)

    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    deployment.refresh_from_db()
    assert deployment.status == Status.RUNNING
    assert deployment.worker == winners[0].worker
    assert list(deployment.targets.values_list("status", flat=True)) == [TargetStatus.RUNNING]


def test_a_deployment_whose_server_is_busy_waits_and_then_starts_once(
    git_repo_factory, project_factory
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    web1, web2 = server(project, "web1"), server(project, "web2")
    first = services.deployment_create(project=project, servers=[web1])
    assert services.deployment_claim(first.pk, worker="celery@w0") is not None
    second = services.deployment_create(project=project, servers=[web1, web2])

    assert claim_at_once([second.pk] * 4) == [None] * 4  # web1 is busy
    second.refresh_from_db()
    assert second.status == Status.QUEUED

    services.deployment_finish(first, status=Status.SUCCEEDED)
    results = claim_at_once([second.pk] * 4)

    assert len([r for r in results if r is not None]) == 1
    second.refresh_from_db()
    assert second.status == Status.RUNNING
