"""Signed pushes all the way to a real sshd target: the pushed revision ends up live."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.db import connection
from django.test import Client

from builds import services
from builds.models import Deployment, DeploymentTarget, Status, TargetStatus, Trigger
from builds.runner import run
from builds.tasks import process_webhook_delivery, run_deployment
from servers.models import Release
from tests.webhooks import payloads

# Deployments are sent to the workers on commit, so the test needs real transactions.
pytestmark = pytest.mark.django_db(transaction=True)


def _push(post, project, head, before, message):
    body = payloads.encode(
        payloads.github_push(after=head, before=before, commits=[(head, message)])
    )
    response = post(project, body, **payloads.github_headers(body, project.webhook_secret))
    assert response.status_code in (200, 202), response.content
    return response.json()


def test_a_signed_github_push_goes_live_on_the_server(
    git_repo_factory, sshd_target, project_factory, server_factory, post
):
    repo = git_repo_factory()
    first = repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    server = server_factory(project, sshd_target)
    head = repo.commit({"index.html": "B\n"}, "Ship B")

    answer = _push(post, project, head, first, "Ship B")

    assert answer["status"] == "queued"
    (deployment_id,) = answer["deployments"]
    run_deployment.apply(args=(deployment_id,))
    deployment = Deployment.objects.get(pk=deployment_id)
    assert deployment.status == Status.SUCCEEDED, deployment.error
    assert deployment.trigger == Trigger.WEBHOOK
    assert (deployment.revision, deployment.branch, deployment.end_revision) == (
        head,
        "main",
        head,
    )
    assert (sshd_target.deploy_path / "current" / "index.html").read_text() == "B\n"
    live = Release.objects.get(server=server, live=True)
    assert (live.revision, live.branch) == (head, "main")


def test_a_burst_of_pushes_leaves_one_running_and_one_queued_then_the_newest_goes_live(
    git_repo_factory, sshd_target, project_factory, server_factory, post
):
    repo = git_repo_factory()
    previous = repo.commit({"index.html": "0\n"}, "0")
    project = project_factory(repo)
    server = server_factory(project, sshd_target)
    heads: list[str] = []
    deployment_ids: list[int] = []
    running = None

    for n in range(1, 11):
        head = repo.commit({"index.html": f"{n}\n"}, f"Push {n}")
        answer = _push(post, project, head, previous, f"Push {n}")
        (deployment_id,) = answer["deployments"]
        heads.append(head)
        deployment_ids.append(deployment_id)
        previous = head
        if running is None:
            # A worker picks up the first deployment while the other pushes arrive.
            running = services.deployment_claim(deployment_id, worker="test")
            assert running is not None
        active = DeploymentTarget.objects.filter(server=server)
        assert active.filter(status=TargetStatus.RUNNING).count() <= 1
        assert active.filter(status=TargetStatus.QUEUED).count() <= 1

    statuses = [Deployment.objects.get(pk=pk).status for pk in deployment_ids]
    assert statuses == [Status.RUNNING] + [Status.CANCELLED] * 8 + [Status.QUEUED]
    queued = Deployment.objects.get(status=Status.QUEUED)
    assert queued.revision == heads[-1]

    # Run everything in order: the running one finishes, then the queued one, then the
    # redelivered messages of the superseded ones, which do nothing.
    assert running is not None
    run(running)
    for deployment_id in deployment_ids[1:]:
        run_deployment.apply(args=(deployment_id,))

    finished = [Deployment.objects.get(pk=pk) for pk in deployment_ids]
    assert finished[0].status == Status.SUCCEEDED, finished[0].error
    assert finished[-1].status == Status.SUCCEEDED, finished[-1].error
    assert all(d.status == Status.CANCELLED for d in finished[1:-1])
    assert (sshd_target.deploy_path / "current" / "index.html").read_text() == "10\n"
    assert Release.objects.get(server=server, live=True).revision == heads[-1]


@pytest.mark.skipif(
    connection.vendor == "sqlite",
    reason="SQLite's shared in-memory test database answers 'table is locked' instead of "
    "waiting; a real SQLite file serialises writers (IMMEDIATE + busy timeout)",
)
def test_two_copies_of_one_delivery_arriving_at_once_create_one_deployment(shop, make_server):
    """The unique constraint, not a prior lookup, decides which copy wins."""
    make_server(shop, "web1")
    body = payloads.encode(payloads.github_push())
    headers = payloads.github_headers(body, shop.webhook_secret, delivery="same-delivery")
    start = threading.Barrier(2)
    answers: list[dict[str, Any]] = []

    def deliver() -> None:
        try:
            start.wait()
            response = Client().post(
                shop.webhook_path, data=body, content_type="application/json", **headers
            )
            answers.append(response.json())
        finally:
            connection.close()

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert sorted(answer["status"] for answer in answers) == ["accepted", "duplicate"]
    for answer in answers:
        process_webhook_delivery(answer["delivery"])
    assert Deployment.objects.count() == 1


def test_a_replayed_push_of_an_older_commit_is_not_deployed(
    git_repo_factory, sshd_target, project_factory, server_factory, post
):
    repo = git_repo_factory()
    first = repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    server_factory(project, sshd_target)
    second = repo.commit({"index.html": "B\n"}, "B")
    (old,) = _push(post, project, first, "0" * 40, "A")["deployments"]
    run_deployment.apply(args=(old,))
    (new,) = _push(post, project, second, first, "B")["deployments"]
    run_deployment.apply(args=(new,))
    assert (sshd_target.deploy_path / "current" / "index.html").read_text() == "B\n"

    # The same signed body again, under a fresh delivery id: a replay, refused at the door.
    replay = _push(post, project, first, "0" * 40, "A")
    assert (replay["status"], replay["deployments"]) == ("duplicate", [])
    # A late, differently worded delivery of the old commit passes the door; the worker
    # still refuses to go back.
    (replayed,) = _push(post, project, first, "0" * 40, "A (retried)")["deployments"]
    run_deployment.apply(args=(replayed,))
    deployment = Deployment.objects.get(pk=replayed)
    assert deployment.status == Status.FAILED
    assert "older than" in deployment.error
    assert (sshd_target.deploy_path / "current" / "index.html").read_text() == "B\n"


def test_a_custom_push_naming_a_commit_off_its_branch_is_not_deployed(
    git_repo_factory, sshd_target, project_factory, server_factory, post
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    repo.branch("experiment")
    stray = repo.commit({"index.html": "unreviewed\n"}, "Unreviewed work")
    repo.switch("main")
    project = project_factory(repo)
    server_factory(project, sshd_target)
    body = payloads.encode({"payload": {"new_ref": stray, "branch": "main"}})
    response = post(project, body, **payloads.custom_headers(project.webhook_secret))
    assert response.status_code == 202, response.content
    (deployment_id,) = response.json()["deployments"]
    run_deployment.apply(args=(deployment_id,))
    deployment = Deployment.objects.get(pk=deployment_id)
    assert deployment.status == Status.FAILED
    assert "is not on branch main" in deployment.error
    assert not (sshd_target.deploy_path / "current").exists()
