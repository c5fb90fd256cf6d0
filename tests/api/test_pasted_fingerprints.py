"""A host key fingerprint pasted as the whole line `ssh-keygen -lf` prints is taken (the
fingerprint in it), when a server is saved and when its key is trusted; an MD5 one gets the
command that prints the SHA256 one."""

from __future__ import annotations

import subprocess

import pytest

from servers.models import Server

pytestmark = pytest.mark.django_db


def keygen_line(target, *extra: str) -> str:
    """What `ssh-keygen -lf` prints for the target's host key, e.g.
    ``256 SHA256:... host (ED25519)``."""
    return subprocess.run(
        ["ssh-keygen", *extra, "-lf", str(target.host_public_key_path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def test_it_trusts_a_key_from_the_whole_ssh_keygen_line(
    alice_api, project, sshd_target, server_factory
):
    server = server_factory(project, sshd_target, trust=False)
    line = keygen_line(sshd_target)
    assert line.split()[1] == sshd_target.host_key_fingerprint and line.rstrip().endswith(")")
    url = f"/api/v1/projects/{project.slug}/servers/{server.pk}/"

    trusted = alice_api.post(url + "trust/", {"fingerprint": line}, format="json")

    assert trusted.status_code == 200, trusted.content
    assert trusted.json()["host_key_fingerprint"] == sshd_target.host_key_fingerprint
    assert alice_api.post(url + "check/").json()["ok"] is True


def test_it_saves_a_server_with_the_whole_ssh_keygen_line(alice_api, project, sshd_target):
    created = alice_api.post(
        f"/api/v1/projects/{project.slug}/servers/",
        {
            "name": "web1",
            "hostname": sshd_target.hostname,
            "port": sshd_target.port,
            "username": sshd_target.username,
            "deploy_path": str(sshd_target.deploy_path),
            "host_key_fingerprint": f"  {keygen_line(sshd_target)}  ",
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    server = Server.objects.get()
    assert server.host_key_fingerprint == sshd_target.host_key_fingerprint


def test_it_says_how_to_get_the_sha256_fingerprint_for_an_md5_one(
    alice_api, project, sshd_target, server_factory
):
    server = server_factory(project, sshd_target, trust=False)
    md5 = keygen_line(sshd_target, "-E", "md5")
    assert "MD5:" in md5
    refused = alice_api.post(
        f"/api/v1/projects/{project.slug}/servers/{server.pk}/trust/",
        {"fingerprint": md5},
        format="json",
    )
    assert refused.status_code == 400
    (message,) = refused.json()["fingerprint"]
    assert "MD5" in message and "ssh-keygen -E sha256 -lf" in message
