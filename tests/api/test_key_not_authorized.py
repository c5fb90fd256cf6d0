"""A server that does not have the project's key in authorized_keys: the connection test says
which line to add, to which user's file, and adding it is what lets Slipway in."""

from __future__ import annotations

import pytest

from servers.models import Server

pytestmark = pytest.mark.django_db


def test_it_shows_the_line_to_add_to_authorized_keys(alice_api, project, sshd_target):
    server = Server.objects.create(
        project=project,
        name="web1",
        hostname=sshd_target.hostname,
        port=sshd_target.port,
        username=sshd_target.username,
        deploy_path=str(sshd_target.deploy_path),
        host_key_fingerprint=sshd_target.host_key_fingerprint,
    )
    url = f"/api/v1/projects/{project.slug}/servers/{server.pk}/check/"

    check = alice_api.post(url).json()

    assert check["ok"] is False
    assert f"Add this line to ~/.ssh/authorized_keys of {sshd_target.username}" in check["error"]
    key_type, key_data = project.public_key.split()[:2]
    line = next(text for text in check["error"].splitlines() if text.startswith(key_type))
    assert line.split()[:2] == [key_type, key_data]

    sshd_target.authorize(line)
    assert alice_api.post(url).json()["ok"] is True
