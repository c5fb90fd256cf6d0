"""Cancel stops a remote command that has no timeout: through the runner, as a user's click
does it (services.deployment_request_cancel), the command's whole process group is killed,
the deploy lock goes only once it is dead, and the next deployment to the server succeeds."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection

from builds import services
from builds.models import Deployment, Status, TargetStatus
from builds.tasks import run_deployment
from projects.models import Command
from tests.engine.test_stopping_commands import _sleeping

pytestmark = pytest.mark.django_db(transaction=True)


def _run(deployment: Deployment) -> Deployment:
    run_deployment.apply(args=(deployment.pk,))
    deployment.refresh_from_db()
    return deployment


def test_cancel_kills_a_command_without_timeout_and_frees_the_server(
    git_repo_factory, sshd_target, project_factory, server_factory
):
    marker = sshd_target.deploy_path.parent / "marker-cancelled"
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    server = server_factory(project, sshd_target)
    Command.objects.create(
        project=project,
        stage="before_switch",
        command=f"echo hanging; (sleep 3600.01; touch {marker}) & sleep 3600.01",
    )
    deployment = services.deployment_create(project=project, servers=[server])

    def work() -> None:
        try:
            run_deployment.apply(args=(deployment.pk,))
        finally:
            connection.close()  # this thread's own connection

    worker = threading.Thread(target=work)
    worker.start()
    deadline = time.monotonic() + 60
    while len(_sleeping("3600.01")) < 2:
        assert worker.is_alive() and time.monotonic() < deadline, "the command never started"
        time.sleep(0.05)

    assert services.deployment_request_cancel(deployment)
    worker.join(timeout=60)

    assert not worker.is_alive(), "cancel did not stop the command"
    deployment.refresh_from_db()
    assert deployment.status == Status.CANCELLED
    assert deployment.targets.get().status == TargetStatus.CANCELLED
    assert _sleeping("3600.01") == []
    assert not (sshd_target.deploy_path / ".slipway" / "lock").exists()
    assert not marker.exists()

    Command.objects.all().delete()
    assert (
        _run(services.deployment_create(project=project, servers=[server])).status
        == Status.SUCCEEDED
    )
    assert (sshd_target.deploy_path / "current" / "index.html").read_text() == "A\n"


def test_the_time_limit_kills_a_command_without_timeout_before_the_worker_would(
    git_repo_factory, sshd_target, project_factory, server_factory, settings
):
    # The worker's soft time limit (the same setting) interrupts only the worker's own
    # thread; the deployment stops its remote commands before it.
    settings.DEPLOYMENT_TIME_LIMIT = 6
    marker = sshd_target.deploy_path.parent / "marker-time-limit"
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    server = server_factory(project, sshd_target)
    Command.objects.create(
        project=project, stage="before_switch", command=f"sleep 3600.02; touch {marker}"
    )

    deployment = _run(services.deployment_create(project=project, servers=[server]))

    assert deployment.status == Status.FAILED
    assert deployment.error_code == "deployment_timed_out"
    assert "time limit (6 s, SLIPWAY_DEPLOYMENT_TIME_LIMIT)" in deployment.error
    assert _sleeping("3600.02") == []
    assert not (sshd_target.deploy_path / ".slipway" / "lock").exists()
    assert not (sshd_target.deploy_path / "current").exists()

    Command.objects.all().delete()
    settings.DEPLOYMENT_TIME_LIMIT = 3600
    assert (
        _run(services.deployment_create(project=project, servers=[server])).status
        == Status.SUCCEEDED
    )
