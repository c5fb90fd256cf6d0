"""The server page of a server behind a bastion: "Test connection" shows the jump host's key
first, then, once that is trusted, the server's key read through it."""

from __future__ import annotations

import pytest

from projects.models import AuditEvent
from servers.models import Server

pytestmark = pytest.mark.django_db


def test_test_connection_shows_both_hops_keys_and_trusts_them_one_after_the_other(
    alice_client, project, bastion
):
    target = bastion.target()
    target.authorize(project.public_key)
    bastion.jump.authorize(project.public_key)
    server = Server.objects.create(
        project=project,
        name="app1",
        hostname=target.hostname,
        port=target.port,
        username=target.username,
        deploy_path=str(target.deploy_path),
        jump_hostname=bastion.jump.hostname,
        jump_username=bastion.jump.username,
    )
    base = f"/projects/{project.slug}/servers/{server.pk}/"

    first = alice_client.post(base + "test/").content.decode()
    assert f"The jump host {bastion.jump.hostname}:22 offers" in first
    assert bastion.jump.host_key_fingerprint in first
    assert "Trust the jump host's key" in first
    assert target.host_key_fingerprint not in first

    second = alice_client.post(
        base + "jump-host/trust/", {"fingerprint": bastion.jump.host_key_fingerprint}
    ).content.decode()
    assert target.host_key_fingerprint in second  # read through the jump host now
    assert "Trust this key" in second
    assert AuditEvent.objects.filter(
        action="host_key.trusted", target__startswith="jump host"
    ).exists()

    third = alice_client.post(
        base + "trust/", {"fingerprint": target.host_key_fingerprint}
    ).content.decode()
    assert "<strong>Connected.</strong>" in third
