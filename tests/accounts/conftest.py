"""Account fixtures: the personas' passwords, signed-in browsers, and a real SMTP server.

Alice is a site admin where a test needs one (the ``site_admin`` fixture), Bob a member of a
project, Charlie has no access at all.
"""

from __future__ import annotations

from typing import Any

from django.test import Client

from tests.notifications.conftest import mail_server  # noqa: F401 (a fixture, used by name)

PASSWORDS = {
    "alice": "alice-password-1",
    "bob": "bob-password-1",
    "charlie": "charlie-password-1",
}


def sign_in(client: Client, username: str, password: str | None = None, **extra: Any):
    """Post the sign-in form as a person does; answers the response (not followed)."""
    return client.post(
        "/login/",
        {"username": username, "password": password or PASSWORDS[username]},
        **extra,
    )
