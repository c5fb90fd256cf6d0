"""A branch the repository does not have is refused when a project or a server is saved,
naming the branches it has (from `git ls-remote` on a real repository); a local repository
on a Slipway that refuses them names the setting that allows them."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


@pytest.fixture
def branched(git_repo_factory):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    repo.branch("develop")
    repo.commit({"index.html": "B\n"}, "B")
    repo.switch("main")
    return repo


def _create(api, repo, branch):
    return api.post(
        "/api/v1/projects/",
        {"name": "Shop", "repository_url": repo.url, "branch": branch},
        format="json",
    )


def test_it_refuses_a_project_branch_the_repository_lacks(alice_api, site_admin, branched):
    refused = _create(alice_api, branched, "mian")
    assert refused.status_code == 400, refused.content
    (message,) = refused.json()["branch"]
    assert "'mian' is not a branch of" in message
    assert "Its branches: develop, main." in message

    created = _create(alice_api, branched, "develop")
    assert created.status_code == 201, created.content
    slug = created.json()["slug"]
    changed = alice_api.patch(f"/api/v1/projects/{slug}/", {"branch": "release"}, format="json")
    assert changed.status_code == 400
    assert "Its branches: develop, main." in changed.json()["branch"][0]
    assert alice_api.get(f"/api/v1/projects/{slug}/").json()["branch"] == "develop"
    assert (
        alice_api.patch(f"/api/v1/projects/{slug}/", {"branch": "main"}, format="json").status_code
        == 200
    )


def test_it_refuses_a_server_branch_the_repository_lacks(alice_api, site_admin, branched):
    slug = _create(alice_api, branched, "main").json()["slug"]
    server = {
        "name": "web1",
        "hostname": "web1.example.com",
        "username": "deploy",
        "deploy_path": "/srv/shop",
    }
    refused = alice_api.post(
        f"/api/v1/projects/{slug}/servers/", {**server, "branch": "feature/x"}, format="json"
    )
    assert refused.status_code == 400, refused.content
    assert "'feature/x' is not a branch" in refused.json()["branch"][0]
    assert "develop, main" in refused.json()["branch"][0]

    created = alice_api.post(
        f"/api/v1/projects/{slug}/servers/", {**server, "branch": "develop"}, format="json"
    )
    assert created.status_code == 201, created.content
    moved = alice_api.patch(
        f"/api/v1/projects/{slug}/servers/{created.json()['id']}/",
        {"branch": "gone"},
        format="json",
    )
    assert moved.status_code == 400 and "branch" in moved.json()


def test_it_accepts_any_branch_when_the_repository_cannot_be_listed(alice_api, site_admin):
    # Nothing answers there: the deployment will say what is wrong, the save is not refused.
    created = alice_api.post(
        "/api/v1/projects/",
        {"name": "Shop", "repository_url": "https://git.invalid/shop.git", "branch": "any"},
        format="json",
    )
    assert created.status_code == 201, created.content


def test_it_names_the_setting_that_allows_local_repositories(
    alice_api, site_admin, branched, settings
):
    settings.ALLOW_LOCAL_REPOSITORIES = False
    for url in (str(branched.path), branched.url):
        refused = alice_api.post(
            "/api/v1/projects/", {"name": "Shop", "repository_url": url}, format="json"
        )
        assert refused.status_code == 400
        (message,) = refused.json()["repository_url"]
        assert "SLIPWAY_ALLOW_LOCAL_REPOSITORIES=true" in message, url
