"""/api/v1/projects/ and /api/v1/me/: create, read, change, delete; who sees what."""

from __future__ import annotations

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from projects.models import ApiToken, AuditEvent, Membership, Project, Role

pytestmark = pytest.mark.django_db


def test_it_tells_the_caller_who_they_are(alice_api):
    response = alice_api.get("/api/v1/me/")
    assert response.status_code == 200
    assert response.json()["username"] == "alice"
    assert response.json()["url"] == settings.BASE_URL + "/api/v1/me/"


def test_it_refuses_a_missing_or_revoked_token(alice):
    anonymous = APIClient()
    assert anonymous.get("/api/v1/projects/").status_code == 401
    record, token = ApiToken.issue(user=alice, name="old")
    record.revoked_at = record.created_at
    record.save()
    anonymous.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    response = anonymous.get("/api/v1/projects/")
    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]


def test_it_accepts_a_dashboard_session_too(client, alice, project):
    client.force_login(alice)
    response = client.get("/api/v1/projects/")
    assert response.status_code == 200
    assert [p["slug"] for p in response.json()] == [project.slug]


def test_it_creates_a_project_whose_creator_is_admin(alice_api, site_admin, alice, repo):
    response = alice_api.post(
        "/api/v1/projects/",
        {
            "name": "Web Shop",
            "repository_url": repo.url,
            "branch": "main",
            "shared_paths": ["storage/", ".env"],
            "cache_paths": ["node_modules"],
            "repository_token": "ghp_secret_token_123456",
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["slug"] == "web-shop"
    assert body["public_key"].startswith("ssh-ed25519 ")
    project = Project.objects.get(slug="web-shop")
    assert body["webhook_url"] == settings.BASE_URL + project.webhook_path
    assert body["webhook_secret"] == project.webhook_secret
    assert body["shared_paths"] == ["storage/", ".env"]
    assert body["has_repository_token"] is True
    assert body["role"] == "admin"
    assert body["url"] == settings.BASE_URL + "/api/v1/projects/web-shop/"
    assert body["html_url"] == settings.BASE_URL + "/projects/web-shop/"
    assert b"ghp_secret_token_123456" not in response.content
    assert project.repository_token == "ghp_secret_token_123456"
    assert Membership.objects.get(project=project, user=alice).role == Role.ADMIN
    event = AuditEvent.objects.get(project=project, action="project.created")
    assert event.actor == alice


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("repository_url", "ext::sh -c touch% /tmp/pwned"),
        ("repository_url", "ftp://example.com/repo.git"),
        ("branch", "--upload-pack=evil"),
        ("branch", "main..dev"),
        ("subdirectory", "../outside"),
        ("shared_paths", ["../etc/passwd"]),
        ("cache_paths", [".slipway/lock"]),
        # A shared path inside another would link shared/storage/logs into itself.
        ("shared_paths", ["storage/", "storage/logs/"]),
        ("shared_paths", ["storage", "storage/"]),
        ("cache_paths", ["node_modules", "node_modules/.cache"]),
        ("generated_paths", ["!staticfiles/"]),
        ("generated_paths", "staticfiles/"),
    ],
)
def test_it_names_the_field_it_refuses(alice_api, site_admin, repo, field, value):
    data = {"name": "Shop", "repository_url": repo.url, "branch": "main", field: value}
    response = alice_api.post("/api/v1/projects/", data, format="json")
    assert response.status_code == 400, response.content
    assert list(response.json()) == [field]
    assert not Project.objects.exists()


def test_it_refuses_a_local_repository_unless_allowed(alice_api, site_admin, repo, settings):
    settings.ALLOW_LOCAL_REPOSITORIES = False
    response = alice_api.post(
        "/api/v1/projects/", {"name": "Shop", "repository_url": repo.url}, format="json"
    )
    assert response.status_code == 400
    assert "repository_url" in response.json()


def test_it_lists_only_the_callers_projects(alice_api, charlie_api, project, project_factory):
    response = alice_api.get("/api/v1/projects/")
    assert [p["slug"] for p in response.json()] == [project.slug]
    assert charlie_api.get("/api/v1/projects/").json() == []


def test_it_shows_the_webhook_secret_to_admins_only(alice_api, bob_api, bob, project):
    assert alice_api.get(f"/api/v1/projects/{project.slug}/").json()["webhook_secret"] == (
        project.webhook_secret
    )
    for role in (Role.VIEWER, Role.DEPLOYER):
        Membership.objects.filter(user=bob).update(role=role)
        response = bob_api.get(f"/api/v1/projects/{project.slug}/")
        assert response.status_code == 200
        assert response.json()["webhook_secret"] is None
        assert response.json()["role"] == role
        assert project.webhook_secret.encode() not in response.content
        assert project.private_key.encode() not in response.content


def test_it_hides_a_token_typed_into_the_repository_url(alice_api, project):
    project.repository_url = "https://alice:tok3n-s3cret@git.example.com/shop.git"
    project.save()
    response = alice_api.get(f"/api/v1/projects/{project.slug}/")
    assert b"tok3n-s3cret" not in response.content
    assert response.json()["repository_url"] == "https://alice:***@git.example.com/shop.git"


def test_it_gives_404_to_someone_who_is_not_a_member(charlie_api, project):
    for method in ("get", "patch", "delete"):
        response = getattr(charlie_api, method)(f"/api/v1/projects/{project.slug}/")
        assert response.status_code == 404
    assert charlie_api.get("/api/v1/projects/no-such-project/").status_code == 404


def test_it_lets_an_admin_change_the_project(alice_api, alice, project, repo):
    repo.branch("release/2")
    repo.commit({"index.html": "R\n"}, "Release 2")
    response = alice_api.patch(
        f"/api/v1/projects/{project.slug}/",
        {"name": "Shop 2", "branch": "release/2", "repository_token": "tok-abc-123"},
        format="json",
    )
    assert response.status_code == 200, response.content
    project.refresh_from_db()
    assert (project.name, project.branch, project.repository_token) == (
        "Shop 2",
        "release/2",
        "tok-abc-123",
    )
    event = AuditEvent.objects.get(project=project, action="project.updated")
    assert event.detail == {"fields": ["branch", "name", "repository_token"]}
    assert "tok-abc-123" not in str(event.detail)
    bad = alice_api.patch(f"/api/v1/projects/{project.slug}/", {"branch": "-x"}, format="json")
    assert bad.status_code == 400 and "branch" in bad.json()


def test_a_viewer_or_deployer_cannot_change_or_delete_the_project(bob_api, bob, project):
    for role in (Role.VIEWER, Role.DEPLOYER):
        Membership.objects.filter(user=bob).update(role=role)
        patch = bob_api.patch(f"/api/v1/projects/{project.slug}/", {"name": "X"}, format="json")
        assert patch.status_code == 403
        assert "admin" in patch.json()["detail"]
        assert bob_api.delete(f"/api/v1/projects/{project.slug}/").status_code == 403
    assert Project.objects.get().name == "Shop"


def test_an_admin_deletes_the_project(alice_api, project):
    response = alice_api.delete(f"/api/v1/projects/{project.slug}/")
    assert response.status_code == 204
    assert not Project.objects.exists()
    assert AuditEvent.objects.filter(action="project.deleted", target=project.slug).exists()


def test_an_admin_sets_whose_commit_message_deploys_a_push_honours(alice_api, project):
    url = f"/api/v1/projects/{project.slug}/"
    assert alice_api.get(url).json()["commit_deploys"] == "anyone"

    bad = alice_api.patch(url, {"commit_deploys": "everyone"}, format="json")
    good = alice_api.patch(url, {"commit_deploys": "members"}, format="json")

    assert bad.status_code == 400 and "commit_deploys" in bad.json()
    assert good.status_code == 200 and good.json()["commit_deploys"] == "members"
