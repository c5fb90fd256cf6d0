"""The security review's finding, replayed through the database and the Celery task.

Project A's build command tries to read project B's secrets, Slipway's data directory and the
worker's environment; B's deploy key and variables never reach A's log, and A cannot touch B's
live release.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings

from builds import services
from builds.models import Deployment, LogLine, Status
from builds.tasks import run_deployment
from projects.models import BuildCommand, EnvironmentVariable

pytestmark = pytest.mark.django_db(transaction=True)

B_SECRET = "b-secret-value-81c3e0"


def _run(deployment: Deployment) -> Deployment:
    run_deployment.apply(args=(deployment.pk,))
    deployment.refresh_from_db()
    return deployment


def _log(deployment: Deployment) -> str:
    return "\n".join(LogLine.objects.filter(deployment=deployment).values_list("text", flat=True))


def test_a_build_of_one_project_cannot_read_another_projects_secrets(
    git_repo_factory, sshd_factory, project_factory, server_factory, alice
):
    repo_b = git_repo_factory("bravo")
    repo_b.commit({"index.html": "B live\n"})
    project_b = project_factory(repo_b, name="Bravo")
    target_b = sshd_factory()
    server_b = server_factory(project_b, target_b)
    EnvironmentVariable.objects.create(
        project=project_b, name="B_TOKEN", value=B_SECRET, secret=True, build=True
    )
    b_deploy = _run(services.deployment_create(project=project_b, servers=[server_b], user=alice))
    assert b_deploy.status == Status.SUCCEEDED, b_deploy.error

    repo_a = git_repo_factory("alpha")
    repo_a.commit({"index.html": "A\n"})
    project_a = project_factory(repo_a, name="Alpha")
    target_a = sshd_factory()
    server_a = server_factory(project_a, target_a)
    data_dir = Path(settings.DATA_DIR)
    build_dir = Path(settings.BUILD_DIR)
    b_home = build_dir / f"project-{project_b.pk}"
    hostile = " ; ".join(
        [
            f"ls -laR {data_dir}",
            f"cat {data_dir}/*.key {data_dir}/*.sqlite3",
            f"ls -laR {b_home}",
            f"cat {b_home}/workspace/index.html",
            "cat /proc/*/environ | tr '\\0' '\\n'",
            "env",
            # With B's key A could log in to B's server and replace B's live release.
            f"ssh -o BatchMode=yes -o StrictHostKeyChecking=no -p {target_b.port} "
            f"{target_b.username}@127.0.0.1 'echo pwned > {target_b.deploy_path}/current/index.html'",
            "true",
        ]
    )
    BuildCommand.objects.create(project=project_a, command=hostile, halt_on_error=False)
    a_deploy = _run(services.deployment_create(project=project_a, servers=[server_a], user=alice))
    assert a_deploy.status == Status.SUCCEEDED, a_deploy.error
    log = _log(a_deploy)
    assert "$ ls -laR" in log  # the command really ran
    assert B_SECRET not in log
    assert "PRIVATE KEY" not in log
    assert "SLIPWAY_SECRET_KEY=" not in log and "SLIPWAY_ENCRYPTION_KEYS=" not in log
    assert settings.SECRET_KEY not in log
    for key in settings.ENCRYPTION_KEYS:
        assert key not in log
    assert (target_b.deploy_path / "current" / "index.html").read_text() == "B live\n"
    # What A's build can see of the worker's machine is the system, read-only.
    assert not (Path("/usr/local") / "pwned").exists()
