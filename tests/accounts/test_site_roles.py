"""Who may create projects: a site setting, site admins only by default (issue 9, section 2)."""

from __future__ import annotations

from projects.models import Membership, Project, ProjectCreators, Role, SiteSettings
from tests.api.conftest import client_for

NEW_PROJECT = {
    "name": "Blog",
    "repository_url": "https://git.example.com/blog.git",
    "branch": "main",
}


def test_it_lets_only_site_admins_create_projects_by_default(bob, site_admin):
    assert SiteSettings.load().project_creators == ProjectCreators.ADMINS
    refused = client_for(bob).post("/api/v1/projects/", NEW_PROJECT, format="json")
    assert refused.status_code == 403
    assert "Only site admins may create projects" in refused.json()["detail"]
    assert not Project.objects.exists()

    created = client_for(site_admin).post("/api/v1/projects/", NEW_PROJECT, format="json")
    assert created.status_code == 201, created.content
    assert Membership.objects.get(project__slug="blog", user=site_admin).role == Role.ADMIN


def test_the_dashboard_refuses_the_new_project_page_with_the_reason(bob_client, alice):
    page = bob_client.get("/projects/new/")
    assert page.status_code == 403
    assert "Only site admins may create projects" in page.content.decode()
    posted = bob_client.post("/projects/new/", NEW_PROJECT)
    assert posted.status_code == 403
    assert not Project.objects.exists()
    assert "New project" not in bob_client.get("/").content.decode()


def test_a_site_admin_sees_the_new_project_link(site_admin, alice_client):
    assert "New project" in alice_client.get("/").content.decode()
    assert alice_client.get("/projects/new/").status_code == 200


def test_every_signed_in_user_creates_projects_when_the_setting_says_so(bob, bob_client):
    site = SiteSettings.load()
    site.project_creators = ProjectCreators.EVERYONE
    site.save()
    response = bob_client.post("/projects/new/", NEW_PROJECT)
    assert response.status_code == 302 and response["Location"] == "/projects/blog/"
    assert Membership.objects.get(project__slug="blog", user=bob).role == Role.ADMIN


def test_a_deactivated_site_admin_creates_nothing(site_admin):
    api = client_for(site_admin)
    site_admin.is_active = False
    site_admin.save()
    assert api.post("/api/v1/projects/", NEW_PROJECT, format="json").status_code == 401
    assert not SiteSettings.load().may_create_projects(site_admin)
