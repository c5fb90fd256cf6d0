"""The overview: each server and group, what is live on it, its last deployment, and how many
commits on its branch are not live yet, read from the worker's mirror without fetching."""

from __future__ import annotations

import re

import pytest

from builds.engine.git import Mirror
from builds.models import WebhookDelivery, WebhookOutcome
from builds.runner import project_dirs
from projects.services import project_create
from servers.models import GroupMember, Release, Server, ServerGroup
from tests.dashboard.support import TRUSTED

pytestmark = pytest.mark.django_db


@pytest.fixture
def repo(git_repo_factory):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    return repo


@pytest.fixture
def local_project(settings, tmp_path, repo, alice):
    settings.BUILD_DIR = tmp_path / "builds"
    settings.ALLOW_LOCAL_REPOSITORIES = True
    return project_create(owner=alice, name="Site", repository_url=repo.url)


def _fetch(project):
    mirror, _ = project_dirs(project)
    Mirror(mirror, project.repository_url, allow_local=True).fetch()


def _server(project, name, **fields):
    return Server.objects.create(
        project=project,
        name=name,
        hostname=f"{name}.example.com",
        username="deploy",
        deploy_path="/srv/site",
        host_key_fingerprint=TRUSTED,
        **fields,
    )


def _row(html: str, name: str) -> str:
    match = re.search(
        rf"<tr[^>]*>\s*<td data-label=\"(?:Server|Group)\">\s*<a [^>]*>{name}</a>.*?</tr>",
        html,
        re.S,
    )
    assert match, f"no row for {name}"
    return match.group(0)


def test_it_counts_the_commits_not_live_yet_from_the_mirror(alice_client, local_project, repo):
    first = repo.head()
    web1 = _server(local_project, "web1", environment="production")
    web2 = _server(local_project, "web2", environment="staging")
    Release.objects.create(server=web1, name="r1", revision=first, live=True)
    repo.commit({"index.html": "B\n"}, "B")
    repo.commit({"index.html": "C\n"}, "C")
    _fetch(local_project)
    Release.objects.create(server=web2, name="r3", revision=repo.head(), live=True)

    html = alice_client.get("/").content.decode()
    assert "2 undeployed commits" in _row(html, "web1")
    assert first[:7] in _row(html, "web1") and "production" in _row(html, "web1")
    assert "up to date" in _row(html, "web2")
    assert "2 undeployed commits" in _row(
        alice_client.get(f"/projects/{local_project.slug}/").content.decode(), "web1"
    )


def test_a_group_shows_its_servers_and_whether_they_agree(alice_client, local_project, repo):
    web1, web2 = _server(local_project, "web1"), _server(local_project, "web2")
    group = ServerGroup.objects.create(
        project=local_project, name="fleet", environment="production"
    )
    for position, server in enumerate((web1, web2)):
        GroupMember.objects.create(group=group, server=server, position=position)
    Release.objects.create(server=web1, name="r1", revision=repo.head(), live=True)
    html = alice_client.get("/").content.decode()
    assert "mixed" in _row(html, "fleet") and "web1, web2" in _row(html, "fleet")
    Release.objects.create(server=web2, name="r1", revision=repo.head(), live=True)
    _fetch(local_project)
    assert "up to date" in _row(alice_client.get("/").content.decode(), "fleet")


def test_it_never_fetches_and_says_nothing_without_a_mirror(
    alice_client, local_project, repo, monkeypatch
):
    def refuse(*args, **kwargs):
        raise AssertionError("a page fetched the repository")

    monkeypatch.setattr(Mirror, "fetch", refuse)
    server = _server(local_project, "web1")
    Release.objects.create(server=server, name="r1", revision=repo.head(), live=True)
    html = alice_client.get("/").content.decode()
    row = _row(html, "web1")
    assert "undeployed" not in row and "up to date" not in row
    assert "Known once a deployment or preview has fetched the repository" in row
    # The deploy page lists no commits either, and says when it will.
    page = alice_client.get(f"/projects/{local_project.slug}/deploy/").content.decode()
    assert "Recent commits are listed once" in page


def test_it_shows_the_last_deployment_and_the_last_webhook(alice_client, project, server, history):
    WebhookDelivery.objects.create(
        project=project,
        provider="gitlab",
        event="Push Hook",
        ref="refs/heads/main",
        outcome=WebhookOutcome.QUEUED,
    )
    html = alice_client.get("/").content.decode()
    row = _row(html, "web1")
    assert f"#{history[-1].pk}" in row and "Succeeded" in row
    assert "Last webhook: GitLab Push Hook" in html


def test_it_lists_only_the_projects_one_is_a_member_of(
    alice_client, charlie_client, project, charlie
):
    project_create(owner=charlie, name="Charlie's", repository_url="https://git.example.com/c.git")
    assert "Shop" in alice_client.get("/").content.decode()
    assert "Charlie&#x27;s" not in alice_client.get("/").content.decode()
    html = charlie_client.get("/").content.decode()
    assert "Charlie&#x27;s" in html and "Shop" not in html
