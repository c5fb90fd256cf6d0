"""Helpers shared by the dashboard's tests."""

from __future__ import annotations

import html as html_lib
import re
import sys
import types

from django.test import Client

from projects.models import Membership, Role

TRUSTED = "SHA256:" + "k" * 43
FIRST_SHA = "1" * 40
SECOND_SHA = "2" * 40


def signed_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def make_deployer(project, user) -> None:
    Membership.objects.filter(project=project, user=user).update(role=Role.DEPLOYER)


def forms_posting_to(html: str) -> list[str]:
    """The actions of the POST forms on a page (what a person could change from it)."""
    forms = re.findall(r"<form\b[^>]*>", html)
    actions = [re.search(r'action="([^"]*)"', form) for form in forms if 'method="post"' in form]
    return [action.group(1) if action else "" for action in actions]


def field_errors(html: str, field: str) -> list[str]:
    """The errors shown inside the block of one form field (id="field-<name>")."""
    match = re.search(rf'<div class="field[^"]*" id="field-{field}">(.*?)\n</div>', html, re.S)
    assert match, f"no field {field} on the page"
    return [
        html_lib.unescape(e)
        for e in re.findall(r"<p class=\"error\" role=\"alert\">(.*?)</p>", match.group(1), re.S)
    ]


def websocket_communicator() -> type:
    """channels.testing.WebsocketCommunicator.

    The package's __init__ also imports its live-server test case, which needs daphne; Slipway
    serves with uvicorn and does not install daphne, and the communicator does not need it.
    So when daphne is missing, that one import is answered with a stub.
    """
    try:
        import daphne  # noqa: F401
    except ImportError:
        stub = types.ModuleType("channels.testing.live")
        stub.ChannelsLiveServerTestCase = None  # type: ignore[attr-defined]
        sys.modules.setdefault("channels.testing.live", stub)
    from channels.testing import WebsocketCommunicator

    return WebsocketCommunicator
