"""Cancelling a running deployment, and previews that touch no server."""

from __future__ import annotations

import threading
import time

import pytest

from builds import services
from builds.models import Deployment, Kind, LogLine, Status, TargetStatus
from builds.tasks import run_deployment
from projects.models import BuildCommand

pytestmark = pytest.mark.django_db(transaction=True)


def _run(deployment: Deployment) -> Deployment:
    run_deployment.apply(args=(deployment.pk,))
    deployment.refresh_from_db()
    return deployment


def test_it_cancels_a_running_deployment_at_the_next_safe_point(
    git_repo_factory, sshd_target, project_factory, server_factory
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    server = server_factory(project, sshd_target)
    assert (
        _run(services.deployment_create(project=project, servers=[server])).status
        == Status.SUCCEEDED
    )
    live_before = (sshd_target.deploy_path / "current").resolve()

    repo.commit({"index.html": "B\n"}, "B")
    BuildCommand.objects.create(project=project, command="echo building; sleep 30; echo never")
    deployment = services.deployment_create(project=project, servers=[server])
    worker = threading.Thread(target=run_deployment.apply, kwargs={"args": (deployment.pk,)})
    worker.start()
    deadline = time.monotonic() + 60
    while not LogLine.objects.filter(deployment=deployment, text="building").exists():
        assert time.monotonic() < deadline, "the build command never started"
        time.sleep(0.05)
    assert services.deployment_request_cancel(deployment)
    worker.join(timeout=60)
    assert not worker.is_alive()

    deployment.refresh_from_db()
    assert deployment.status == Status.CANCELLED
    assert deployment.targets.get().status == TargetStatus.CANCELLED
    assert (sshd_target.deploy_path / "current").resolve() == live_before
    assert (sshd_target.deploy_path / "current" / "index.html").read_text() == "A\n"
    assert not LogLine.objects.filter(deployment=deployment, text="never").exists()
    # The server is free for the next deployment.
    BuildCommand.objects.all().delete()
    assert (
        _run(services.deployment_create(project=project, servers=[server])).status
        == Status.SUCCEEDED
    )
    assert (sshd_target.deploy_path / "current" / "index.html").read_text() == "B\n"


def test_it_cancels_a_queued_deployment_at_once(
    git_repo_factory, sshd_target, project_factory, server_factory
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"})
    project = project_factory(repo)
    server = server_factory(project, sshd_target)
    deployment = services.deployment_create(project=project, servers=[server])
    assert services.deployment_request_cancel(deployment)
    deployment.refresh_from_db()
    assert deployment.status == Status.CANCELLED
    assert _run(deployment).status == Status.CANCELLED
    assert not (sshd_target.deploy_path / "current").exists()


def test_a_preview_lists_commits_and_changes_and_touches_no_server(
    git_repo_factory, sshd_target, project_factory, server_factory
):
    repo = git_repo_factory()
    a = repo.commit({"index.html": "A\n", "old.txt": "old\n"}, "First")
    project = project_factory(repo)
    server = server_factory(project, sshd_target)
    assert (
        _run(services.deployment_create(project=project, servers=[server])).status
        == Status.SUCCEEDED
    )
    repo.commit({"index.html": "B\n", "old.txt": None, "new.txt": "new!\n"}, "Second")
    c = repo.commit({"more.txt": "more\n"}, "Third")
    listing_before = sorted(p.name for p in (sshd_target.deploy_path / "releases").iterdir())

    preview = _run(services.deployment_create(project=project, servers=[server], kind=Kind.PREVIEW))
    assert preview.status == Status.SUCCEEDED, preview.error
    assert preview.start_revision == a and preview.end_revision == c
    assert [commit["subject"] for commit in preview.commits] == ["Third", "Second"]
    assert preview.changes["added"] == ["more.txt", "new.txt"]
    assert preview.changes["modified"] == ["index.html"]
    assert preview.changes["deleted"] == ["old.txt"]
    assert preview.changes["bytes"] == len("more\n") + len("new!\n") + len("B\n")
    assert (
        sorted(p.name for p in (sshd_target.deploy_path / "releases").iterdir()) == listing_before
    )
    assert (sshd_target.deploy_path / "current" / "index.html").read_text() == "A\n"
