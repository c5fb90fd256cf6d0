"""/api/v1/projects/<slug>/members/: admins manage who is on the team, and with what role."""

from __future__ import annotations

import pytest
from django.conf import settings

from projects.models import AuditEvent, Membership, Role

pytestmark = pytest.mark.django_db


def members_url(project) -> str:
    return f"/api/v1/projects/{project.slug}/members/"


def test_members_see_the_team(bob_api, project):
    response = bob_api.get(members_url(project))
    assert response.status_code == 200
    assert [(m["username"], m["role"]) for m in response.json()] == [
        ("alice", "admin"),
        ("bob", "viewer"),
    ]
    assert response.json()[1]["url"] == settings.BASE_URL + members_url(project) + "bob/"


def test_an_admin_adds_changes_and_removes_a_member(alice_api, charlie_api, alice, project):
    assert charlie_api.get(f"/api/v1/projects/{project.slug}/").status_code == 404
    added = alice_api.post(
        members_url(project), {"username": "charlie", "role": "deployer"}, format="json"
    )
    assert added.status_code == 201, added.content
    assert added.json()["role"] == "deployer"
    assert charlie_api.get(f"/api/v1/projects/{project.slug}/").json()["role"] == "deployer"

    changed = alice_api.patch(members_url(project) + "charlie/", {"role": "admin"}, format="json")
    assert changed.status_code == 200 and changed.json()["role"] == "admin"
    assert alice_api.delete(members_url(project) + "charlie/").status_code == 204
    assert charlie_api.get(f"/api/v1/projects/{project.slug}/").status_code == 404
    assert list(
        AuditEvent.objects.filter(actor=alice, action__startswith="member.")
        .order_by("created_at", "id")
        .values_list("action", "target")
    ) == [
        ("member.added", "charlie"),
        ("member.updated", "charlie"),
        ("member.removed", "charlie"),
    ]


def test_it_names_the_field_it_refuses(alice_api, project):
    unknown = alice_api.post(members_url(project), {"username": "nobody"}, format="json")
    assert unknown.status_code == 400 and "username" in unknown.json()
    twice = alice_api.post(members_url(project), {"username": "bob"}, format="json")
    assert twice.status_code == 400 and "username" in twice.json()
    role = alice_api.post(
        members_url(project), {"username": "charlie", "role": "owner"}, format="json"
    )
    assert role.status_code == 400 and "role" in role.json()


def test_the_last_admin_cannot_leave_or_step_down(alice_api, project):
    demoted = alice_api.patch(members_url(project) + "alice/", {"role": "viewer"}, format="json")
    assert demoted.status_code == 400
    assert "last admin" in demoted.json()["detail"]
    removed = alice_api.delete(members_url(project) + "alice/")
    assert removed.status_code == 400
    assert "last admin" in removed.json()["detail"]
    assert Membership.objects.get(user__username="alice").role == Role.ADMIN
    # With a second admin, she can.
    alice_api.patch(members_url(project) + "bob/", {"role": "admin"}, format="json")
    assert alice_api.delete(members_url(project) + "alice/").status_code == 204


def test_only_admins_manage_members(bob_api, bob, charlie, project):
    for role in (Role.VIEWER, Role.DEPLOYER):
        Membership.objects.filter(user=bob).update(role=role)
        assert (
            bob_api.post(members_url(project), {"username": "charlie"}, format="json").status_code
            == 403
        )
        assert (
            bob_api.patch(
                members_url(project) + "bob/", {"role": "admin"}, format="json"
            ).status_code
            == 403
        )
        assert bob_api.delete(members_url(project) + "alice/").status_code == 403
    assert Membership.objects.filter(project=project).count() == 2


def test_someone_outside_the_project_sees_no_members(charlie_api, project):
    assert charlie_api.get(members_url(project)).status_code == 404
    assert charlie_api.get(members_url(project) + "alice/").status_code == 404
    assert charlie_api.delete(members_url(project) + "bob/").status_code == 404
