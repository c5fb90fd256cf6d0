"""A repository with a submodule and a Git LFS file, deployed through the API and the
Celery task; what cannot be had fails the deployment naming the path."""

from __future__ import annotations

import os
from typing import Any

import pytest

from builds.models import Status
from builds.tasks import run_deployment
from projects.services import project_create

pytestmark = pytest.mark.django_db(transaction=True)

IMAGE = os.urandom(30_000)


def _deploy(api, project, server) -> dict[str, Any]:
    created = api.post(
        f"/api/v1/projects/{project.slug}/deployments/", {"servers": [server.pk]}, format="json"
    )
    assert created.status_code == 201, created.content
    run_deployment.apply(args=(created.json()["id"],))
    return dict(api.get(created.json()["url"]).json())


@pytest.fixture
def app(git_repo_factory):
    lib = git_repo_factory("lib")
    lib.commit({"lib.php": "<?php // lib\n"}, "Lib")
    app = git_repo_factory("app")
    app.git("lfs", "install", "--local")
    app.git("lfs", "track", "*.png")
    app.commit({"index.php": "<?php\n", "logo.png": IMAGE}, "App")
    app.git("-c", "protocol.file.allow=always", "submodule", "add", "--quiet", "../lib", "lib")
    app.git("commit", "--quiet", "-m", "Add lib")
    return app


def test_it_deploys_a_submodule_and_an_lfs_file_and_the_project_can_turn_submodules_off(
    alice, alice_api, app, sshd_target, server_factory
):
    project = project_create(owner=alice, name="Shop", repository_url=app.url)
    server = server_factory(project, sshd_target)
    assert alice_api.get(f"/api/v1/projects/{project.slug}/").json()["submodules"] is True

    first = _deploy(alice_api, project, server)

    assert first["status"] == Status.SUCCEEDED, first["error"]
    current = sshd_target.deploy_path / "current"
    assert (current / "lib" / "lib.php").read_text() == "<?php // lib\n"
    assert (current / "logo.png").read_bytes() == IMAGE
    assert "lib/lib.php" in first["changes"]["added"]

    off = alice_api.patch(f"/api/v1/projects/{project.slug}/", {"submodules": False}, format="json")
    assert off.status_code == 200 and off.json()["submodules"] is False
    second = _deploy(alice_api, project, server)
    assert second["status"] == Status.SUCCEEDED, second["error"]
    assert second["changes"]["deleted"] == ["lib/lib.php"]
    assert list((sshd_target.deploy_path / "current" / "lib").iterdir()) == []


def test_a_submodule_inside_slipways_own_directories_is_refused_naming_the_path(
    alice, alice_api, git_repo_factory, sshd_target, server_factory, settings
):
    # A .gitmodules may name any URL: the same rules as the repository's apply to it.
    app = git_repo_factory("app")
    app.commit({"index.php": "<?php\n"})
    inside = os.path.join(settings.DATA_DIR, "other-project.git")
    (app.path / ".gitmodules").write_text(
        f'[submodule "stolen"]\n\tpath = vendor/stolen\n\turl = {inside}\n'
    )
    app.git("add", ".gitmodules")
    app.git("update-index", "--add", "--cacheinfo", f"160000,{app.head()},vendor/stolen")
    app.git("commit", "--quiet", "-m", "A submodule pointing into Slipway's data")
    project = project_create(owner=alice, name="Shop", repository_url=app.url)
    server = server_factory(project, sshd_target)

    deployment = _deploy(alice_api, project, server)

    assert deployment["status"] == Status.FAILED
    assert deployment["error_code"] == "submodule_unavailable"
    assert "Submodule vendor/stolen" in deployment["error"]
    assert "Slipway's own data" in deployment["error"]


def test_a_missing_lfs_object_fails_the_deployment_naming_the_file(
    alice, alice_api, app, sshd_target, server_factory
):
    for objects in (app.path / ".git" / "lfs" / "objects").iterdir():
        for child in objects.rglob("*"):
            if child.is_file():
                child.unlink()
    project = project_create(owner=alice, name="Shop", repository_url=app.url)
    server = server_factory(project, sshd_target)

    deployment = _deploy(alice_api, project, server)

    assert deployment["status"] == Status.FAILED
    assert deployment["error_code"] == "lfs_unavailable"
    assert "logo.png" in deployment["error"]
