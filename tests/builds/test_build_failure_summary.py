"""A failed build says what went wrong once: the deployment's error shows the first lines that
read as errors (not the tool's usage text that follows them), the log says it failed in one
line under the output, and the servers it never reached do not repeat the paragraph."""

from __future__ import annotations

import pytest

from builds import services
from builds.models import LogLine, Status, TargetStatus
from builds.tasks import run_deployment
from projects.models import BuildCommand

pytestmark = pytest.mark.django_db(transaction=True)

# What `npm run build` prints for a project without a build script, and then its usage text.
NPM_WITHOUT_BUILD_SCRIPT = (
    "echo '> shop@1.0.0 build'; "
    "echo 'npm ERR! Missing script: \"build\"' >&2; "
    "echo 'npm ERR! A complete log of this run can be found in: /home/x/.npm/_logs/1.log' >&2; "
    "echo 'Usage: npm <command>'; "
    'for i in $(seq 1 30); do echo "    npm option$i   what option $i does"; done; exit 1'
)


def test_a_failed_build_shows_its_first_error_lines_once(
    git_repo_factory, sshd_target, project_factory, server_factory
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    BuildCommand.objects.create(project=project, command=NPM_WITHOUT_BUILD_SCRIPT)
    servers = [server_factory(project, sshd_target), server_factory(project, sshd_target)]

    deployment = services.deployment_create(project=project, servers=servers)
    run_deployment.apply(args=(deployment.pk,))
    deployment.refresh_from_db()

    assert deployment.status == Status.FAILED
    assert deployment.error_code == "command_failed"
    assert "failed with exit code 1. First error lines:\n" in deployment.error
    assert deployment.error.endswith(
        'npm ERR! Missing script: "build"\n'
        "npm ERR! A complete log of this run can be found in: /home/x/.npm/_logs/1.log"
    )
    shown = deployment.error.split("First error lines:\n", 1)[1]
    assert "option" not in shown and "Usage" not in shown

    reasons = set(deployment.targets.values_list("status", "reason"))
    assert reasons == {(TargetStatus.FAILED, services.NOT_REACHED)}

    log = list(LogLine.objects.filter(deployment=deployment).values_list("text", flat=True))
    failed = [line for line in log if line.startswith("Failed:")]
    assert len(failed) == 1
    assert failed[0].endswith("failed with exit code 1")
    assert log.count('npm ERR! Missing script: "build"') == 1  # the output itself, once


def test_a_failed_build_without_error_words_shows_its_last_lines(
    git_repo_factory, sshd_target, project_factory, server_factory
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    BuildCommand.objects.create(project=project, command="echo one; echo two; exit 3")
    server = server_factory(project, sshd_target)
    deployment = services.deployment_create(project=project, servers=[server])
    run_deployment.apply(args=(deployment.pk,))
    deployment.refresh_from_db()
    assert deployment.status == Status.FAILED
    assert deployment.error.endswith("failed with exit code 3:\none\ntwo")
