"""Fixtures for webhook tests: a project, servers that are never connected to, a poster."""

from __future__ import annotations

import pytest

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


@pytest.fixture
def post(client):
    """POST raw bytes to a project's webhook URL, as the providers do."""

    def send(project, body: bytes, *, content_type="application/json", **headers):
        return client.post(project.webhook_path, data=body, content_type=content_type, **headers)

    return send


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    # Personas get real passwords; these tests never log in, so hashing them slowly buys nothing.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
