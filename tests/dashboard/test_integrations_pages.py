"""A project's integrations from the dashboard: admins add, change and remove them; a bad
field is shown beside it; the token goes in but never comes back out, on any page; each
integration lists its last reports. Bob (a viewer, or a deployer) reads without the token's
box; Charlie finds nothing."""

from __future__ import annotations

import pytest

from builds.integrations import integration_create
from projects.models import (
    AuditEvent,
    DeliveryStatus,
    Integration,
    Membership,
    NotificationDelivery,
    Role,
)
from tests.dashboard.support import field_errors, forms_posting_to

pytestmark = pytest.mark.django_db

TOKEN = "glpat-secretTOKEN0123456789"
GITLAB = {
    "kind": "gitlab",
    "base_url": "https://1.1.1.1/api/v4",
    "repository": "acme/shop",
    "token": TOKEN,
    "enabled": "on",
}


def _list(slug: str) -> str:
    return f"/projects/{slug}/settings/integrations/"


@pytest.fixture
def gitlab(project, alice, history):
    integration = integration_create(
        project=project,
        actor=alice,
        kind="gitlab",
        base_url="https://1.1.1.1/api/v4",
        repository="acme/shop",
        token=TOKEN,
    )
    NotificationDelivery.objects.create(
        integration=integration,
        deployment=history[0],
        event="started",
        status=DeliveryStatus.FAILED,
        attempts=1,
        status_code=401,
        error="https://1.1.1.1 answered POST /api/v4/projects/acme%2Fshop/deployments with "
        "HTTP 401: 401 Unauthorized",
    )
    return integration


def test_an_admin_adds_a_gitlab_integration(alice_client, alice, project):
    response = alice_client.post(_list(project.slug), GITLAB)
    assert response.status_code == 302
    integration = Integration.objects.get()
    assert (integration.kind, integration.repository, integration.token) == (
        "gitlab",
        "acme/shop",
        TOKEN,
    )
    assert AuditEvent.objects.get(action="integration.created").actor == alice
    page = alice_client.get(_list(project.slug)).content.decode()
    assert "GitLab" in page and "https://1.1.1.1" in page and "acme/shop" in page
    assert TOKEN not in page


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"base_url": "http://1.1.1.1/api/v4"}, "base_url", "must start with https://"),
        ({"repository": "acme"}, "repository", "group/project"),
        ({"token": ""}, "token", "is required"),
    ],
)
def test_an_error_shows_beside_its_field_and_the_token_is_not_sent_back(
    alice_client, project, changes, field, message
):
    response = alice_client.post(_list(project.slug), {**GITLAB, **changes})
    assert response.status_code == 200
    page = response.content.decode()
    errors = field_errors(page, field)
    assert errors and message in errors[0], errors
    assert TOKEN not in page
    assert not Integration.objects.exists()


def test_the_token_never_comes_back_out(alice_client, bob_client, project, gitlab):
    for client in (alice_client, bob_client):
        for path in (
            _list(project.slug),
            f"{_list(project.slug)}{gitlab.pk}/",
            "/projects/shop/audit/",
        ):
            response = client.get(path)
            assert response.status_code == 200
            assert TOKEN not in response.content.decode()
    page = alice_client.get(f"{_list(project.slug)}{gitlab.pk}/").content.decode()
    assert 'type="password" name="token"' in page and "Stored and hidden" in page


def test_each_integration_lists_its_last_reports(alice_client, project, gitlab):
    page = alice_client.get(f"{_list(project.slug)}{gitlab.pk}/").content.decode()
    assert "Recent deliveries" in page and "report sent for this integration" in page
    assert "HTTP 401" in page and "401 Unauthorized" in page


def test_a_blank_token_keeps_the_stored_one(alice_client, project, gitlab):
    path = f"{_list(project.slug)}{gitlab.pk}/"
    form = {**GITLAB, "token": "", "environment": "staging"}
    assert alice_client.post(path, form).status_code == 302
    gitlab.refresh_from_db()
    assert gitlab.token == TOKEN and gitlab.environment == "staging"


def test_members_who_may_not_configure_read_without_the_token_box(bob_client, bob, project, gitlab):
    Membership.objects.filter(project=project, user=bob).update(role=Role.DEPLOYER)
    path = f"{_list(project.slug)}{gitlab.pk}/"
    page = bob_client.get(path).content.decode()
    assert 'name="token"' not in page and "acme/shop" in page
    assert path not in forms_posting_to(page)
    assert bob_client.post(path, {**GITLAB, "token": "stolen"}).status_code == 403
    assert bob_client.post(_list(project.slug), GITLAB).status_code == 403
    gitlab.refresh_from_db()
    assert gitlab.token == TOKEN


def test_outsiders_find_nothing(charlie_client, project, gitlab):
    for path in (_list(project.slug), f"{_list(project.slug)}{gitlab.pk}/"):
        assert charlie_client.get(path).status_code == 404
    assert charlie_client.post(f"{_list(project.slug)}{gitlab.pk}/delete/").status_code == 404
    assert Integration.objects.filter(pk=gitlab.pk).exists()


def test_the_page_links_the_guide_which_is_served(alice_client, project):
    page = alice_client.get(_list(project.slug)).content.decode()
    assert 'href="/docs/integrations.md"' in page
    guide = alice_client.get("/docs/integrations.md")
    assert guide.status_code == 200
    assert b"# Integrations" in b"".join(guide.streaming_content)
