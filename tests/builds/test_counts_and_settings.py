"""Counts and settings as people read them: change sets count files, `keep_releases` is the
number of releases on disk, SSH commands are listed in the order they run. Real Git
repositories and real sshd targets."""

from __future__ import annotations

import pytest

from builds import services
from builds.models import Deployment, LogLine, Status
from builds.tasks import run_deployment
from projects.models import Command
from servers.models import Release
from tests.api.conftest import client_for

pytestmark = pytest.mark.django_db(transaction=True)


def _run(deployment: Deployment) -> Deployment:
    run_deployment.apply(args=(deployment.pk,))
    deployment.refresh_from_db()
    assert deployment.status == Status.SUCCEEDED, deployment.error
    return deployment


def _log(deployment: Deployment) -> str:
    return "\n".join(LogLine.objects.filter(deployment=deployment).values_list("text", flat=True))


def _on_disk(target) -> list[str]:
    return sorted(p.name for p in (target.deploy_path / "releases").iterdir())


def test_change_sets_count_files_not_folders(
    git_repo_factory, sshd_target, project_factory, server_factory, alice
):
    repo = git_repo_factory()
    tree = {
        "README.md": "hello\n",
        "app/models/user.py": "u = 1\n",
        "app/models/order.py": "o = 1\n",
        "app/views/home.py": "h = 1\n",
    }
    repo.commit(tree, "First")
    project = project_factory(repo)
    server = server_factory(project, sshd_target)
    first = _run(services.deployment_create(project=project, servers=[server], user=alice))
    assert sorted(first.changes["added"]) == sorted(tree)
    assert "4 files added, 0 modified, 0 deleted" in _log(first)
    target = first.targets.get()
    assert (target.files_done, target.files_total) == (4, 4), "the progress counts files too"

    repo.commit({path: None for path in tree if path.startswith("app/")}, "Drop app/")
    second = _run(services.deployment_create(project=project, servers=[server], user=alice))
    answer = client_for(alice).get(f"/api/v1/deployments/{second.pk}/").json()
    assert sorted(answer["changes"]["deleted"]) == [
        "app/models/order.py",
        "app/models/user.py",
        "app/views/home.py",
    ], "the three files, not the folders app, app/models and app/views"
    assert answer["changes"]["added"] == [] and answer["changes"]["modified"] == []
    assert "0 files added, 0 modified, 3 deleted" in _log(second)
    assert not (sshd_target.deploy_path / "current" / "app").exists(), "folders still go"


def test_keep_releases_is_the_number_of_releases_on_disk(
    git_repo_factory, sshd_target, project_factory, server_factory, alice
):
    repo = git_repo_factory()
    project = project_factory(repo)
    server = server_factory(project, sshd_target, keep_releases=2)

    def deploy(text: str) -> str:
        repo.commit({"index.html": f"{text}\n"}, text)
        _run(services.deployment_create(project=project, servers=[server], user=alice))
        return Release.objects.get(server=server, live=True).name

    a, b = deploy("A"), deploy("B")
    c = deploy("C")
    assert _on_disk(sshd_target) == [b, c]
    _run(services.deployment_rollback_server(server=server, user=alice))  # B live
    d = deploy("D")
    assert _on_disk(sshd_target) == [b, d], "the live one and the one a rollback returns to"
    kept = Release.objects.filter(server=server, removed_at__isnull=True)
    assert sorted(kept.values_list("name", flat=True)) == [b, d]
    assert a not in _on_disk(sshd_target)

    server.keep_releases = 3
    server.save()
    _run(services.deployment_rollback_server(server=server, user=alice))  # B live again
    e = deploy("E")
    assert _on_disk(sshd_target) == [b, d, e]


def test_keep_releases_below_two_is_refused_naming_the_field(alice, project_factory, repo):
    project = project_factory(repo)
    answer = client_for(alice).post(
        f"/api/v1/projects/{project.slug}/servers/",
        {
            "name": "web1",
            "hostname": "127.0.0.1",
            "username": "deploy",
            "deploy_path": "/srv/app",
            "keep_releases": 1,
        },
        format="json",
    )
    assert answer.status_code == 400
    assert "keep_releases" in answer.json()


def test_ssh_commands_are_listed_in_the_order_they_run(alice, project_factory, repo):
    project = project_factory(repo)
    for stage, position, name in [
        ("after_switch", 0, "reload"),
        ("before_switch", 1, "migrate"),
        ("before_transfer", 0, "maintenance"),
        ("before_switch", 0, "composer"),
    ]:
        Command.objects.create(
            project=project, stage=stage, position=position, description=name, command="true"
        )
    answer = client_for(alice).get(f"/api/v1/projects/{project.slug}/commands/").json()
    items = answer["results"] if isinstance(answer, dict) else answer
    assert [item["description"] for item in items] == [
        "maintenance",
        "composer",
        "migrate",
        "reload",
    ]


@pytest.fixture
def repo(git_repo_factory):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    return repo
