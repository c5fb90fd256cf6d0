"""Fixtures for webhook tests: a project, servers that are never connected to, a poster."""

from __future__ import annotations

from typing import Any

import pytest

from builds.models import WebhookDelivery, WebhookOutcome
from builds.tasks import process_webhook_delivery
from projects.services import project_create
from servers.models import GroupMember, Server, ServerGroup

TRUSTED = "SHA256:" + "k" * 43


@pytest.fixture
def shop(alice):
    """A project whose deployments are only queued here, never run."""
    return project_create(
        owner=alice, name="Shop", repository_url="https://git.example.com/acme/shop.git"
    )


@pytest.fixture
def make_server():
    def make(project, name, **fields):
        fields.setdefault("host_key_fingerprint", TRUSTED)
        return Server.objects.create(
            project=project,
            name=name,
            hostname=f"{name}.example.com",
            username="deploy",
            deploy_path=f"/srv/{name}",
            **fields,
        )

    return make


@pytest.fixture
def make_group():
    def make(project, name, servers, **fields):
        group = ServerGroup.objects.create(project=project, name=name, **fields)
        for position, server in enumerate(servers):
            GroupMember.objects.create(group=group, server=server, position=position)
        return group

    return make


class Delivered:
    """The answer to one POST, and what became of the delivery once a worker processed it.

    ``status_code`` and ``answer`` are the HTTP answer (202 "accepted" for a delivery to
    process). ``json()`` is the delivery as processed: the answer's fields with "status" the
    delivery's outcome and "deployments" the ones it created, as the synchronous endpoint
    used to answer.
    """

    def __init__(self, response: Any) -> None:
        self.response = response
        self.status_code = response.status_code
        self.content = response.content
        self.answer: dict[str, Any] = response.json()
        self._processed = dict(self.answer)
        if self.status_code == 202:
            process_webhook_delivery(self.answer["delivery"])
            delivery = WebhookDelivery.objects.get(pk=self.answer["delivery"])
            assert delivery.outcome != WebhookOutcome.ACCEPTED
            self._processed.update(
                status=delivery.outcome,
                deployments=sorted(delivery.deployments.values_list("pk", flat=True)),
                reason=delivery.reason,
            )

    def json(self) -> dict[str, Any]:
        return self._processed


@pytest.fixture
def post(client):
    """POST raw bytes to a project's webhook URL, as the providers do, then run the worker's
    processing of an accepted delivery (the task function, in this process): a Delivered."""

    def send(project, body: bytes, *, content_type="application/json", **headers):
        response = client.post(
            project.webhook_path, data=body, content_type=content_type, **headers
        )
        return Delivered(response)

    return send


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    # Personas get real passwords; these tests never log in, so hashing them slowly buys nothing.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
