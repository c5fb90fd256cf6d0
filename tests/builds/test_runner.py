"""Deployments driven through the database and the Celery task, against real sshd targets."""

from __future__ import annotations

import os

import pytest

from builds import reconcile, services
from builds.models import Deployment, Kind, LogLine, Status, TargetStatus
from builds.tasks import run_deployment
from projects.models import BuildCommand, EnvironmentVariable
from servers.models import Release

pytestmark = pytest.mark.django_db(transaction=True)


def _run(deployment: Deployment) -> Deployment:
    run_deployment.apply(args=(deployment.pk,))
    deployment.refresh_from_db()
    return deployment


def _log(deployment: Deployment) -> str:
    return "\n".join(LogLine.objects.filter(deployment=deployment).values_list("text", flat=True))


def test_it_deploys_then_rolls_back_and_records_releases(
    git_repo_factory, sshd_target, project_factory, server_factory, alice
):
    repo = git_repo_factory()
    a = repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    server = server_factory(project, sshd_target)

    first = _run(services.deployment_create(project=project, servers=[server], user=alice))
    assert first.status == Status.SUCCEEDED, first.error
    assert first.end_revision == a
    b = repo.commit({"index.html": "B\n"}, "B")
    second = _run(services.deployment_create(project=project, servers=[server], user=alice))
    assert second.status == Status.SUCCEEDED, second.error
    assert second.start_revision == a and second.end_revision == b
    assert second.changes["modified"] == ["index.html"]
    current = sshd_target.deploy_path / "current"
    assert (current / "index.html").read_text() == "B\n"
    releases = list(Release.objects.filter(server=server).order_by("created_at"))
    assert [r.revision for r in releases] == [a, b]
    assert [r.live for r in releases] == [False, True]

    rollback = _run(
        services.deployment_create(
            project=project, servers=[server], kind=Kind.ROLLBACK, user=alice, rollback_of=second
        )
    )
    assert rollback.status == Status.SUCCEEDED, rollback.error
    assert (current / "index.html").read_text() == "A\n"
    assert Release.objects.get(server=server, live=True).revision == a
    target = rollback.targets.get()
    assert target.release == releases[0].name and target.previous_release == releases[1].name
    # Steps and log lines are numbered and stored.
    seqs = list(LogLine.objects.filter(deployment=second).values_list("seq", flat=True))
    assert seqs == list(range(1, len(seqs) + 1))
    assert second.steps.filter(name="switch", status=TargetStatus.SUCCEEDED).exists()


def test_it_masks_a_secret_environment_value_printed_by_a_build_command(
    git_repo_factory, sshd_target, project_factory, server_factory
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"})
    project = project_factory(repo)
    server = server_factory(project, sshd_target)
    EnvironmentVariable.objects.create(
        project=project, name="API_TOKEN", value="tok-9f8e7d6c5b4a", secret=True
    )
    EnvironmentVariable.objects.create(
        project=project, name="PUBLIC_NAME", value="shop-frontend", secret=False
    )
    BuildCommand.objects.create(
        project=project, command='echo "token is $API_TOKEN for $PUBLIC_NAME"'
    )

    deployment = _run(services.deployment_create(project=project, servers=[server]))
    assert deployment.status == Status.SUCCEEDED, deployment.error
    log = _log(deployment)
    assert "token is ******** for shop-frontend" in log
    assert "tok-9f8e7d6c5b4a" not in log


def test_it_refuses_a_server_whose_host_key_is_not_trusted(
    git_repo_factory, sshd_target, project_factory, server_factory
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"})
    project = project_factory(repo)
    server = server_factory(project, sshd_target, trust=False)
    with pytest.raises(services.DeploymentRefused, match="host key is not trusted") as refused:
        services.deployment_create(project=project, servers=[server])
    assert refused.value.field == "servers"
    assert not Deployment.objects.exists()


def test_it_fails_when_the_host_key_changed_after_it_was_trusted(
    git_repo_factory, sshd_target, project_factory, server_factory
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"})
    project = project_factory(repo)
    server = server_factory(project, sshd_target)
    server.host_key_fingerprint = "SHA256:" + "A" * 43
    server.save()
    deployment = _run(services.deployment_create(project=project, servers=[server]))
    assert deployment.status == Status.FAILED
    assert sshd_target.host_key_fingerprint in deployment.error
    assert "SHA256:" + "A" * 43 in deployment.error
    assert deployment.error_code == "host_key_mismatch"
    assert deployment.targets.get().status == TargetStatus.FAILED
    assert not (sshd_target.deploy_path / "current").exists()


def test_it_fails_with_a_plain_message_when_a_build_command_fails(
    git_repo_factory, sshd_target, project_factory, server_factory
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"})
    project = project_factory(repo)
    server = server_factory(project, sshd_target)
    BuildCommand.objects.create(project=project, command="echo about to fail; exit 3")
    deployment = _run(services.deployment_create(project=project, servers=[server]))
    assert deployment.status == Status.FAILED
    assert "exit code 3" in deployment.error
    assert deployment.error_code == "command_failed"
    assert deployment.finished_at is not None


def test_a_newer_queued_deployment_supersedes_an_older_one(
    git_repo_factory, sshd_target, project_factory, server_factory
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"})
    project = project_factory(repo)
    server = server_factory(project, sshd_target)
    older = services.deployment_create(project=project, servers=[server], revision="main")
    newer = services.deployment_create(project=project, servers=[server], revision="main")
    older.refresh_from_db()
    assert older.status == Status.CANCELLED
    assert f"#{newer.pk}" in older.error
    # A redelivered message for the cancelled one does nothing; the newer one runs.
    assert _run(older).status == Status.CANCELLED
    assert _run(newer).status == Status.SUCCEEDED
    assert _run(newer).status == Status.SUCCEEDED  # running the task twice is harmless
    assert LogLine.objects.filter(deployment=newer, text__startswith="Deploying").count() == 1


def test_the_reaper_fails_a_deployment_whose_worker_died(
    git_repo_factory, sshd_target, project_factory, server_factory, settings
):
    from datetime import timedelta

    from django.utils import timezone

    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"})
    project = project_factory(repo)
    server = server_factory(project, sshd_target)
    deployment = services.deployment_create(project=project, servers=[server])
    claimed = services.deployment_claim(deployment.pk, worker="celery@gone")
    assert claimed is not None
    Deployment.objects.filter(pk=deployment.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=settings.HEARTBEAT_TIMEOUT + 5)
    )
    assert reconcile.deployments_reap_stale() == 1
    deployment.refresh_from_db()
    assert deployment.status == Status.FAILED
    assert "celery@gone" in deployment.error
    assert deployment.targets.get().status == TargetStatus.FAILED
    # The server is free again.
    assert (
        _run(services.deployment_create(project=project, servers=[server])).status
        == Status.SUCCEEDED
    )
    assert os.path.islink(sshd_target.deploy_path / "current")
