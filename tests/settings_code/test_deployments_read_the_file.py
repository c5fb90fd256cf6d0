"""A project that takes its settings from its repository deploys with what the revision's
.slipway.yml says: a real Git repository, a real sshd target, the worker's real run."""

from __future__ import annotations

import json

import pytest

from builds import services
from builds.models import Deployment, Kind, LogLine, Status
from builds.tasks import run_deployment
from projects.models import BuildCommand, Command, EnvironmentVariable
from servers.models import ServerGroup, Strategy

pytestmark = pytest.mark.django_db(transaction=True)

FILE = """\
# The build the repository wants, not the one typed into Slipway.
build_commands:
  - command: echo from-the-file > built.txt
    description: Build from the file
shared_paths:
  - storage/
"""


def _run(deployment: Deployment) -> Deployment:
    run_deployment.apply(args=(deployment.pk,))
    deployment.refresh_from_db()
    return deployment


def _log(deployment: Deployment) -> str:
    return "\n".join(LogLine.objects.filter(deployment=deployment).values_list("text", flat=True))


@pytest.fixture
def shop(git_repo_factory, sshd_target, project_factory, server_factory):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n", ".slipway.yml": FILE}, "First")
    project = project_factory(repo)
    BuildCommand.objects.create(project=project, command="echo from-slipway > built.txt")
    server = server_factory(project, sshd_target)
    return repo, project, server


def test_it_runs_the_build_command_of_the_file(shop, sshd_target):
    _repo, project, server = shop
    project.settings_from_repository = True
    project.save()

    deployment = _run(services.deployment_create(project=project, servers=[server]))

    assert deployment.status == Status.SUCCEEDED, deployment.error
    log = _log(deployment)
    assert "$ echo from-the-file > built.txt" in log
    assert "from-slipway" not in log
    assert "Settings from .slipway.yml at" in log
    assert "build_commands, shared_paths" in log
    current = sshd_target.deploy_path / "current"
    assert (current / "built.txt").read_text() == "from-the-file\n"
    # The file's shared path is linked from shared/ like the project's own.
    assert (current / "storage").is_symlink()
    record = deployment.settings_file
    assert record["found"] is True
    assert record["keys"] == ["build_commands", "shared_paths"]
    assert record["changed"]["build_commands"]["project"][0]["command"] == (
        "echo from-slipway > built.txt"
    )
    assert record["changed"]["build_commands"]["file"][0]["command"] == (
        "echo from-the-file > built.txt"
    )


def test_it_ignores_the_file_of_a_project_that_did_not_opt_in(shop, sshd_target):
    _repo, project, server = shop

    deployment = _run(services.deployment_create(project=project, servers=[server]))

    assert deployment.status == Status.SUCCEEDED, deployment.error
    assert "$ echo from-slipway > built.txt" in _log(deployment)
    assert "from-the-file" not in _log(deployment)
    assert deployment.settings_file == {}
    assert (sshd_target.deploy_path / "current" / "built.txt").read_text() == "from-slipway\n"


def test_it_fails_before_sending_anything_when_the_file_is_invalid(shop, sshd_target):
    repo, project, server = shop
    project.settings_from_repository = True
    project.save()
    repo.commit(
        {".slipway.yml": "build_commands:\n  - command: make\n    timeout_seconds: ten\n"},
        "Break the settings",
    )

    deployment = _run(services.deployment_create(project=project, servers=[server]))

    assert deployment.status == Status.FAILED
    assert deployment.error == (
        ".slipway.yml line 3: build_commands[0].timeout_seconds: must be a whole number "
        "(integer) or empty (null), not 'ten'."
    )
    assert "line 3" in _log(deployment)
    assert "$ make" not in _log(deployment)
    assert not (sshd_target.deploy_path / "releases").exists() or not any(
        (sshd_target.deploy_path / "releases").iterdir()
    )


def test_it_uses_the_projects_settings_when_the_revision_has_no_file(
    git_repo_factory, sshd_target, project_factory, server_factory
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "First")
    project = project_factory(repo, settings_from_repository=True)
    BuildCommand.objects.create(project=project, command="echo from-slipway > built.txt")
    server = server_factory(project, sshd_target)

    deployment = _run(services.deployment_create(project=project, servers=[server]))

    assert deployment.status == Status.SUCCEEDED, deployment.error
    assert "No .slipway.yml at" in _log(deployment)
    assert "$ echo from-slipway > built.txt" in _log(deployment)
    assert deployment.settings_file["found"] is False


def test_it_runs_the_files_ssh_commands_and_group_strategy(
    git_repo_factory, sshd_target, project_factory, server_factory
):
    repo = git_repo_factory()
    repo.commit(
        {
            "index.html": "A\n",
            ".slipway.yml": (
                "commands:\n"
                "  - command: echo ran-from-file > ../../after.txt\n"
                "    stage: after_switch\n"
                "health_checks:\n"
                "  - kind: command\n"
                "    command: test -f index.html && echo checked-from-file\n"
                "    retries: 1\n"
                "groups:\n"
                "  production:\n"
                "    strategy: rolling\n"
                "    batch_size: 1\n"
            ),
        },
        "First",
    )
    project = project_factory(repo, settings_from_repository=True)
    Command.objects.create(project=project, command="echo from-slipway", stage="after_switch")
    server = server_factory(project, sshd_target)
    group = ServerGroup.objects.create(project=project, name="production")
    group.members.create(server=server)

    deployment = _run(services.deployment_create(project=project, group=group))

    assert deployment.status == Status.SUCCEEDED, deployment.error
    log = _log(deployment)
    assert "echo ran-from-file" in log
    assert "echo from-slipway" not in log
    assert "checked-from-file" in log
    assert deployment.settings_file["changed"]["groups"] == {
        "project": {"production": _strategy_defaults() | {"strategy": Strategy.PARALLEL}},
        "file": {"production": _strategy_defaults() | {"strategy": "rolling", "batch_size": "1"}},
    }
    assert (sshd_target.deploy_path / "after.txt").read_text() == "ran-from-file\n"


def _strategy_defaults() -> dict[str, object]:
    return {
        "strategy": "parallel",
        "max_parallel": 5,
        "batch_size": "1",
        "canary_count": 1,
        "canary_window_seconds": 0,
        "promotion": "auto",
        "pause_seconds": 0,
    }


def test_a_preview_records_the_effective_settings_and_what_the_file_changed(shop):
    _repo, project, server = shop
    project.settings_from_repository = True
    project.save()

    preview = _run(services.deployment_create(project=project, servers=[server], kind=Kind.PREVIEW))

    assert preview.status == Status.SUCCEEDED, preview.error
    assert "$ echo from-the-file > built.txt" in _log(preview)
    assert preview.settings_file["effective"]["build_commands"][0]["command"] == (
        "echo from-the-file > built.txt"
    )
    assert preview.settings_file["effective"]["shared_paths"] == ["storage/"]
    assert set(preview.settings_file["changed"]) == {"build_commands", "shared_paths"}
    assert "built.txt" in preview.changes["added"]


def test_a_secret_the_file_holds_is_masked_in_what_is_recorded(
    git_repo_factory, sshd_target, project_factory, server_factory
):
    secret = "tok-settings-file-9f8e7d6c"
    repo = git_repo_factory()
    repo.commit(
        {
            "index.html": "A\n",
            ".slipway.yml": f"build_commands:\n  - command: test -n {secret}\n",
        },
        "First",
    )
    project = project_factory(repo, settings_from_repository=True)
    EnvironmentVariable.objects.create(project=project, name="TOKEN", value=secret, secret=True)
    server = server_factory(project, sshd_target)

    deployment = _run(services.deployment_create(project=project, servers=[server]))

    assert deployment.status == Status.SUCCEEDED, deployment.error
    assert secret not in json.dumps(deployment.settings_file)
    assert secret not in _log(deployment)
    assert deployment.settings_file["effective"]["build_commands"][0]["command"].startswith(
        "test -n "
    )
