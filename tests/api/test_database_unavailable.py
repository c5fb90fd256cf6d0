"""The database unreachable: the API and webhooks answer 503 JSON with Retry-After, the
dashboard a plain 503 page; never a 500 (a client that retries then records its request once).
Both modes: SQLite's file, or PostgreSQL's port, made unreachable under the running code."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.db import connection
from django.test import Client

from tests.api.conftest import client_for
from tests.dashboard.support import signed_in
from tests.support.processes import free_port

pytestmark = pytest.mark.django_db(transaction=True)


@contextmanager
def database_unreachable(tmp_path) -> Iterator[None]:
    saved = dict(connection.settings_dict)
    connection.close()
    if connection.vendor == "postgresql":
        connection.settings_dict.update(HOST="127.0.0.1", PORT=str(free_port()))
    else:
        connection.settings_dict["NAME"] = str(tmp_path / "gone" / "slipway.sqlite3")
    try:
        yield
    finally:
        connection.close()
        connection.settings_dict.clear()
        connection.settings_dict.update(saved)


def test_the_api_answers_503_json_with_retry_after(tmp_path, alice, project):
    api = client_for(alice)
    api.raise_request_exception = False
    url = f"/api/v1/projects/{project.slug}/deployments/"

    with database_unreachable(tmp_path):
        created = api.post(url, {"servers": [1]}, format="json")
        listed = api.get(url)

    for answer in (created, listed):
        assert answer.status_code == 503
        assert answer["Content-Type"] == "application/json"
        assert int(answer["Retry-After"]) > 0
        assert "database is not available" in answer.json()["detail"]


def test_a_webhook_answers_503_json_with_retry_after(tmp_path):
    client = Client(raise_request_exception=False)

    with database_unreachable(tmp_path):
        answer = client.post(
            "/hooks/some-token/", b"{}", content_type="application/json", HTTP_X_GITHUB_EVENT="push"
        )

    assert answer.status_code == 503
    assert int(answer["Retry-After"]) > 0
    assert "database is not available" in answer.json()["detail"]


def test_the_dashboard_shows_a_plain_503_page(tmp_path, alice):
    browser = signed_in(alice)
    browser.raise_request_exception = False

    with database_unreachable(tmp_path):
        answer = browser.get("/")

    assert answer.status_code == 503
    assert int(answer["Retry-After"]) > 0
    assert b"cannot reach its database" in answer.content
