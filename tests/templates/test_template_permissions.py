"""Who may save, see, use and delete templates: Alice admins the project (and is a site
admin), Bob is on her team as a viewer or a deployer, Charlie is no member."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from projects.models import (
    ApiToken,
    Membership,
    ProjectCreators,
    ProjectTemplate,
    Role,
    SiteSettings,
)
from tests.api.conftest import client_for

pytestmark = pytest.mark.django_db


def _save(client, slug="shop", name="Shop settings"):
    return client.post("/api/v1/templates/", {"project": slug, "name": name}, format="json")


@pytest.mark.parametrize("role", [Role.VIEWER, Role.DEPLOYER])
def test_only_the_projects_admins_may_save_it_as_a_template(
    bob_api, bob_client, bob, configured, role
):
    Membership.objects.filter(user=bob).update(role=role)
    assert _save(bob_api).status_code == 403
    assert (
        bob_client.post("/projects/shop/save-as-template/", {"template-name": "x"}).status_code
        == 403
    )
    assert "save-as-template" not in bob_client.get("/projects/shop/settings/").content.decode()
    assert not ProjectTemplate.objects.exists()


def test_a_non_member_gets_404(charlie_api, configured):
    assert _save(charlie_api).status_code == 404


def test_a_read_scoped_token_of_an_admin_may_not_save(alice, configured):

    _, token = ApiToken.issue(user=alice, name="read", scope="read")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert _save(client).status_code == 403


def test_saved_templates_are_for_those_who_may_create_projects(
    alice_api, bob_api, bob, configured, repo
):
    saved = _save(alice_api).json()["id"]
    # By default only site admins create projects: Bob sees the built-ins only.
    assert [t["id"] for t in bob_api.get("/api/v1/templates/").json()][-1] == "static"
    assert bob_api.get(f"/api/v1/templates/{saved}/").status_code == 404
    settings = SiteSettings.load()
    settings.project_creators = ProjectCreators.EVERYONE
    settings.save()
    assert [t["id"] for t in bob_api.get("/api/v1/templates/").json()][-1] == saved
    response = bob_api.post(
        "/api/v1/projects/",
        {"name": "Bobs", "repository_url": repo.url, "template": saved},
        format="json",
    )
    assert response.status_code == 201, response.content


def test_a_saved_template_is_deleted_by_its_author_or_a_site_admin(
    alice_api, bob, configured, django_user_model
):
    settings = SiteSettings.load()
    settings.project_creators = ProjectCreators.EVERYONE
    settings.save()
    Membership.objects.filter(user=bob).update(role=Role.ADMIN)
    bob_api = client_for(bob)
    saved = _save(bob_api, name="Bob's").json()["id"]
    dave = django_user_model.objects.create_user("dave", password="dave-password-1")
    assert client_for(dave).delete(f"/api/v1/templates/{saved}/").status_code == 403
    assert alice_api.delete("/api/v1/templates/laravel/").status_code == 403
    assert alice_api.delete(f"/api/v1/templates/{saved}/").status_code == 204
    assert not ProjectTemplate.objects.exists()
    again = _save(bob_api, name="Bob's again").json()["id"]
    assert bob_api.delete(f"/api/v1/templates/{again}/").status_code == 204


def test_the_new_project_page_lists_saved_templates_and_deletes_them_for_their_author(
    alice_client, bob_client, alice_api, bob, configured
):
    saved = _save(alice_api).json()["id"]
    page = alice_client.get("/projects/new/").content.decode()
    assert "Shop settings" in page and f"/templates/{saved}/delete/" in page
    settings = SiteSettings.load()
    settings.project_creators = ProjectCreators.EVERYONE
    settings.save()
    page = bob_client.get("/projects/new/").content.decode()
    assert "Shop settings" in page and f"/templates/{saved}/delete/" not in page
    assert bob_client.post(f"/templates/{saved}/delete/").status_code == 403
    assert bob_client.post("/templates/laravel/delete/").status_code == 404
    assert alice_client.post(f"/templates/{saved}/delete/").status_code == 302
    assert not ProjectTemplate.objects.exists()
