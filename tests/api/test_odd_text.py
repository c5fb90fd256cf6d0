"""Odd text in every field of every writable API operation (NUL, a lone surrogate, bytes that
are not UTF-8, a 1 MB string) gets a 400 that names the field, never a 500: on SQLite, and
on PostgreSQL when DATABASE_URL points at one (PostgreSQL refuses NUL in text, which is
where 500s come from)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from rest_framework.test import APIClient

from tests.api.surface import SCHEMA_URL, one_of_each, request_properties, write_operations

pytestmark = pytest.mark.django_db

MEGABYTE = "x" * (1 << 20)
# Raw JSON texts for a value, as a client could send them.
ODD_VALUES = {
    "NUL": json.dumps("a\x00b").encode(),
    "a lone surrogate": b'"a\\ud800b"',
    "a 1 MB string": json.dumps(MEGABYTE).encode(),
    "a NUL in a list": json.dumps(["a\x00b"]).encode(),
}
NOT_UTF8 = b'"caf\xe9 \xff\xfe"'

# Operations that reach the network or start work whatever their body (tested elsewhere).
SKIPPED = {"/api/v1/projects/{slug}/servers/{server_id}/check/"}


def _send(client: APIClient, method: str, path: str, body: bytes) -> Any:
    return getattr(client, method)(path, data=body, content_type="application/json")


def _fields_named(response: Any) -> set[str]:
    body = response.json()
    return set(body) if isinstance(body, dict) else set()


def _cases(alice_api: APIClient, objects: dict[str, Any]):
    schema = alice_api.get(SCHEMA_URL).json()
    for method, path, real, operation in write_operations(alice_api, objects):
        if method == "delete" or path in SKIPPED:
            continue
        for field in request_properties(schema, operation):
            yield method, path, real, field


def test_odd_text_in_any_field_gets_a_400_naming_it(alice_api, project):
    objects = one_of_each(project)
    cases = list(_cases(alice_api, objects))
    assert len(cases) > 80
    refused = []
    for method, path, real, field in cases:
        for what, value in {**ODD_VALUES, "bytes that are not UTF-8": NOT_UTF8}.items():
            body = b'{"' + field.encode() + b'": ' + value + b"}"
            response = _send(alice_api, method, real, body)
            if response.status_code != 400 or field not in _fields_named(response):
                refused.append(
                    f"{method.upper()} {path} {field} with {what}: "
                    f"{response.status_code} {response.content[:200]!r}"
                )
    assert refused == []


def test_a_body_that_is_not_utf8_anywhere_names_where(alice_api, project):
    response = _send(
        alice_api,
        "post",
        f"/api/v1/projects/{project.slug}/commands/",
        b'{"command": "true", "servers": [], "description": "\xff"}',
    )
    assert response.status_code == 400
    assert "UTF-8" in response.json()["description"][0]
    nested = _send(
        alice_api,
        "post",
        f"/api/v1/projects/{project.slug}/build-commands/",
        b'{"command": "true", "watch_globs": ["ok", "\xc3"]}',
    )
    assert nested.status_code == 400
    assert "watch_globs" in nested.json()


def test_odd_text_in_a_form_encoded_body_gets_a_400_naming_the_field(alice_api, project):
    path = f"/api/v1/projects/{project.slug}/commands/"
    nul = alice_api.post(
        path, data="command=a%00b", content_type="application/x-www-form-urlencoded"
    )
    assert nul.status_code == 400 and "command" in nul.json()
    raw = alice_api.post(
        path, data=b"command=caf\xe9", content_type="application/x-www-form-urlencoded"
    )
    assert raw.status_code == 400 and "command" in raw.json()
    escaped = alice_api.post(
        path, data="command=caf%E9", content_type="application/x-www-form-urlencoded"
    )
    assert escaped.status_code == 400 and "command" in escaped.json()


# As a client sends them: NUL, a surrogate's UTF-8-like bytes, a byte that is not UTF-8.
@pytest.mark.parametrize("value", ["a%00b", "%ED%A0%80", "caf%E9"])
def test_odd_text_in_a_query_gets_a_400_naming_the_parameter(alice_api, project, value):
    objects = one_of_each(project)
    response = alice_api.get(f"/api/v1/deployments/{objects['deployment_id']}/log/?after={value}")
    assert response.status_code == 400 and "after" in response.json()


def test_json_keeps_refusing_nan_and_infinity(alice_api, project):
    response = _send(
        alice_api,
        "post",
        f"/api/v1/projects/{project.slug}/commands/",
        b'{"command": "true", "timeout_seconds": NaN}',
    )
    assert response.status_code == 400
    assert "JSON parse error" in response.json()["detail"]


def test_a_body_nested_too_deeply_gets_a_400(alice_api, project):
    response = _send(
        alice_api,
        "post",
        f"/api/v1/projects/{project.slug}/commands/",
        b'{"command": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    )
    assert response.status_code == 400
    assert "too deeply" in response.json()["detail"]
