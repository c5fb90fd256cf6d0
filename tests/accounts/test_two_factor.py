"""TOTP two-factor sign-in with recovery codes (django-otp), with real codes from the key."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django_otp.oath import totp
from django_otp.plugins.otp_static.models import StaticToken
from django_otp.plugins.otp_totp.models import TOTPDevice

from projects.accounts import totp_enrolment, two_factor_enable
from projects.models import AuditEvent, SiteSettings
from tests.accounts.conftest import sign_in
from tests.api.conftest import client_for


def code(device: TOTPDevice, steps_ahead: int = 0) -> str:
    """The code an authenticator app shows now (or ``steps_ahead`` periods of 30 s later)."""
    return f"{totp(device.bin_key, drift=steps_ahead):06d}"


def enrol(user) -> tuple[TOTPDevice, list[str]]:
    device = totp_enrolment(user)
    recovery = two_factor_enable(user=user, device=device, code=code(device))
    device.refresh_from_db()
    return device, recovery


def test_it_enrols_an_app_with_a_code_and_shows_ten_recovery_codes_once(alice, alice_client):
    page = alice_client.get("/account/two-factor/").content.decode()
    assert "data:image/svg+xml;base64," in page  # the QR code, drawn by Slipway itself
    device = TOTPDevice.objects.get(user=alice, confirmed=False)
    secret = re.search(r'id="totp-secret">([A-Z2-7]+)<', page)
    assert secret and len(secret.group(1)) == 32

    wrong = alice_client.post("/account/two-factor/", {"action": "enable", "code": "000000"})
    assert "is not the one your app shows now" in wrong.content.decode()
    device.refresh_from_db()
    assert not device.confirmed
    device.throttle_reset()

    shown = alice_client.post("/account/two-factor/", {"action": "enable", "code": code(device)})
    codes = re.findall(r"<li>([a-z0-9]+)</li>", shown.content.decode())
    assert len(codes) == 10 and len(set(codes)) == 10
    assert "no-cache" in shown["Cache-Control"]
    device.refresh_from_db()
    assert device.confirmed
    later = alice_client.get("/account/two-factor/").content.decode()
    assert "You have 10 recovery codes left" in later
    assert not any(recovery in later for recovery in codes)
    assert AuditEvent.objects.filter(action="two_factor.enabled", actor=alice).exists()


def test_sign_in_asks_for_the_code_after_the_password(alice):
    device, _ = enrol(alice)
    browser = Client()
    response = sign_in(browser, "alice")
    assert response.status_code == 302 and response["Location"] == "/login/code/"
    # The password alone signs nobody in.
    assert browser.get("/")["Location"].startswith("/login/")
    browser = Client()
    sign_in(browser, "alice")

    wrong = browser.post("/login/code/", {"code": "123456"})
    assert wrong.status_code == 200 and "This code is not right" in wrong.content.decode()
    device.refresh_from_db()
    device.throttle_reset()

    right = browser.post("/login/code/", {"code": code(device, steps_ahead=1)})
    assert right.status_code == 302 and right["Location"] == "/"
    assert browser.get("/").status_code == 200


def test_a_code_is_refused_the_second_time(alice):
    device, _ = enrol(alice)
    used = code(device, steps_ahead=1)
    first = Client()
    sign_in(first, "alice")
    assert first.post("/login/code/", {"code": used}).status_code == 302

    replay = Client()
    sign_in(replay, "alice")
    refused = replay.post("/login/code/", {"code": used})
    assert refused.status_code == 200 and "This code is not right" in refused.content.decode()
    assert replay.get("/")["Location"].startswith("/login/")


def test_a_recovery_code_works_once(alice):
    _, recovery = enrol(alice)
    browser = Client()
    sign_in(browser, "alice")
    assert browser.post("/login/code/", {"code": recovery[0]}).status_code == 302
    assert StaticToken.objects.filter(device__user=alice).count() == 9

    again = Client()
    sign_in(again, "alice")
    assert again.post("/login/code/", {"code": recovery[0]}).status_code == 200


def test_the_code_page_without_a_password_first_sends_back_to_sign_in(alice):
    response = Client().post("/login/code/", {"code": "123456"})
    assert response.status_code == 302 and response["Location"] == "/login/"


def test_a_session_without_a_code_is_signed_out_once_the_user_has_an_app(alice, alice_client):
    enrol(alice)
    # alice_client signed in before the app was added (another browser): it must give a code.
    response = alice_client.get("/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")
    assert alice_client.get("/account/tokens/")["Location"].startswith("/login/")


def test_turning_it_off_needs_a_current_code_or_the_password(alice):
    device, _ = enrol(alice)
    browser = Client()
    sign_in(browser, "alice")
    browser.post("/login/code/", {"code": code(device, steps_ahead=1)})

    refused = browser.post("/account/two-factor/", {"action": "disable", "password": "wrong"})
    assert "is not right" in refused.content.decode()
    assert TOTPDevice.objects.filter(user=alice).exists()

    browser.post("/account/two-factor/", {"action": "disable", "password": "alice-password-1"})
    assert not TOTPDevice.objects.filter(user=alice).exists()
    assert not StaticToken.objects.filter(device__user=alice).exists()
    assert sign_in(Client(), "alice")["Location"] == "/"


@pytest.fixture
def required(db):
    site = SiteSettings.load()
    site.require_two_factor = True
    site.save()


def test_when_required_a_user_without_an_app_can_only_enrol(required, bob, bob_client):
    home = bob_client.get("/")
    assert home.status_code == 302 and home["Location"] == "/account/two-factor/"
    assert bob_client.get("/account/tokens/")["Location"] == "/account/two-factor/"
    assert bob_client.get("/api/v1/me/").status_code == 403
    page = bob_client.get("/account/two-factor/").content.decode()
    assert "requires two-factor sign-in" in page
    # API tokens are the API's second factor: they go on working.
    assert client_for(bob).get("/api/v1/me/").status_code == 200

    device = TOTPDevice.objects.get(user=bob, confirmed=False)
    bob_client.post("/account/two-factor/", {"action": "enable", "code": code(device)})
    assert bob_client.get("/").status_code == 200
    # Required means it cannot be turned off.
    bob_client.post("/account/two-factor/", {"action": "disable", "password": "bob-password-1"})
    assert TOTPDevice.objects.filter(user=bob, confirmed=True).exists()


def test_the_admin_site_sits_behind_the_same_sign_in(site_admin):
    device, _ = enrol(site_admin)
    browser = Client()

    def lands_on_sign_in() -> bool:
        chain = browser.get("/django-admin/", follow=True).redirect_chain
        return bool(chain) and chain[-1][0].startswith("/login/?next=")

    assert lands_on_sign_in()
    sign_in(browser, "alice")
    assert lands_on_sign_in()
    browser.post("/login/code/", {"code": code(device, steps_ahead=1)})
    assert browser.get("/django-admin/").status_code == 200


def test_turning_it_off_with_a_current_code(alice):
    device, _ = enrol(alice)
    browser = Client()
    sign_in(browser, "alice")
    browser.post("/login/code/", {"code": code(device, steps_ahead=1)})
    browser.post("/account/two-factor/", {"action": "disable", "code": code(device, steps_ahead=2)})
    assert not TOTPDevice.objects.filter(user=alice).exists()
    assert AuditEvent.objects.filter(action="two_factor.disabled", actor=alice).exists()


def test_a_site_admin_resets_a_lost_phone(site_admin, bob, charlie_client):
    enrol(bob)
    admin = Client()
    admin.force_login(site_admin)
    bob_browser = Client()
    bob_browser.force_login(bob)

    assert charlie_client.post("/users/bob/reset-two-factor/").status_code == 403
    assert TOTPDevice.objects.filter(user=bob).exists()

    admin.post("/users/bob/reset-two-factor/")
    assert not TOTPDevice.objects.filter(user=bob).exists()
    assert not StaticToken.objects.filter(device__user=bob).exists()
    assert bob_browser.get("/")["Location"].startswith("/login/")
    assert sign_in(Client(), "bob")["Location"] == "/"
    assert AuditEvent.objects.get(action="two_factor.reset").actor == site_admin
