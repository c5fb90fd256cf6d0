"""Who sees and changes what: viewers read, deployers also deploy, admins also configure;
anyone else finds nothing. Every form needs its CSRF token."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from builds.models import Deployment, Kind
from projects.models import AuditEvent, EnvironmentVariable
from tests.dashboard.support import forms_posting_to, make_deployer

pytestmark = pytest.mark.django_db

BUTTON_THAT_CHANGES = re.compile(
    r'<(?:button|a class="button)[^>]*>\s*(?:Deploy|Roll back|Cancel|Redeploy|Trust|Test connection|Add|Edit)'
)


@pytest.fixture
def variable(project, alice):
    return EnvironmentVariable.objects.create(project=project, name="APP_ENV", value="production")


def _pages(project, server, deployment, variable) -> list[str]:
    slug = project.slug
    return [
        f"/projects/{slug}/",
        f"/projects/{slug}/deployments/",
        f"/projects/{slug}/settings/",
        f"/projects/{slug}/settings/environment/",
        f"/projects/{slug}/settings/environment/{variable.pk}/",
        f"/projects/{slug}/members/",
        f"/projects/{slug}/audit/",
        f"/projects/{slug}/servers/{server.pk}/",
        f"/projects/{slug}/deployments/{deployment.pk}/",
        f"/projects/{slug}/deployments/{deployment.pk}/summary/",
    ]


def _changes(project, server, deployment, running, variable, bob) -> dict[str, dict[str, str]]:
    """Every POST that changes something, with a form that would do it."""
    slug = project.slug
    release = server.releases.filter(live=False).first()
    return {
        f"/projects/{slug}/deploy/": {"servers": str(server.pk), "action": "deploy"},
        f"/projects/{slug}/servers/{server.pk}/rollback/": {"release": release.name},
        f"/projects/{slug}/servers/{server.pk}/test/": {},
        f"/projects/{slug}/deployments/{running.pk}/cancel/": {},
        f"/projects/{slug}/deployments/{deployment.pk}/redeploy/": {},
        f"/projects/{slug}/deployments/{deployment.pk}/rollback/": {},
        f"/projects/{slug}/servers/{server.pk}/trust/": {"fingerprint": "SHA256:" + "x" * 43},
        f"/projects/{slug}/repository/check/": {},
        f"/projects/{slug}/repository/trust/": {"fingerprint": "SHA256:" + "x" * 43},
        f"/projects/{slug}/servers/{server.pk}/edit/": {"name": "renamed"},
        f"/projects/{slug}/servers/{server.pk}/delete/": {},
        f"/projects/{slug}/servers/{server.pk}/lock/break/": {"force": "1"},
        f"/projects/{slug}/servers/new/": {"name": "web9"},
        f"/projects/{slug}/settings/": {"name": "Renamed"},
        f"/projects/{slug}/delete/": {},
        f"/projects/{slug}/settings/environment/": {"name": "NEW", "value": "1"},
        f"/projects/{slug}/settings/environment/{variable.pk}/": {"name": "CHANGED"},
        f"/projects/{slug}/settings/environment/{variable.pk}/delete/": {},
        f"/projects/{slug}/members/": {"username": "charlie", "role": "admin"},
        f"/projects/{slug}/members/{bob.username}/role/": {"role": "admin"},
        f"/projects/{slug}/members/{bob.username}/remove/": {},
    }


def test_charlie_finds_nothing_of_a_project_he_is_not_in(
    charlie_client, project, server, history, running, variable, bob
):
    deployment = history[-1]
    for path in [
        *_pages(project, server, deployment, variable),
        f"/projects/{project.slug}/deploy/",
    ]:
        assert charlie_client.get(path).status_code == 404, path
    for path, form in _changes(project, server, deployment, running, variable, bob).items():
        assert charlie_client.post(path, form).status_code == 404, path
    assert "Shop" not in charlie_client.get("/").content.decode()


def test_a_viewer_sees_everything_but_no_button_that_changes_anything(
    bob_client, project, server, history, running, variable
):
    pages = [
        *_pages(project, server, history[-1], variable),
        f"/projects/{project.slug}/deployments/{running.pk}/",
        "/",
    ]
    for path in pages:
        response = bob_client.get(path)
        assert response.status_code == 200, path
        html = response.content.decode()
        assert forms_posting_to(html) in ([], ["/logout/"]), path
        assert not BUTTON_THAT_CHANGES.search(html), path
    # What the viewer reads on those pages.
    server_page = bob_client.get(f"/projects/{project.slug}/servers/{server.pk}/").content.decode()
    assert all(release.name in server_page for release in server.releases.all())
    assert bob_client.get(f"/projects/{project.slug}/deploy/").status_code == 403


def test_a_viewer_gets_403_for_every_forged_change_and_nothing_changes(
    bob_client, project, server, history, running, variable, bob
):
    deployments, events = Deployment.objects.count(), AuditEvent.objects.count()
    for path, form in _changes(project, server, history[-1], running, variable, bob).items():
        assert bob_client.post(path, form).status_code == 403, path
    assert (Deployment.objects.count(), AuditEvent.objects.count()) == (deployments, events)
    running.refresh_from_db()
    assert running.cancel_requested_at is None


def test_a_deployer_deploys_cancels_and_rolls_back_but_does_not_configure(
    bob_client, project, server, history, running, variable, bob
):
    make_deployer(project, bob)
    slug = project.slug
    html = bob_client.get(f"/projects/{slug}/servers/{server.pk}/").content.decode()
    assert f"/projects/{slug}/servers/{server.pk}/rollback/" in forms_posting_to(html)
    assert f"/projects/{slug}/servers/{server.pk}/edit/" not in html

    release = server.releases.filter(live=False).first()
    response = bob_client.post(
        f"/projects/{slug}/servers/{server.pk}/rollback/", {"release": release.name}
    )
    rollback = Deployment.objects.get(kind=Kind.ROLLBACK)
    assert response.status_code == 302 and response["Location"].endswith(
        f"/deployments/{rollback.pk}/"
    )
    assert bob_client.post(f"/projects/{slug}/deployments/{running.pk}/cancel/").status_code == 302
    running.refresh_from_db()
    assert running.cancel_requested_at is not None

    for path in (
        f"/projects/{slug}/settings/",
        f"/projects/{slug}/servers/{server.pk}/edit/",
        f"/projects/{slug}/servers/{server.pk}/lock/break/",
    ):
        assert bob_client.post(path, {"name": "Mine now"}).status_code == 403, path
    assert bob_client.get(f"/projects/{slug}/servers/{server.pk}/edit/").status_code == 403


def test_it_sends_a_visitor_who_is_not_signed_in_to_sign_in(client, project):
    for path in ("/", f"/projects/{project.slug}/", "/account/tokens/"):
        response = client.get(path)
        assert response.status_code == 302 and response["Location"].startswith("/login/?next="), (
            path
        )


def test_every_form_needs_its_csrf_token(alice, project, server):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(alice)
    form = {"name": "BUILD_ID", "value": "7"}
    path = f"/projects/{project.slug}/settings/environment/"
    assert browser.post(path, form).status_code == 403
    assert not project.environment_variables.exists()

    browser.get(path)
    token = browser.cookies["csrftoken"].value
    assert browser.post(path, {**form, "csrfmiddlewaretoken": token}).status_code == 302
    assert project.environment_variables.get().name == "BUILD_ID"
    deploy = f"/projects/{project.slug}/deploy/"
    assert browser.post(deploy, {"servers": str(server.pk), "action": "deploy"}).status_code == 403
    assert not Deployment.objects.exists()
