"""The live log's WebSocket, through the whole ASGI stack (origin check, session, consumer):
members get the stored lines after the seq they ask from, then live lines; anyone else is
refused."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

from builds.logs import LOG_PAGE_CHARS, group_name
from builds.models import Deployment, LogLine, Status
from deployer.asgi import application
from tests.dashboard.support import websocket_communicator

pytestmark = pytest.mark.django_db(transaction=True)

ORIGIN = b"http://127.0.0.1:8000"


def _headers(client, origin: bytes = ORIGIN) -> list[tuple[bytes, bytes]]:
    headers = [(b"origin", origin), (b"host", b"127.0.0.1:8000")]
    if settings.SESSION_COOKIE_NAME in client.cookies:
        cookie = (
            f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
        )
        headers.append((b"cookie", cookie.encode()))
    return headers


@pytest.fixture
def deployment(project):
    deployment = Deployment.objects.create(project=project, status=Status.RUNNING, log_seq=5)
    LogLine.objects.bulk_create(
        LogLine(deployment=deployment, seq=seq, text=f"line {seq}") for seq in range(1, 6)
    )
    return deployment


def _connect(deployment, headers):
    communicator_class = websocket_communicator()
    return communicator_class(application, f"/ws/deployments/{deployment.pk}/", headers=headers)


def test_it_replays_the_lines_after_the_given_seq_then_streams(alice_client, deployment):
    async def follow():
        communicator = _connect(deployment, _headers(alice_client))
        connected, _ = await communicator.connect()
        assert connected
        await communicator.send_json_to({"after": 3})
        replay = await communicator.receive_json_from(timeout=5)
        status = await communicator.receive_json_from(timeout=5)
        await get_channel_layer().group_send(
            group_name(deployment.pk),
            {
                "type": "log.lines",
                "lines": [
                    {"seq": 6, "stream": "stdout", "text": "line 6", "time": "", "server": None}
                ],
            },
        )
        live = await communicator.receive_json_from(timeout=5)
        await communicator.disconnect()
        return replay, status, live

    replay, status, live = async_to_sync(follow)()
    assert replay["type"] == "lines"
    assert [(line["seq"], line["text"]) for line in replay["lines"]] == [
        (4, "line 4"),
        (5, "line 5"),
    ]
    assert (
        status["type"] == "status" and status["status"] == "running" and status["complete"] is False
    )
    assert live["type"] == "lines" and live["lines"][0]["seq"] == 6


def test_it_replays_everything_to_a_page_that_has_nothing(bob_client, deployment):
    async def follow():
        communicator = _connect(deployment, _headers(bob_client))
        connected, _ = await communicator.connect()
        await communicator.send_json_to({"after": 0})
        replay = await communicator.receive_json_from(timeout=5)
        await communicator.disconnect()
        return connected, replay

    connected, replay = async_to_sync(follow)()
    assert connected, "a viewer follows the log too"
    assert [line["seq"] for line in replay["lines"]] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("who", ["charlie", "nobody", "another site"])
def test_it_refuses_anyone_but_the_projects_members(who, charlie_client, alice_client, deployment):
    headers = {
        "charlie": _headers(charlie_client),
        "nobody": [(b"origin", ORIGIN), (b"host", b"127.0.0.1:8000")],
        "another site": _headers(alice_client, origin=b"https://evil.example.com"),
    }[who]

    async def knock():
        communicator = _connect(deployment, headers)
        connected, _ = await communicator.connect()
        await communicator.disconnect()
        return connected

    assert async_to_sync(knock)() is False


def test_it_replays_a_log_of_long_lines_in_messages_of_at_most_a_megabyte(alice_client, deployment):
    LogLine.objects.bulk_create(
        LogLine(deployment=deployment, seq=seq, text=f"{seq:02d}" + "y" * 65534)
        for seq in range(6, 41)
    )

    async def follow():
        communicator = _connect(deployment, _headers(alice_client))
        await communicator.connect()
        await communicator.send_json_to({"after": 0})
        messages: list[dict[str, Any]] = []
        while not messages or messages[-1]["type"] != "status":
            messages.append(await communicator.receive_json_from(timeout=10))
        await communicator.disconnect()
        return messages

    messages = async_to_sync(follow)()
    batches = [m["lines"] for m in messages if m["type"] == "lines"]
    assert [line["seq"] for batch in batches for line in batch] == list(range(1, 41))
    assert len(batches) == 3
    assert all(sum(len(line["text"]) for line in batch) <= LOG_PAGE_CHARS for batch in batches)
