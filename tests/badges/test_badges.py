"""Status badges (docs/badges.md): an SVG per project and per server behind an unguessable
URL, for anyone with it, after real deployments to sshd targets; an admin rotates the URL."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from urllib.parse import urlsplit

import pytest
from django.test import Client

from builds import services
from builds.models import Deployment, Status
from builds.tasks import run_deployment
from projects.models import AuditEvent, Command, Membership, Role
from servers.models import Server
from tests.api.conftest import client_for
from tests.dashboard.support import signed_in

pytestmark = pytest.mark.django_db(transaction=True)

SVG = "image/svg+xml; charset=utf-8"


def _badge(url: str, **headers):
    return Client().get(urlsplit(url).path, headers=headers)


def _texts(response) -> list[str]:
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == SVG
    root = ET.fromstring(response.content)  # noqa: S314 (our own SVG, parsed in a test)
    return [node.text or "" for node in root.iter("{http://www.w3.org/2000/svg}text")]


def _run(deployment: Deployment) -> Deployment:
    run_deployment.apply(args=(deployment.pk,))
    deployment.refresh_from_db()
    return deployment


def test_a_new_project_and_server_say_never_deployed_to_anyone_with_the_url(
    sshd_target, git_repo_factory, project_factory, server_factory
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    server = server_factory(project, sshd_target, name="app1")

    project_badge = _badge(project.badge_url)
    assert "never deployed" in _texts(project_badge) and "deploy" in _texts(project_badge)
    assert project_badge["Cache-Control"] == "no-cache, max-age=0"
    assert project_badge["Content-Security-Policy"].startswith("default-src 'none'")
    assert "app1" in _texts(_badge(project.server_badge_url(server.pk)))
    assert len(project.badge_token) >= 32


def test_badges_follow_real_deployments_success_then_failure(
    sshd_target, git_repo_factory, project_factory, server_factory, alice
):
    repo = git_repo_factory()
    first = repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    server = server_factory(project, sshd_target, name="app1")
    succeeded = _run(services.deployment_create(project=project, servers=[server], user=alice))
    assert succeeded.status == Status.SUCCEEDED, succeeded.error

    assert f"succeeded {first[:7]}" in _texts(_badge(project.badge_url))
    assert f"succeeded, live {first[:7]}" in _texts(_badge(project.server_badge_url(server.pk)))
    assert b"#4c1" in _badge(project.badge_url).content

    second = repo.commit({"index.html": "B\n"}, "B")
    Command.objects.create(project=project, stage="before_switch", command="exit 3")
    failed = _run(services.deployment_create(project=project, servers=[server], user=alice))
    assert failed.status == Status.FAILED

    assert f"failed {second[:7]}" in _texts(_badge(project.badge_url))
    # The server failed to take B: A is still what it serves.
    assert f"failed, live {first[:7]}" in _texts(_badge(project.server_badge_url(server.pk)))
    assert b"#e05d44" in _badge(project.badge_url).content


def test_an_unchanged_badge_is_a_304_to_a_client_that_has_it(
    sshd_target, git_repo_factory, project_factory
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    first = _badge(project.badge_url)
    again = _badge(project.badge_url, if_none_match=first["ETag"])
    assert again.status_code == 304 and again.content == b""


def test_unknown_tokens_and_other_projects_servers_are_404s(
    sshd_target, git_repo_factory, project_factory, server_factory, bob
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    mine = project_factory(repo, name="Mine")
    theirs = project_factory(repo, name="Theirs", owner=bob)
    their_server = server_factory(theirs, sshd_target)

    assert Client().get("/badges/not-a-token.svg").status_code == 404
    assert _badge(mine.server_badge_url(their_server.pk)).status_code == 404
    assert _badge(theirs.server_badge_url(their_server.pk)).status_code == 200


def test_text_from_names_is_escaped_in_the_svg(sshd_target, git_repo_factory, project_factory):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    server = Server.objects.create(
        project=project,
        name='<script>alert("x")</script>&',
        hostname="127.0.0.1",
        username="deploy",
        deploy_path="/srv/app",
    )
    response = _badge(project.server_badge_url(server.pk))
    assert b"<script>" not in response.content
    assert '<script>alert("x")</script>&' in _texts(response)


def test_an_admin_rotates_the_urls_through_the_api_and_the_old_ones_stop(
    git_repo_factory, project_factory, server_factory, sshd_target, alice, bob
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    server = server_factory(project, sshd_target)
    Membership.objects.create(project=project, user=bob, role=Role.DEPLOYER)
    old_project, old_server = project.badge_url, project.server_badge_url(server.pk)

    seen = client_for(bob).get(f"/api/v1/projects/{project.slug}/").json()
    assert seen["badge_url"] == old_project
    listed = client_for(bob).get(f"/api/v1/projects/{project.slug}/servers/").json()
    assert [item["badge_url"] for item in listed] == [old_server]
    refused = client_for(bob).post(f"/api/v1/projects/{project.slug}/badge/rotate/")
    assert refused.status_code == 403

    rotated = client_for(alice).post(f"/api/v1/projects/{project.slug}/badge/rotate/")
    assert rotated.status_code == 200, rotated.content
    project.refresh_from_db()
    assert rotated.json()["badge_url"] == project.badge_url != old_project
    assert _badge(old_project).status_code == 404 and _badge(old_server).status_code == 404
    assert _badge(project.badge_url).status_code == 200
    assert _badge(project.server_badge_url(server.pk)).status_code == 200
    event = AuditEvent.objects.get(action="project.badge_rotated")
    assert event.actor == alice and project.badge_token not in str(event.detail)


def test_the_dashboard_shows_the_badges_and_an_admin_rotates_them(
    git_repo_factory, project_factory, server_factory, sshd_target, alice, bob
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    server = server_factory(project, sshd_target)
    Membership.objects.create(project=project, user=bob, role=Role.VIEWER)
    old = project.badge_url

    page = signed_in(bob).get(f"/projects/{project.slug}/").content.decode()
    assert old in page and f"![deploy]({old})" in page
    assert "Rotate badge URLs" not in page
    server_page = signed_in(bob).get(f"/projects/{project.slug}/servers/{server.pk}/")
    assert project.server_badge_url(server.pk) in server_page.content.decode()
    assert signed_in(bob).post(f"/projects/{project.slug}/badge/rotate/").status_code == 403

    admin = signed_in(alice)
    assert "Rotate badge URLs" in admin.get(f"/projects/{project.slug}/").content.decode()
    answer = admin.post(f"/projects/{project.slug}/badge/rotate/", follow=True)
    assert answer.status_code == 200
    project.refresh_from_db()
    assert project.badge_url != old and project.badge_url in answer.content.decode()
    assert "New badge URLs" in answer.content.decode()


def test_odd_bytes_in_a_badge_or_webhook_address_are_404s_not_errors(
    git_repo_factory, project_factory
):
    # PostgreSQL refuses NUL in a query: such a segment must never reach one.
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    client = Client()
    for path in (
        "/badges/%00.svg",
        f"/badges/{project.badge_token}%00.svg",
        "/badges/servers/1-%00.svg",
        "/badges/a%00b/servers/1.svg",
        "/badges/%2e%2e%2f.svg",
        "/badges/" + "a" * 6000 + ".svg",
        "/badges/servers/99999999999999999999-abc.svg",
    ):
        assert client.get(path).status_code == 404, path
    assert client.post("/hooks/%00/", data=b"{}", content_type="application/json").status_code == (
        404
    )


def test_a_project_badge_url_does_not_lead_to_its_servers_badges(
    sshd_target, git_repo_factory, project_factory, server_factory
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    server = server_factory(project, sshd_target, name="app1")
    client = Client()
    assert client.get(f"/badges/{project.badge_token}/servers/{server.pk}.svg").status_code == 404
    assert client.get(f"/badges/servers/{server.pk}-{project.badge_token}.svg").status_code == 404
    forged = urlsplit(project.server_badge_url(server.pk)).path.replace(
        f"/{server.pk}-", f"/{server.pk + 1}-"
    )
    assert client.get(forged).status_code == 404
    assert project.badge_token not in project.server_badge_url(server.pk)
    assert client.head(urlsplit(project.server_badge_url(server.pk)).path).status_code == 200


def test_control_characters_and_refs_stay_out_of_a_badge(
    sshd_target, git_repo_factory, project_factory, alice
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    server = Server.objects.create(
        project=project,
        name="web\x1b[31m\x07",
        hostname="127.0.0.1",
        username="u",
        deploy_path="/srv/app",
    )
    assert "web[31m" in _texts(_badge(project.server_badge_url(server.pk)))
    Deployment.objects.create(project=project, revision="hotfix/login", status=Status.QUEUED)
    assert _texts(_badge(project.badge_url))[-1] == "queued"


def test_a_rollback_that_worked_is_yellow(
    sshd_target, git_repo_factory, project_factory, server_factory, alice
):
    repo = git_repo_factory()
    first = repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    server = server_factory(project, sshd_target)
    assert _run(services.deployment_create(project=project, servers=[server])).status == (
        Status.SUCCEEDED
    )
    repo.commit({"index.html": "B\n"}, "B")
    assert _run(services.deployment_create(project=project, servers=[server])).status == (
        Status.SUCCEEDED
    )
    rollback = _run(services.deployment_rollback_server(server=server, user=alice))
    assert rollback.status == Status.SUCCEEDED, rollback.error
    badge = _badge(project.badge_url)
    assert f"rolled back {first[:7]}" in _texts(badge) and b"#dfb317" in badge.content
