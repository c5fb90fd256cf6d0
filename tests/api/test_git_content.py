"""A repository holding file names that are not UTF-8, on a branch with a Unicode name, is
deployed through the API; the deployment, its releases and its page read back without a 500
(on SQLite and, with DATABASE_URL, PostgreSQL, whose jsonb refuses lone surrogates)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from builds.models import Status
from builds.tasks import run_deployment
from projects.services import project_create
from servers.models import Release
from tests.dashboard.support import signed_in

pytestmark = pytest.mark.django_db(transaction=True)

BRANCH = "feature/ünïcode"
LATIN_1 = b"caf\xe9.txt"
NAMES = [LATIN_1, b"line\nbreak.txt", "naïve.txt".encode(), b"-dash \\ slash.txt"]


def _deploy(api, project, server) -> dict[str, Any]:
    created = api.post(
        f"/api/v1/projects/{project.slug}/deployments/", {"servers": [server.pk]}, format="json"
    )
    assert created.status_code == 201, created.content
    run_deployment.apply(args=(created.json()["id"],))
    answer = api.get(created.json()["url"])
    assert answer.status_code == 200
    return answer.json()


def test_it_deploys_names_that_are_not_utf8_and_shows_them_everywhere(
    alice, alice_api, git_repo_factory, sshd_target, server_factory
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    repo.branch(BRANCH)
    repo.commit({os.fsdecode(name): name for name in NAMES}, "Odd names")
    project = project_create(owner=alice, name="Shop", repository_url=repo.url)
    server = server_factory(project, sshd_target)
    saved = alice_api.patch(f"/api/v1/projects/{project.slug}/", {"branch": BRANCH}, format="json")
    assert saved.status_code == 200, saved.content
    assert saved.json()["branch"] == BRANCH

    first = _deploy(alice_api, project, server)

    assert first["status"] == Status.SUCCEEDED, first["error"]
    current = os.fsencode(sshd_target.deploy_path / "current")
    for name in NAMES:
        with open(os.path.join(current, name), "rb") as deployed:
            assert deployed.read() == name
    assert "caf\\xe9.txt" in first["changes"]["added"]
    assert "line\\nbreak.txt" in first["changes"]["added"]
    assert "naïve.txt" in first["changes"]["added"]

    # The release's manifest went through the database and is read back for the next one.
    repo.commit({os.fsdecode(LATIN_1): b"v2"}, "Change the Latin-1 file")
    second = _deploy(alice_api, project, server)
    assert second["status"] == Status.SUCCEEDED, second["error"]
    assert second["changes"]["modified"] == ["caf\\xe9.txt"]
    with open(os.path.join(os.fsencode(sshd_target.deploy_path / "current"), LATIN_1), "rb") as f:
        assert f.read() == b"v2"
    assert Release.objects.filter(server=server).count() == 2

    releases = alice_api.get(f"/api/v1/projects/{project.slug}/servers/{server.pk}/releases/")
    assert releases.status_code == 200
    page = signed_in(alice).get(f"/projects/{project.slug}/deployments/{second['id']}/")
    assert page.status_code == 200
    assert "caf\\xe9.txt" in page.content.decode()
    listing = signed_in(alice).get(f"/projects/{project.slug}/deployments/")
    assert listing.status_code == 200


def test_export_ignore_is_on_by_default_and_the_project_can_turn_it_off(
    alice, alice_api, git_repo_factory, sshd_target, server_factory
):
    repo = git_repo_factory()
    repo.commit({".gitattributes": "/tests export-ignore\n", "tests/t.php": "t\n", "a.php": "a\n"})
    project = project_create(owner=alice, name="Shop", repository_url=repo.url)
    server = server_factory(project, sshd_target)
    assert alice_api.get(f"/api/v1/projects/{project.slug}/").json()["export_ignore"] is True

    first = _deploy(alice_api, project, server)
    assert first["status"] == Status.SUCCEEDED, first["error"]
    assert not (sshd_target.deploy_path / "current" / "tests").exists()

    bad = alice_api.patch(
        f"/api/v1/projects/{project.slug}/", {"export_ignore": "maybe"}, format="json"
    )
    assert bad.status_code == 400 and "export_ignore" in bad.json()
    off = alice_api.patch(
        f"/api/v1/projects/{project.slug}/", {"export_ignore": False}, format="json"
    )
    assert off.status_code == 200 and off.json()["export_ignore"] is False
    second = _deploy(alice_api, project, server)
    assert second["status"] == Status.SUCCEEDED, second["error"]
    assert "tests/t.php" in second["changes"]["added"]
    assert (sshd_target.deploy_path / "current" / "tests" / "t.php").read_text() == "t\n"

    # The settings page shows the boxes; ticking one turns it on, leaving one off turns it off.
    client = signed_in(alice)
    path = f"/projects/{project.slug}/settings/"
    page = client.get(path).content.decode()
    assert 'name="export_ignore"' in page and 'name="submodules"' in page
    form = {"name": "Shop", "repository_url": repo.url, "branch": "main", "export_ignore": "on"}
    assert client.post(path, form).status_code == 302
    project.refresh_from_db()
    assert (project.export_ignore, project.submodules) == (True, False)
