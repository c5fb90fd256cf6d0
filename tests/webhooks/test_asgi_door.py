"""Under ASGI (`manage.py serve`) webhook deliveries are answered by builds.webhook_door, not
by Django's request cycle: the same answers as the Django view for the same requests, the
Host check, the body limit, 503 when the database is away, and everything else left to
Django. Driven through the real ASGI application (deployer.asgi's stack) with httpx."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, cast

import httpx
import pytest
from django.core.asgi import get_asgi_application
from django.db import connection

from builds.models import WebhookDelivery, WebhookOutcome
from builds.webhook_door import WAITING_BYTES, WebhookDoor
from builds.webhooks import MAX_BODY_BYTES
from deployer.models import OutboxMessage
from projects.services import project_create
from tests.api.test_database_unavailable import database_unreachable
from tests.webhooks import payloads

pytestmark = pytest.mark.django_db(transaction=True)


def _asgi_headers(django_headers: dict[str, Any]) -> dict[str, str]:
    """The test client's HTTP_X_FOO keys as the header names a Git host sends."""
    return {
        key.removeprefix("HTTP_").replace("_", "-"): str(value)
        for key, value in django_headers.items()
    }


def _post_all(requests: list[tuple[str, bytes, dict[str, str]]], **client: Any):
    """POST each (path, body, headers) through the door in front of Django's ASGI handler."""
    door = WebhookDoor(get_asgi_application(), threads=2)

    async def run() -> list[httpx.Response]:
        # httpx and Django type the ASGI callables differently.
        transport = httpx.ASGITransport(app=cast(Any, door))
        async with httpx.AsyncClient(
            transport=transport, base_url=client.get("base_url", "http://localhost")
        ) as http:
            return [
                await http.post(path, content=body, headers=headers)
                for path, body, headers in requests
            ]

    try:
        return asyncio.run(run())
    finally:
        door._executor.shutdown(wait=True)


def _comparable(answer: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in answer.items() if key != "delivery"}


@pytest.fixture
def twin(alice, shop, make_server):
    """A second project configured like `shop`: one is posted to through the door, the other
    through the Django view, with the same requests."""
    other = project_create(
        owner=alice, name="Shop twin", repository_url="https://git.example.com/acme/shop.git"
    )
    other.webhook_secret = shop.webhook_secret
    other.save(update_fields=["webhook_secret"])
    for project in (shop, other):
        make_server(project, "web1")
    return other


def _cases(project) -> list[tuple[str, bytes, dict[str, Any], str]]:
    secret = project.webhook_secret
    push = payloads.encode(payloads.github_push(after=payloads.fake_sha("door")))
    ping = payloads.encode(payloads.github_ping())
    return [
        ("a signed push", push, payloads.github_headers(push, secret, delivery="d-1"), ""),
        (
            "the same delivery again",
            push,
            payloads.github_headers(push, secret, delivery="d-1"),
            "",
        ),
        ("a ping", ping, payloads.github_headers(ping, secret, event="ping", delivery="d-2"), ""),
        ("a wrong signature", push, payloads.github_headers(push, "not-the-secret"), ""),
        ("a body that is not JSON", b"{oops", payloads.github_headers(b"{oops", secret), ""),
        ("an unknown token", push, payloads.github_headers(push, secret), "/hooks/no-such-token/"),
    ]


def test_the_door_answers_what_the_django_view_answers(shop, twin, client):
    through_door = _post_all(
        [
            (path or shop.webhook_path, body, _asgi_headers(headers))
            for _, body, headers, path in _cases(shop)
        ]
    )
    through_django = [
        client.post(path or twin.webhook_path, data=body, content_type="application/json", **h)
        for _, body, h, path in _cases(twin)
    ]

    for (name, *_), door, django in zip(_cases(shop), through_door, through_django, strict=True):
        assert door.status_code == django.status_code, name
        assert door.headers["content-type"] == "application/json", name
        assert door.headers["x-content-type-options"] == "nosniff", name
        assert _comparable(door.json()) == _comparable(django.json()), name
    assert [door.status_code for door in through_door] == [202, 200, 200, 401, 400, 404]
    outcomes = list(
        WebhookDelivery.objects.filter(project=shop)
        .order_by("pk")
        .values_list("outcome", flat=True)
    )
    assert outcomes == [
        WebhookOutcome.ACCEPTED,
        WebhookOutcome.DUPLICATE,
        WebhookOutcome.IGNORED,
        WebhookOutcome.REJECTED,
        WebhookOutcome.REJECTED,
    ]
    assert OutboxMessage.objects.filter(args=[shop.pk]).count() == 1


def test_a_body_over_the_limit_is_refused_413_and_recorded_with_or_without_a_length(
    shop, make_server
):
    make_server(shop, "web1")
    big = b"{" + b" " * MAX_BODY_BYTES + b"}"
    headers = _asgi_headers(payloads.github_headers(big, shop.webhook_secret))

    async def chunks():
        # No Content-Length: the body arrives in pieces and is counted as it comes.
        for start in range(0, len(big), 65536):
            yield big[start : start + 65536]

    declared, streamed = _post_all(
        [(shop.webhook_path, big, headers), (shop.webhook_path, chunks(), headers)]
    )

    assert (declared.status_code, streamed.status_code) == (413, 413)
    assert declared.json()["reason"] == f"The body is larger than {MAX_BODY_BYTES} bytes"
    assert (
        list(WebhookDelivery.objects.values_list("outcome", flat=True))
        == [WebhookOutcome.REJECTED] * 2
    )


def test_a_host_that_is_not_allowed_is_refused_before_anything_is_recorded(shop, make_server):
    make_server(shop, "web1")
    body = payloads.encode(payloads.github_push())
    headers = _asgi_headers(payloads.github_headers(body, shop.webhook_secret))

    (answer,) = _post_all([(shop.webhook_path, body, headers)], base_url="http://evil.example")

    assert answer.status_code == 400
    assert "Host" in answer.json()["detail"]
    assert not WebhookDelivery.objects.exists()


def test_other_requests_to_the_url_go_to_django(shop):
    door = WebhookDoor(get_asgi_application(), threads=1)

    async def run() -> httpx.Response:
        # httpx and Django type the ASGI callables differently.
        transport = httpx.ASGITransport(app=cast(Any, door))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            return await http.get(shop.webhook_path)

    try:
        answer = asyncio.run(run())
    finally:
        door._executor.shutdown(wait=True)

    # Django's require_POST, with its security middleware's headers.
    assert answer.status_code == 405
    assert answer.headers["allow"] == "POST"


def test_with_the_database_away_the_door_answers_503_json_with_retry_after(tmp_path):
    body = payloads.encode(payloads.github_push())
    headers = _asgi_headers(payloads.github_headers(body, "secret"))

    with database_unreachable(tmp_path):
        (answer,) = _post_all([("/hooks/some-token/", body, headers)])

    assert answer.status_code == 503
    assert int(answer.headers["retry-after"]) > 0
    assert "database is not available" in answer.json()["detail"]
    connection.close()


def _call(door: WebhookDoor, path: str, chunks: list[bytes], headers: dict[str, str]):
    """Drive the door as uvicorn does: ``chunks`` of the body, then a disconnect if the last
    one is cut short (b"" marks it). Returns the messages the door sent."""
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": chunk, "more_body": True} for chunk in chunks[:-1]]
    if chunks[-1] == b"":
        messages.append({"type": "http.disconnect"})
    else:
        messages.append({"type": "http.request", "body": chunks[-1], "more_body": False})

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: Mapping[str, Any]) -> None:
        sent.append(dict(message))

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "root_path": "",
        "server": ("127.0.0.1", 8000),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    asyncio.run(door(scope, receive, send))
    return sent


def test_a_sender_that_disconnects_before_its_body_ends_records_nothing(shop, make_server):
    make_server(shop, "web1")
    body = payloads.encode(payloads.github_push())
    headers = {
        "Host": "localhost",
        "Content-Type": "application/json",
        "Content-Length": str(len(body) + 100),
        **_asgi_headers(payloads.github_headers(body, shop.webhook_secret)),
    }
    door = WebhookDoor(get_asgi_application(), threads=1)
    try:
        sent = _call(door, shop.webhook_path, [body, b""], headers)
    finally:
        door._executor.shutdown(wait=True)

    assert sent == []
    assert not WebhookDelivery.objects.exists()


def test_an_empty_host_header_is_refused_as_django_refuses_it(shop, make_server):
    make_server(shop, "web1")
    body = payloads.encode(payloads.github_push())
    headers = {"Host": "", **_asgi_headers(payloads.github_headers(body, shop.webhook_secret))}
    door = WebhookDoor(get_asgi_application(), threads=1)
    try:
        sent = _call(door, shop.webhook_path, [body], headers)
    finally:
        door._executor.shutdown(wait=True)

    assert sent[0]["status"] == 400
    assert not WebhookDelivery.objects.exists()


def test_once_the_database_is_away_deliveries_get_503_at_once_for_a_while(
    tmp_path, shop, make_server
):
    make_server(shop, "web1")
    body = payloads.encode(payloads.github_push())
    headers = {
        "Host": "localhost",
        **_asgi_headers(payloads.github_headers(body, shop.webhook_secret)),
    }
    door = WebhookDoor(get_asgi_application(), threads=1)
    try:
        with database_unreachable(tmp_path):
            first = _call(door, shop.webhook_path, [body], headers)
        # The database is back, but within Retry-After the door does not try it again.
        meanwhile = _call(door, shop.webhook_path, [body], headers)
        door._unavailable_until = 0.0  # Retry-After has passed
        later = _call(door, shop.webhook_path, [body], headers)
    finally:
        door._executor.shutdown(wait=True)
        connection.close()

    assert [answer[0]["status"] for answer in (first, meanwhile, later)] == [503, 503, 202]
    assert (b"retry-after", b"5") in meanwhile[0]["headers"]
    assert WebhookDelivery.objects.count() == 1


def test_a_door_with_its_waiting_room_full_answers_503_at_once(shop, make_server):
    make_server(shop, "web1")
    body = payloads.encode(payloads.github_push())
    headers = {
        "Host": "localhost",
        **_asgi_headers(payloads.github_headers(body, shop.webhook_secret)),
    }
    door = WebhookDoor(get_asgi_application(), threads=2)
    door._waiting_bytes = WAITING_BYTES  # what a flood of large deliveries leaves waiting
    try:
        sent = _call(door, shop.webhook_path, [body], headers)
    finally:
        door._executor.shutdown(wait=True)

    assert sent[0]["status"] == 503
    assert not WebhookDelivery.objects.exists()
