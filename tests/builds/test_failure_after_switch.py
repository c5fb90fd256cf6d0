"""A server that fails after its switch (an after-switch command that fails or outlives its
timeout) keeps the new release live, as Capistrano and Deployer leave it; the database records
that release live too, so it agrees with the server's `current` (issue 11's invariant). The
error names the user's command, not the script that wraps it."""

from __future__ import annotations

import os

import pytest

from builds import services
from builds.models import Deployment, Status, TargetStatus
from builds.tasks import run_deployment
from projects.models import Command

pytestmark = pytest.mark.django_db(transaction=True)


def _run(deployment: Deployment) -> Deployment:
    run_deployment.apply(args=(deployment.pk,))
    deployment.refresh_from_db()
    return deployment


@pytest.mark.parametrize(
    ("command", "timeout", "named"),
    [
        ("echo reloading; exit 3", None, "echo reloading; exit 3"),
        ("sleep 30.02", 1, "`sleep 30.02`"),
    ],
)
def test_a_failure_after_the_switch_leaves_the_new_release_live_in_the_database_too(
    git_repo_factory, sshd_target, project_factory, server_factory, command, timeout, named
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    server = server_factory(project, sshd_target)
    assert _run(services.deployment_create(project=project, servers=[server])).status == (
        Status.SUCCEEDED
    )
    repo.commit({"index.html": "B\n"}, "B")
    Command.objects.create(
        project=project, stage="after_switch", command=command, timeout_seconds=timeout
    )

    failed = _run(services.deployment_create(project=project, servers=[server]))

    assert failed.status == Status.FAILED
    assert named in failed.error and "SLIPWAY_VAR" not in failed.error
    target = failed.targets.get()
    assert target.status == TargetStatus.FAILED
    current = os.readlink(sshd_target.deploy_path / "current")
    assert (sshd_target.deploy_path / "current" / "index.html").read_text() == "B\n"
    live = server.releases.get(live=True)
    assert current == f"releases/{live.name}" and live.name == target.release
    assert not (sshd_target.deploy_path / ".slipway" / "lock").exists()

    # A plain rollback now goes back to A, the release live before.
    Command.objects.all().delete()
    rollback = _run(services.deployment_rollback_server(server=server, user=None))
    assert rollback.status == Status.SUCCEEDED
    assert (sshd_target.deploy_path / "current" / "index.html").read_text() == "A\n"
