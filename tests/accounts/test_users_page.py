"""The site admins' Users page: create, invite, deactivate, reactivate, site admin, settings."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import User
from django.contrib.sessions.models import Session
from django.test import Client
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.plugins.otp_totp.models import TOTPDevice

from projects.models import AuditEvent, ProjectCreators, SiteSettings
from tests.accounts.conftest import sign_in
from tests.api.conftest import client_for

INVITATION = re.compile(r'value="(http://[^"]+/invitation/[^"]+)"')


def _invitation_link(page: str) -> str:
    match = INVITATION.search(page)
    assert match, "no invitation link on the page"
    return match.group(1)


def test_only_site_admins_reach_the_users_page(alice, bob_client, charlie_client, site_admin):
    for client in (bob_client, charlie_client):
        response = client.get("/users/")
        assert response.status_code == 403
        assert "Only site admins" in response.content.decode()
        assert client.post("/users/bob/deactivate/").status_code == 403
    assert User.objects.get(username="bob").is_active


def test_it_lists_every_user(site_admin, alice_client, bob, charlie):
    page = alice_client.get("/users/").content.decode()
    for name in ("alice", "bob", "charlie"):
        assert f">{name}" in page
    assert "site admin" in page


def test_it_creates_a_user_with_a_password_checked_by_djangos_validators(site_admin, alice_client):
    weak = alice_client.post(
        "/users/",
        {
            "action": "create",
            "username": "dave",
            "email": "",
            "usable_password": "true",
            "password1": "password",
            "password2": "password",
        },
    )
    assert weak.status_code == 200
    assert "This password is too common" in weak.content.decode()
    assert not User.objects.filter(username="dave").exists()

    response = alice_client.post(
        "/users/",
        {
            "action": "create",
            "username": "dave",
            "email": "dave@example.com",
            "usable_password": "true",
            "password1": "a-long-fine-passphrase-7",
            "password2": "a-long-fine-passphrase-7",
        },
    )
    assert response.status_code == 302
    dave = User.objects.get(username="dave")
    assert dave.is_active and not dave.is_superuser
    assert sign_in(Client(), "dave", "a-long-fine-passphrase-7").status_code == 302
    event = AuditEvent.objects.get(action="user.created", target="dave")
    assert event.actor == site_admin and event.detail == {"invited": False}


def test_an_invitation_link_sets_the_password_once(site_admin, alice_client):
    page = alice_client.post(
        "/users/", {"action": "create", "username": "erin", "email": "", "usable_password": "false"}
    ).content.decode()
    link = _invitation_link(page)
    assert "It was not emailed: mail is not set up" in page
    erin = User.objects.get(username="erin")
    assert not erin.has_usable_password()

    invitee = Client()
    form = invitee.get(link, follow=True)
    assert "Choose your password" in form.content.decode()
    chosen = invitee.post(
        form.redirect_chain[-1][0],
        {"new_password1": "erins-own-passphrase-3", "new_password2": "erins-own-passphrase-3"},
    )
    assert chosen.status_code == 302 and chosen["Location"] == "/login/"
    assert sign_in(Client(), "erin", "erins-own-passphrase-3").status_code == 302

    again = Client().get(link, follow=True).content.decode()
    assert "This link does not work" in again
    assert AuditEvent.objects.filter(action="user.invited", target="erin").count() == 1


def test_an_invitation_is_emailed_when_mail_is_set_up(site_admin, alice_client, mail_server):
    page = alice_client.post(
        "/users/",
        {
            "action": "create",
            "username": "frank",
            "email": "frank@example.com",
            "usable_password": "false",
        },
    ).content.decode()
    link = _invitation_link(page)
    assert "It was also emailed to frank@example.com" in page
    [(sender, recipients, body)] = mail_server.messages
    assert sender == "deploys@slipway.test" and recipients == ["frank@example.com"]
    assert link.encode() in body


def test_a_user_with_a_password_gets_no_invitation(site_admin, alice_client, bob):
    alice_client.post("/users/bob/invite/")
    assert not AuditEvent.objects.filter(action="user.invited").exists()


def test_deactivation_ends_sessions_and_api_tokens_at_once(site_admin, alice_client, bob):
    bob_browser = Client()
    assert sign_in(bob_browser, "bob").status_code == 302
    assert bob_browser.get("/").status_code == 200
    bob_api = client_for(bob)
    assert bob_api.get("/api/v1/me/").status_code == 200

    response = alice_client.post("/users/bob/deactivate/")
    assert response.status_code == 302
    assert not User.objects.get(username="bob").is_active
    assert not [
        s for s in Session.objects.all() if s.get_decoded().get("_auth_user_id") == str(bob.pk)
    ]
    home = bob_browser.get("/")
    assert home.status_code == 302 and home["Location"].startswith("/login/")
    assert bob_api.get("/api/v1/me/").status_code == 401
    assert sign_in(Client(), "bob").status_code == 200  # the sign-in form again, refused

    alice_client.post("/users/bob/reactivate/")
    assert bob_api.get("/api/v1/me/").status_code == 200
    actions = set(AuditEvent.objects.filter(target="bob").values_list("action", flat=True))
    assert {"user.deactivated", "user.reactivated"} <= actions


def test_a_site_admin_cannot_deactivate_themselves(site_admin, alice_client):
    page = alice_client.post("/users/alice/deactivate/", follow=True).content.decode()
    assert "You cannot deactivate yourself" in page
    assert User.objects.get(username="alice").is_active


def test_the_last_active_site_admin_stays_one(site_admin, alice_client, bob):
    page = alice_client.post("/users/alice/revoke-admin/", follow=True).content.decode()
    assert "alice is the last active site admin" in page
    assert User.objects.get(username="alice").is_superuser

    alice_client.post("/users/bob/make-admin/")
    bob.refresh_from_db()
    assert bob.is_superuser and bob.is_staff
    bob_client = Client()
    bob_client.force_login(bob)
    # Bob may now take alice's admin away, but then not his own.
    bob_client.post("/users/alice/revoke-admin/")
    assert not User.objects.get(username="alice").is_superuser
    page = bob_client.post("/users/bob/revoke-admin/", follow=True).content.decode()
    assert "bob is the last active site admin" in page
    assert User.objects.get(username="bob").is_superuser
    assert AuditEvent.objects.filter(action="user.site_admin_granted", target="bob").exists()
    assert AuditEvent.objects.filter(action="user.site_admin_revoked", target="alice").exists()


def test_a_deactivated_admin_does_not_count_as_the_remaining_one(site_admin, alice_client, bob):
    bob.is_superuser = True
    bob.is_active = False
    bob.save()
    page = alice_client.post("/users/alice/revoke-admin/", follow=True).content.decode()
    assert "last active site admin" in page


def test_site_admins_change_the_site_settings(site_admin, alice_client):
    response = alice_client.post(
        "/users/",
        {"action": "settings", "project_creators": "everyone", "require_two_factor": "on"},
    )
    assert response.status_code == 302
    site = SiteSettings.load()
    assert site.project_creators == ProjectCreators.EVERYONE and site.require_two_factor
    event = AuditEvent.objects.get(action="site.settings_updated")
    assert event.detail == {"project_creators": "everyone", "require_two_factor": True}
    # The Users page lists it (alice must first set up two-factor sign-in, now required).
    TOTPDevice.objects.create(user=site_admin, name="app", confirmed=True)
    alice = Client()
    alice.force_login(site_admin)
    session = alice.session
    session[DEVICE_ID_SESSION_KEY] = TOTPDevice.objects.get(user=site_admin).persistent_id
    session.save()
    assert "site.settings_updated" in alice.get("/users/").content.decode()


@pytest.mark.parametrize("action", ["make-admin", "nonsense"])
def test_an_unknown_user_is_404(site_admin, alice_client, action):
    assert alice_client.post(f"/users/nobody/{action}/").status_code == 404
