"""API tokens' scopes and expiry: read looks, deploy also deploys, admin does what the role
allows; a scope never widens a role; an expired token answers 401 and says so; a removed
member's token stops reaching the project at once."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone
from rest_framework.test import APIClient

from projects.models import ApiToken, Membership, Role, TokenScope
from tests.api.surface import one_of_each, write_operations

pytestmark = pytest.mark.django_db

# The writes a deploy-scoped token may make (VIEW and DEPLOY needs, deployer/api.py).
DEPLOY_OPERATIONS = {
    ("post", "/api/v1/projects/{slug}/deployments/"),
    ("post", "/api/v1/deployments/{deployment_id}/cancel/"),
    ("post", "/api/v1/deployments/{deployment_id}/rollback/"),
    ("post", "/api/v1/deployments/{deployment_id}/promote/"),
    ("post", "/api/v1/deployments/{deployment_id}/abort/"),
    ("post", "/api/v1/deployments/{deployment_id}/retry/"),
    # Build once, promote (docs/promote.md): a deployment of a kept build output.
    ("post", "/api/v1/deployments/{deployment_id}/promotions/"),
    # Blue-green: sending a group's traffic back is a deployment of kind switch.
    ("post", "/api/v1/projects/{slug}/groups/{id}/switch-back/"),
    ("post", "/api/v1/projects/{slug}/servers/{server_id}/rollback/"),
    ("post", "/api/v1/projects/{slug}/servers/{server_id}/check/"),
    # A drift check reads the live release, as a connection check does.
    ("post", "/api/v1/projects/{slug}/servers/{server_id}/drift/"),
    # Reading the key a repository's host offers, like a server's connection check.
    ("post", "/api/v1/projects/{slug}/repository/check/"),
    # Stack locks: whoever may deploy may stop deployments, and start them again.
    ("post", "/api/v1/projects/{slug}/deploy-lock/"),
    ("delete", "/api/v1/projects/{slug}/deploy-lock/"),
    ("post", "/api/v1/projects/{slug}/servers/{server_id}/deploy-lock/"),
    ("delete", "/api/v1/projects/{slug}/servers/{server_id}/deploy-lock/"),
    # Gates (docs/gates.md): approving a held deployment, and reading the checklist first.
    ("post", "/api/v1/deployments/{deployment_id}/approve/"),
    ("post", "/api/v1/projects/{slug}/gates/check/"),
}


def token_client(user, scope: str, **issue: Any) -> tuple[APIClient, ApiToken]:
    record, token = ApiToken.issue(user=user, name=f"{scope} token", scope=scope, **issue)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client, record


@pytest.fixture
def objects(project):
    return one_of_each(project)


def test_it_lets_a_read_token_look_but_change_nothing(alice, alice_api, objects):
    read, _ = token_client(alice, TokenScope.READ)
    assert read.get(f"/api/v1/projects/{objects['slug']}/").status_code == 200
    for method, path, real, _ in write_operations(alice_api, objects):
        response = getattr(read, method)(real, {}, format="json")
        assert response.status_code == 403, (method, path, response.status_code)
        assert "scope read" in response.json()["detail"]
    assert Membership.objects.filter(user__username="bob").exists()


def test_it_lets_a_deploy_token_deploy_but_not_configure(alice, alice_api, objects):
    deploy, _ = token_client(alice, TokenScope.DEPLOY)
    operations = write_operations(alice_api, objects)
    assert {(method, path) for method, path, _, _ in operations} >= DEPLOY_OPERATIONS
    for method, path, real, _ in operations:
        if (method, path) in DEPLOY_OPERATIONS:
            continue  # driven below: some of them start real work
        response = getattr(deploy, method)(real, {}, format="json")
        assert response.status_code == 403, (method, path, response.status_code)
        assert "scope deploy" in response.json()["detail"]
    # The deployment finished: cancelling it is refused for its state, not for the scope.
    cancel = deploy.post(f"/api/v1/deployments/{objects['deployment_id']}/cancel/")
    assert cancel.status_code == 409
    refused = deploy.post("/api/v1/projects/", {"name": "x", "repository_url": "/tmp/x"})
    assert refused.status_code == 403
    assert Membership.objects.filter(user__username="bob").exists()


def test_a_scope_never_widens_the_members_role(bob, project, objects):
    admin_token_of_a_viewer, _ = token_client(bob, TokenScope.ADMIN)
    patch = admin_token_of_a_viewer.patch(f"/api/v1/projects/{project.slug}/", {"name": "Mine"})
    assert patch.status_code == 403
    assert "You are viewer" in patch.json()["detail"]
    deploy_token_of_a_viewer, _ = token_client(bob, TokenScope.DEPLOY)
    cancel = deploy_token_of_a_viewer.post(
        f"/api/v1/deployments/{objects['deployment_id']}/cancel/"
    )
    assert cancel.status_code == 403


def test_an_expired_token_answers_401_and_says_so(alice):
    client, record = token_client(
        alice, TokenScope.ADMIN, expires_at=timezone.now() + timedelta(hours=1)
    )
    assert client.get("/api/v1/me/").status_code == 200
    ApiToken.objects.filter(pk=record.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = client.get("/api/v1/me/")
    assert response.status_code == 401
    assert "expired" in response.json()["detail"]
    assert record.prefix in response.json()["detail"]


def test_me_says_the_tokens_scope_and_expiry(alice, client):
    expires = timezone.now() + timedelta(days=3)
    api, record = token_client(alice, TokenScope.DEPLOY, expires_at=expires)
    token = api.get("/api/v1/me/").json()["token"]
    assert token["scope"] == "deploy"
    assert token["prefix"] == record.prefix
    assert token["expires_at"].startswith(expires.strftime("%Y-%m-%dT%H:%M"))
    # Signed in on the dashboard: no token.
    client.force_login(alice)
    assert client.get("/api/v1/me/").json()["token"] is None


def test_it_issues_tokens_no_wider_than_the_one_asking(alice, alice_api):
    created = alice_api.post(
        "/api/v1/me/tokens/", {"name": "CI", "scope": "deploy", "expires_in_days": 7}
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["scope"] == "deploy" and body["token"].startswith("slw_")
    assert body["expires_at"] is not None
    listed = alice_api.get("/api/v1/me/tokens/").json()
    assert {"CI"} <= {token["name"] for token in listed}
    assert all("token" not in token for token in listed)

    new = APIClient()
    new.credentials(HTTP_AUTHORIZATION=f"Bearer {body['token']}")
    assert new.get("/api/v1/me/").json()["token"]["scope"] == "deploy"
    # A deploy token may not issue tokens at all.
    assert new.post("/api/v1/me/tokens/", {"name": "x", "scope": "read"}).status_code == 403

    short, _ = token_client(alice, TokenScope.ADMIN, expires_at=timezone.now() + timedelta(days=1))
    lasting = short.post("/api/v1/me/tokens/", {"name": "forever", "scope": "admin"})
    assert lasting.status_code == 400
    assert "expires_at" in lasting.json()

    both = alice_api.post(
        "/api/v1/me/tokens/",
        {"name": "x", "scope": "read", "expires_in_days": 1, "expires_at": "2030-01-01T00:00Z"},
    )
    assert both.status_code == 400 and "expires_at" in both.json()
    past = alice_api.post(
        "/api/v1/me/tokens/", {"name": "x", "scope": "read", "expires_at": "2020-01-01T00:00Z"}
    )
    assert past.status_code == 400 and "past" in past.json()["expires_at"][0]
    wrong = alice_api.post("/api/v1/me/tokens/", {"name": "x", "scope": "root"})
    assert wrong.status_code == 400 and "scope" in wrong.json()


def test_a_removed_members_token_stops_reaching_the_project_at_once(
    alice_api, bob, project, objects
):
    bob_token, _ = token_client(bob, TokenScope.ADMIN)
    Membership.objects.filter(project=project, user=bob).update(role=Role.DEPLOYER)
    assert bob_token.get(f"/api/v1/projects/{project.slug}/").status_code == 200
    cancel = f"/api/v1/deployments/{objects['deployment_id']}/cancel/"
    assert bob_token.post(cancel).status_code == 409  # allowed; the deployment is over

    lowered = alice_api.patch(f"/api/v1/projects/{project.slug}/members/bob/", {"role": "viewer"})
    assert lowered.status_code == 200
    assert bob_token.post(cancel).status_code == 403

    assert alice_api.delete(f"/api/v1/projects/{project.slug}/members/bob/").status_code == 204
    assert bob_token.get(f"/api/v1/projects/{project.slug}/").status_code == 404
    assert bob_token.get(f"/api/v1/deployments/{objects['deployment_id']}/").status_code == 404
    assert bob_token.get("/api/v1/projects/").json() == []


def test_a_deactivated_users_token_is_refused(bob):
    client, _ = token_client(bob, TokenScope.READ)
    assert client.get("/api/v1/me/").status_code == 200
    bob.is_active = False
    bob.save(update_fields=["is_active"])
    response = client.get("/api/v1/me/")
    assert response.status_code == 401
    assert "deactivated" in response.json()["detail"]


def test_issue_token_takes_a_scope_and_an_expiry(alice, capsys):
    call_command("issue_token", "alice", "--scope", "read", "--expires-in-days", "3")
    token = capsys.readouterr().out.strip()
    record = ApiToken.objects.get(user=alice)
    assert token.startswith(record.prefix)
    assert record.scope == TokenScope.READ
    assert record.expires_at is not None
    assert abs(record.expires_at - (timezone.now() + timedelta(days=3))) < timedelta(minutes=1)


def test_issue_token_takes_a_moment_and_refuses_a_past_one(alice, capsys):
    call_command("issue_token", "alice", "--scope", "deploy", "--expires-at", "2030-01-31T18:00Z")
    record = ApiToken.objects.get(user=alice)
    assert record.expires_at is not None
    assert record.expires_at.isoformat() == "2030-01-31T18:00:00+00:00"
    with pytest.raises(CommandError, match="--expires-at: is in the past"):
        call_command("issue_token", "alice", "--expires-at", "2020-01-01T00:00Z")
    with pytest.raises(CommandError, match="not a date and time"):
        call_command("issue_token", "alice", "--expires-at", "soon")


def test_tokens_made_before_scopes_keep_their_owners_rights(alice):
    """The migration's default: an existing token acts with all the user's roles allow."""
    field = ApiToken._meta.get_field("scope")
    assert field.default == TokenScope.ADMIN
    assert ApiToken._meta.get_field("expires_at").null
