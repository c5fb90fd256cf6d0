"""What a webhook body may be: at most 1 MB, JSON (or GitHub's form-encoded payload)."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlencode

import pytest
from asgiref.sync import async_to_sync
from django.core.handlers.asgi import ASGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections

from builds.models import Deployment, WebhookDelivery, WebhookOutcome
from builds.webhooks import MAX_BODY_BYTES
from tests.webhooks import payloads

pytestmark = pytest.mark.django_db


def _padded_push(size: int) -> bytes:
    """A well-formed GitHub push of exactly ``size`` bytes."""
    payload = payloads.github_push()
    payload["padding"] = ""
    base = len(payloads.encode(payload))
    payload["padding"] = "x" * (size - base)
    body = payloads.encode(payload)
    assert len(body) == size
    return body


def test_it_accepts_a_body_of_exactly_one_megabyte(shop, make_server, post):
    make_server(shop, "web1")
    body = _padded_push(MAX_BODY_BYTES)

    response = post(shop, body, **payloads.github_headers(body, shop.webhook_secret))

    assert response.status_code == 202, response.content


@pytest.mark.parametrize("size", [MAX_BODY_BYTES + 1, 3 * MAX_BODY_BYTES])
def test_it_refuses_a_larger_body_with_413(shop, make_server, post, size, settings):
    make_server(shop, "web1")
    # 3 MB is above Django's DATA_UPLOAD_MAX_MEMORY_SIZE, which would answer 400 if it came first.
    assert settings.DATA_UPLOAD_MAX_MEMORY_SIZE < 3 * MAX_BODY_BYTES
    body = _padded_push(size)

    response = post(shop, body, **payloads.github_headers(body, shop.webhook_secret))

    assert response.status_code == 413
    assert not Deployment.objects.exists()
    assert WebhookDelivery.objects.get().outcome == WebhookOutcome.REJECTED


def test_it_counts_the_bytes_of_a_body_sent_without_a_length(shop, make_server):
    """A chunked request declares no Content-Length: the bytes read are what count."""
    make_server(shop, "web1")
    body = _padded_push(MAX_BODY_BYTES + 1)
    headers = payloads.github_headers(body, shop.webhook_secret)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": shop.webhook_path,
        "raw_path": shop.webhook_path.encode(),
        "query_string": b"",
        "server": ("testserver", 80),
        "client": ("127.0.0.1", 50000),
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json")]
        + [
            (name.removeprefix("HTTP_").replace("_", "-").lower().encode(), value.encode())
            for name, value in headers.items()
        ],
    }
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    sent: list[dict[str, Any]] = []

    async def receive():
        if not chunks:
            # The client stays connected: wait until the handler stops listening.
            await asyncio.Event().wait()
        chunk = chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}

    async def send(message):
        sent.append(message)

    # As Django's test client does: the test's transaction must outlive the request.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        async_to_sync(ASGIHandler())(scope, receive, send)
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)

    assert sent[0]["status"] == 413
    assert not Deployment.objects.exists()


def test_it_refuses_a_body_that_is_not_json(shop, make_server, post):
    make_server(shop, "web1")
    body = b'{"ref": "refs/heads/main", "after": '

    response = post(shop, body, **payloads.github_headers(body, shop.webhook_secret))

    assert response.status_code == 400
    assert response.json()["reason"] == "The body is not JSON"
    assert not Deployment.objects.exists()


def test_it_refuses_json_that_is_not_an_object(shop, post):
    body = b'["refs/heads/main"]'
    assert post(shop, body, **payloads.github_headers(body, shop.webhook_secret)).status_code == 400


def test_it_refuses_a_push_missing_its_ref(shop, post):
    payload = payloads.github_push()
    del payload["ref"]
    body = payloads.encode(payload)

    response = post(shop, body, **payloads.github_headers(body, shop.webhook_secret))

    assert response.status_code == 400
    assert "ref" in response.json()["reason"]


def test_it_refuses_a_head_that_is_not_a_full_sha(shop, post):
    body = payloads.encode(payloads.github_push(after="main", commits=[("main", "x")]))
    response = post(shop, body, **payloads.github_headers(body, shop.webhook_secret))
    assert response.status_code == 400


def test_it_reads_githubs_form_encoded_payload(shop, make_server, post):
    make_server(shop, "web1")
    head = payloads.fake_sha("form")
    payload = payloads.github_push(after=head, commits=[(head, "Form")])
    body = urlencode({"payload": payloads.encode(payload).decode()}).encode()

    response = post(
        shop,
        body,
        content_type="application/x-www-form-urlencoded",
        **payloads.github_headers(body, shop.webhook_secret),
    )

    assert response.json()["status"] == "queued"
    assert Deployment.objects.get().revision == head


def test_it_refuses_a_form_body_from_other_providers(shop, make_server, post):
    make_server(shop, "web1")
    body = urlencode({"payload": payloads.encode(payloads.gitlab_push()).decode()}).encode()

    response = post(
        shop,
        body,
        content_type="application/x-www-form-urlencoded",
        **payloads.gitlab_headers(shop.webhook_secret),
    )

    assert response.status_code == 400


def test_it_refuses_a_form_body_without_a_payload_field(shop, post):
    body = b"ref=refs%2Fheads%2Fmain"
    response = post(
        shop,
        body,
        content_type="application/x-www-form-urlencoded",
        **payloads.github_headers(body, shop.webhook_secret),
    )
    assert response.status_code == 400


def test_a_body_nested_too_deeply_is_refused_with_400(shop, make_server, post):
    make_server(shop, "web1")
    body = b"[" * 5000 + b"]" * 5000
    response = post(shop, body, **payloads.custom_headers(shop.webhook_secret))
    assert response.status_code == 400
    assert b"too deeply" in response.content
    assert not Deployment.objects.exists()


@pytest.mark.parametrize("branch", ["ma\\ud800in", "ma\\u0000in"])
def test_text_that_cannot_be_stored_is_refused_with_400_naming_the_field(
    shop, make_server, post, branch
):
    make_server(shop, "web1")
    body = ('{"branch": "' + branch + '", "revision": "HEAD"}').encode()
    response = post(shop, body, **payloads.custom_headers(shop.webhook_secret))
    assert response.status_code == 400
    assert b"branch" in response.content
    assert not Deployment.objects.exists()
