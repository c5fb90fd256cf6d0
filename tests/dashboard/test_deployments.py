"""Starting, previewing, cancelling, redeploying and rolling back from the dashboard: each
goes through builds.services, lands on the deployment's page and is in the audit log."""

from __future__ import annotations

import re

import pytest

from builds.engine.git import Mirror
from builds.models import Deployment, Kind, Status, Trigger
from builds.runner import project_dirs
from projects.models import AuditEvent
from projects.services import project_create
from servers.models import Server
from tests.dashboard.support import TRUSTED, field_errors

pytestmark = pytest.mark.django_db


def test_it_deploys_the_chosen_servers_and_records_who_did(alice_client, alice, project, server):
    response = alice_client.post(
        f"/projects/{project.slug}/deploy/",
        {"servers": [str(server.pk)], "action": "deploy", "full": "on"},
    )
    deployment = Deployment.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/projects/{project.slug}/deployments/{deployment.pk}/"
    assert (deployment.kind, deployment.trigger, deployment.triggered_by, deployment.full) == (
        Kind.DEPLOY,
        Trigger.MANUAL,
        alice,
        True,
    )
    assert [t.server for t in deployment.targets.all()] == [server]
    event = AuditEvent.objects.get(action="deployment.created")
    assert event.actor == alice and event.detail["kind"] == Kind.DEPLOY


def test_a_typed_ref_wins_and_a_bad_one_shows_beside_it(alice_client, project, server):
    path = f"/projects/{project.slug}/deploy/"
    form = {"servers": [str(server.pk)], "revision": "a" * 40, "ref": "v1.2.0", "action": "deploy"}
    alice_client.post(path, form)
    assert Deployment.objects.get().revision == "v1.2.0"
    response = alice_client.post(path, {**form, "ref": "bad..ref"})
    assert field_errors(response.content.decode(), "ref")
    assert Deployment.objects.count() == 1


def test_it_refuses_a_server_whose_host_key_is_not_trusted_beside_the_servers(
    alice_client, project, server
):
    Server.objects.filter(pk=server.pk).update(host_key_fingerprint="")
    response = alice_client.post(
        f"/projects/{project.slug}/deploy/", {"servers": [str(server.pk)], "action": "deploy"}
    )
    assert "host key is not trusted" in field_errors(response.content.decode(), "servers")[0]
    response = alice_client.post(f"/projects/{project.slug}/deploy/", {"action": "deploy"})
    assert "Choose at least one server" in field_errors(response.content.decode(), "servers")[0]
    assert not Deployment.objects.exists()


def test_a_preview_comes_back_to_the_form_and_shows_its_result(alice_client, project, server):
    response = alice_client.post(
        f"/projects/{project.slug}/deploy/",
        {"servers": [str(server.pk)], "action": "preview", "skip_build": "on"},
    )
    preview = Deployment.objects.get()
    assert preview.kind == Kind.PREVIEW and preview.skip_build
    assert response.status_code == 302 and f"preview={preview.pk}" in response["Location"]
    page = alice_client.get(response["Location"]).content.decode()
    assert f'hx-get="/projects/{project.slug}/deployments/{preview.pk}/preview/"' in page
    assert re.search(r'<input type="checkbox" name="skip_build"[^>]*checked', page)

    Deployment.objects.filter(pk=preview.pk).update(
        status=Status.SUCCEEDED,
        end_revision="c" * 40,
        commits=[{"sha": "c" * 40, "author": "Alice", "date": "", "subject": "Fix the footer"}],
        changes={"added": ["a.css"], "modified": ["index.html"], "deleted": [], "bytes": 2048},
    )
    fragment = alice_client.get(
        f"/projects/{project.slug}/deployments/{preview.pk}/preview/"
    ).content.decode()
    assert "hx-trigger" not in fragment
    assert "Fix the footer" in fragment and "1 added" in fragment and "1 modified" in fragment
    assert "2.0\xa0KB to send" in fragment
    assert 'name="revision" value="' + "c" * 40 in fragment
    assert "Deploy ccccccc now" in fragment


def test_it_lists_recent_commits_from_the_mirror(
    alice_client, alice, settings, tmp_path, git_repo_factory
):
    settings.BUILD_DIR = tmp_path
    settings.ALLOW_LOCAL_REPOSITORIES = True
    repo = git_repo_factory()
    shas = [repo.commit({"f": str(n)}, f"Commit number {n}") for n in range(3)]
    project = project_create(owner=alice, name="Repo", repository_url=repo.url)
    Server.objects.create(
        project=project,
        name="web1",
        hostname="h",
        username="u",
        deploy_path="/srv/x",
        host_key_fingerprint=TRUSTED,
    )
    Mirror(project_dirs(project)[0], repo.url, allow_local=True).fetch()
    page = alice_client.get(f"/projects/{project.slug}/deploy/").content.decode()
    for n, sha in enumerate(shas):
        assert f'value="{sha}"' in page and f"Commit number {n}" in page
    assert page.index("Commit number 2") < page.index("Commit number 0")


def test_it_rolls_a_server_back_to_a_release_in_one_click(
    alice_client, alice, project, server, history
):
    older = server.releases.get(live=False)
    response = alice_client.post(
        f"/projects/{project.slug}/servers/{server.pk}/rollback/", {"release": older.name}
    )
    rollback = Deployment.objects.get(kind=Kind.ROLLBACK)
    assert response["Location"] == f"/projects/{project.slug}/deployments/{rollback.pk}/"
    assert (rollback.rollback_release, rollback.trigger, rollback.triggered_by) == (
        older.name,
        Trigger.MANUAL,
        alice,
    )
    event = AuditEvent.objects.get(action="rollback.created")
    assert event.actor == alice and event.detail["release"] == older.name

    live = server.releases.get(live=True)
    response = alice_client.post(
        f"/projects/{project.slug}/servers/{server.pk}/rollback/",
        {"release": live.name},
        follow=True,
    )
    assert "is already live" in response.content.decode()


def test_it_rolls_a_whole_deployment_back(alice_client, project, history):
    latest = history[-1]
    response = alice_client.post(f"/projects/{project.slug}/deployments/{latest.pk}/rollback/")
    rollback = Deployment.objects.get(kind=Kind.ROLLBACK)
    assert rollback.rollback_of == latest
    assert response["Location"].endswith(f"/deployments/{rollback.pk}/")


def test_it_redeploys_the_same_revision_to_the_same_servers(alice_client, project, server, history):
    latest = history[-1]
    response = alice_client.post(f"/projects/{project.slug}/deployments/{latest.pk}/redeploy/")
    again = Deployment.objects.order_by("-pk")[0]
    assert again.pk != latest.pk and again.revision == latest.end_revision
    assert [t.server for t in again.targets.all()] == [server]
    assert response["Location"].endswith(f"/deployments/{again.pk}/")


def test_it_cancels_and_records_it_and_says_when_it_is_too_late(
    alice_client, alice, project, running, history
):
    alice_client.post(f"/projects/{project.slug}/deployments/{running.pk}/cancel/")
    running.refresh_from_db()
    assert running.cancel_requested_at is not None
    assert AuditEvent.objects.get(action="deployment.cancelled").actor == alice
    finished = history[-1]
    response = alice_client.post(
        f"/projects/{project.slug}/deployments/{finished.pk}/cancel/", follow=True
    )
    assert "already succeeded" in response.content.decode()


def test_the_deployment_page_shows_steps_results_commits_and_the_log_config(
    alice_client, project, server, history
):
    deployment = history[-1]
    html = alice_client.get(
        f"/projects/{project.slug}/deployments/{deployment.pk}/"
    ).content.decode()
    assert "Change 2" in html and "Live: release" in html and ">build<" in html
    assert f'"socket": "/ws/deployments/{deployment.pk}/"' in html
    assert f'"{server.pk}": "web1"' in html
    for button in ("Redeploy", "Roll back"):
        assert f">{button}</button>" in html
    assert ">Cancel</button>" not in html


def test_the_audit_log_lists_what_happened(alice_client, bob_client, project, server, history):
    older = server.releases.get(live=False)
    alice_client.post(
        f"/projects/{project.slug}/servers/{server.pk}/rollback/", {"release": older.name}
    )
    html = bob_client.get(f"/projects/{project.slug}/audit/").content.decode()
    assert "rollback.created" in html and "alice" in html and older.name in html
