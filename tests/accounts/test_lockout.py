"""Sign-in throttling and lockout per account and per address (django-axes)."""

from __future__ import annotations

import pytest
from axes.models import AccessAttempt
from django.core.management import call_command
from django.test import Client

from tests.accounts.conftest import sign_in

ATTACKER = {"REMOTE_ADDR": "203.0.113.7"}
ELSEWHERE = {"REMOTE_ADDR": "198.51.100.20"}
OFFICE = {"REMOTE_ADDR": "192.0.2.44"}


@pytest.fixture(autouse=True)
def _limit(settings):
    settings.AXES_FAILURE_LIMIT = 3


def _fail(username: str, times: int, address: dict[str, str]) -> None:
    for _ in range(times):
        response = sign_in(Client(), username, "not-the-password", **address)
        assert response.status_code in (200, 429)


def test_wrong_passwords_lock_the_account_and_the_address(alice, bob, charlie):
    _fail("alice", 3, ATTACKER)

    locked = sign_in(Client(), "alice", **ATTACKER)
    assert locked.status_code == 429
    page = locked.content.decode()
    assert "Sign-in locked" in page and "axes_reset_username" in page
    # The right password from another address: the account itself is locked.
    assert sign_in(Client(), "alice", **ELSEWHERE).status_code == 429
    # Another account from the attacker's address: the address is locked too.
    assert sign_in(Client(), "bob", **ATTACKER).status_code == 429
    # Another account from another address still signs in.
    fine = sign_in(Client(), "charlie", **OFFICE)
    assert fine.status_code == 302 and fine["Location"] == "/"


def test_fewer_failures_lock_nothing(alice):
    _fail("alice", 2, ATTACKER)
    assert sign_in(Client(), "alice", **ATTACKER).status_code == 302


def test_a_locked_account_is_refused_on_the_admin_site_too(site_admin):
    _fail("alice", 3, ATTACKER)
    # The admin site has no password form of its own: it sends people to Slipway's sign-in.
    admin = Client().get("/django-admin/login/?next=/django-admin/")
    assert admin.status_code == 302 and admin["Location"].startswith("/login/")
    assert sign_in(Client(), "alice", **ELSEWHERE).status_code == 429


def test_the_reset_command_unlocks_an_account(alice):
    _fail("alice", 3, ATTACKER)
    assert AccessAttempt.objects.exists()
    call_command("axes_reset_username", "alice")
    call_command("axes_reset_ip", ATTACKER["REMOTE_ADDR"])
    assert sign_in(Client(), "alice", **ATTACKER).status_code == 302
