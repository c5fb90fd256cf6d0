"""The dashboard's API tokens page: a token's scope and expiry are chosen there and shown in
the list; a wrong expiry is refused beside its field."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from projects.models import ApiToken, TokenScope
from tests.dashboard.support import field_errors

pytestmark = pytest.mark.django_db


def test_it_issues_a_scoped_expiring_token_and_lists_both(alice_client, alice):
    response = alice_client.post(
        "/account/tokens/", {"name": "CI", "scope": "deploy", "expires_in_days": "30"}
    )
    assert response.status_code == 200
    record = ApiToken.objects.get(user=alice)
    assert record.scope == TokenScope.DEPLOY
    assert record.expires_at is not None
    assert abs(record.expires_at - (timezone.now() + timedelta(days=30))) < timedelta(minutes=1)
    html = response.content.decode()
    assert "Scope <strong>deploy</strong>" in html
    listed = alice_client.get("/account/tokens/").content.decode()
    assert '<td data-label="Scope">deploy</td>' in listed
    assert record.expires_at.strftime("%Y-%m-%d %H:%M") in listed


def test_it_shows_a_token_without_expiry_and_an_expired_one(alice_client, alice):
    ApiToken.issue(user=alice, name="forever", scope=TokenScope.READ)
    ApiToken.issue(
        user=alice, name="old", scope=TokenScope.ADMIN, expires_at=timezone.now() - timedelta(1)
    )
    html = alice_client.get("/account/tokens/").content.decode()
    assert '<td data-label="Scope">read</td>' in html
    assert '<td data-label="Expires"><span class="muted">never</span></td>' in html
    assert '<span class="muted">expired</span>' in html


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({"expires_at": "2020-01-01T00:00"}, "expires_at", "in the past"),
        ({"expires_at": "2099-01-01T00:00", "expires_in_days": "3"}, "expires_at", "not both"),
        ({"expires_in_days": "0"}, "expires_in_days", "greater than or equal to 1"),
        ({"scope": "root"}, "scope", "Select a valid choice"),
    ],
)
def test_it_refuses_a_wrong_scope_or_expiry_beside_its_field(alice_client, data, field, words):
    response = alice_client.post("/account/tokens/", {"name": "CI", "scope": "read", **data})
    assert any(words in error for error in field_errors(response.content.decode(), field))
    assert not ApiToken.objects.exists()
