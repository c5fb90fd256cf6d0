"""Odd text in every field of every form on the dashboard's pages (NUL, bytes that are not
UTF-8, a surrogate's bytes, a 1 MB string) gets a 400 page naming the field and changes
nothing; never a 500. On SQLite, and on PostgreSQL when DATABASE_URL points at one."""

from __future__ import annotations

import html
import re

import pytest

from projects.models import AuditEvent
from servers.models import Server

pytestmark = pytest.mark.django_db

# Raw urlencoded values, as a browser or a script could send them.
ODD_VALUES = {
    "NUL": b"a%00b",
    "bytes that are not UTF-8": b"caf%E9",
    "a surrogate's bytes": b"%ED%A0%80",
    "a 1 MB string": b"x" * (1 << 20),
}
FORM = re.compile(r"<form\b([^>]*)>(.*?)</form>", re.S)
NAME = re.compile(r"""<(?:input|textarea|select)\b[^>]*\bname="([^"]+)\"""")


def _forms(page: str, path: str) -> list[tuple[str, list[str]]]:
    """(action, field names) of the page's POST forms."""
    found = []
    for attributes, body in FORM.findall(page):
        if 'method="post"' not in attributes:
            continue
        action = re.search(r'action="([^"]*)"', attributes)
        names = sorted(set(NAME.findall(body)) - {"csrfmiddlewaretoken"})
        found.append((html.unescape(action.group(1)) if action else path, names))
    return found


def test_odd_text_in_any_dashboard_form_field_gets_a_400_naming_it(
    site_admin, alice_client, project
):
    server = Server.objects.create(
        project=project, name="web1", hostname="127.0.0.1", port=9, username="deploy"
    )
    slug = project.slug
    pages = [
        "/projects/new/",
        f"/projects/{slug}/settings/",
        f"/projects/{slug}/members/",
        f"/projects/{slug}/deploy/",
        f"/projects/{slug}/servers/new/",
        f"/projects/{slug}/servers/{server.pk}/edit/",
        *[
            f"/projects/{slug}/settings/{kind}/"
            for kind in (
                "commands",
                "config-files",
                "excluded-files",
                "environment",
                "build-commands",
                "groups",
                "health-checks",
                "notifications",
            )
        ],
        "/account/tokens/",
        "/account/password/",
    ]
    events = AuditEvent.objects.count()
    wrong, fields = [], 0
    for path in pages:
        page = alice_client.get(path)
        assert page.status_code == 200, path
        for action, names in _forms(page.content.decode(), path):
            for name in names:
                fields += 1
                for what, value in ODD_VALUES.items():
                    body = name.encode() + b"=" + value
                    response = alice_client.post(
                        action, data=body, content_type="application/x-www-form-urlencoded"
                    )
                    shown = html.unescape(response.content.decode())
                    if response.status_code != 400 or f"field {name} " not in re.sub(
                        r"<[^>]+>", "", shown
                    ):
                        wrong.append(f"{action} {name} with {what}: {response.status_code}")
    assert fields > 60
    assert wrong == []
    assert AuditEvent.objects.count() == events


def test_odd_text_on_the_sign_in_page_gets_a_400(client):
    response = client.post(
        "/login/",
        data=b"username=a%00b&password=x",
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 400
    assert "username" in response.content.decode()


def test_a_nul_in_a_dashboard_query_gets_a_400_naming_it(alice_client, project):
    response = alice_client.get(f"/projects/{project.slug}/deploy/?revision=a%00b")
    assert response.status_code == 400
    assert "revision" in response.content.decode()
