"""check/ and trust/ against real sshd targets: what a person sees before trusting a server."""

from __future__ import annotations

import pytest

from projects.models import AuditEvent, Membership, Role
from servers.models import Protocol, Server
from tests.support.sshd import generate_key_pair

pytestmark = pytest.mark.django_db

WRONG = "SHA256:" + "A" * 43


def url(server: Server, action: str) -> str:
    return f"/api/v1/projects/{server.project.slug}/servers/{server.pk}/{action}/"


def test_it_checks_a_trusted_server_and_makes_its_deploy_path(
    alice_api, project, sshd_target, server_factory
):
    server = server_factory(project, sshd_target)
    server.deploy_path = str(sshd_target.deploy_path / "shop" / "live")
    server.save()
    response = alice_api.post(url(server, "check"))
    assert response.status_code == 200
    assert response.json() == {
        "ok": True,
        "address": f"127.0.0.1:{sshd_target.port}",
        "host_key_fingerprint": sshd_target.host_key_fingerprint,
        "host_key_type": "ssh-ed25519",
        "trusted": True,
        "error": "",
        "jump_address": "",
        "jump_host_key_fingerprint": None,
        "jump_host_key_type": None,
        "jump_trusted": False,
        "certificate_fingerprint": None,
        "certificate_verified": False,
    }
    assert (sshd_target.deploy_path / "shop" / "live").is_dir()


def test_it_checks_an_sftp_only_server_without_running_commands(
    alice_api, project, sshd_target, server_factory
):
    server = server_factory(project, sshd_target, protocol=Protocol.SFTP)
    server.deploy_path = str(sshd_target.deploy_path / "sftp-site")
    server.save()
    response = alice_api.post(url(server, "check"))
    assert response.json()["ok"] is True, response.json()
    assert (sshd_target.deploy_path / "sftp-site").is_dir()
    assert list((sshd_target.deploy_path / "sftp-site").iterdir()) == []


def test_it_shows_an_untrusted_key_then_trusts_only_the_offered_one(
    alice_api, alice, project, sshd_target, server_factory
):
    server = server_factory(project, sshd_target, trust=False)
    check = alice_api.post(url(server, "check")).json()
    assert check["ok"] is False and check["trusted"] is False
    assert check["host_key_fingerprint"] == sshd_target.host_key_fingerprint
    assert "not trusted yet" in check["error"]

    wrong = alice_api.post(url(server, "trust"), {"fingerprint": WRONG}, format="json")
    assert wrong.status_code == 400
    (message,) = wrong.json()["fingerprint"]
    assert WRONG in message and sshd_target.host_key_fingerprint in message
    server.refresh_from_db()
    assert server.host_key_fingerprint == ""

    malformed = alice_api.post(url(server, "trust"), {"fingerprint": "abc"}, format="json")
    assert malformed.status_code == 400 and "fingerprint" in malformed.json()

    trusted = alice_api.post(
        url(server, "trust"), {"fingerprint": sshd_target.host_key_fingerprint}, format="json"
    )
    assert trusted.status_code == 200, trusted.content
    assert trusted.json()["trusted"] is True
    assert trusted.json()["host_key_fingerprint"] == sshd_target.host_key_fingerprint
    event = AuditEvent.objects.get(action="host_key.trusted")
    assert event.actor == alice
    assert event.detail["fingerprint"] == sshd_target.host_key_fingerprint
    assert alice_api.post(url(server, "check")).json()["ok"] is True


def test_it_reports_a_host_key_that_changed(alice_api, project, sshd_target, server_factory):
    server = server_factory(project, sshd_target)
    Server.objects.filter(pk=server.pk).update(host_key_fingerprint=WRONG)
    check = alice_api.post(url(server, "check")).json()
    assert check["ok"] is False and check["trusted"] is False
    assert WRONG in check["error"] and sshd_target.host_key_fingerprint in check["error"]


def test_it_reports_a_stopped_server_without_failing(
    alice_api, project, sshd_target, server_factory
):
    server = server_factory(project, sshd_target)
    sshd_target.stop()
    response = alice_api.post(url(server, "check"))
    assert response.status_code == 200
    check = response.json()
    assert check["ok"] is False and check["host_key_fingerprint"] is None
    assert f"127.0.0.1:{sshd_target.port}" in check["error"]
    trust = alice_api.post(
        url(server, "trust"), {"fingerprint": sshd_target.host_key_fingerprint}, format="json"
    )
    assert trust.status_code == 400
    assert f"127.0.0.1:{sshd_target.port}" in trust.json()["fingerprint"][0]


def test_it_reports_a_refused_login(alice_api, project, sshd_target, server_factory, tmp_path):
    server = server_factory(project, sshd_target)
    stranger = generate_key_pair(tmp_path, "stranger")
    changed = alice_api.patch(
        f"/api/v1/projects/{project.slug}/servers/{server.pk}/",
        {"private_key": stranger.private_key},
        format="json",
    )
    assert changed.status_code == 200, changed.content
    check = alice_api.post(url(server, "check")).json()
    assert check["ok"] is False and check["trusted"] is True
    assert "refused" in check["error"] and stranger.fingerprint in check["error"]


def test_it_reports_a_deploy_path_it_cannot_write(alice_api, project, sshd_target, server_factory):
    blocker = sshd_target.deploy_path / "a-file"
    blocker.write_text("not a directory\n")
    server = server_factory(project, sshd_target)
    server.deploy_path = str(blocker / "site")
    server.save()
    check = alice_api.post(url(server, "check")).json()
    assert check["ok"] is False and check["trusted"] is True
    assert str(blocker / "site") in check["error"]
    assert "Not a directory" in check["error"]


def test_a_viewer_cannot_check_but_a_deployer_can(
    bob_api, bob, project, sshd_target, server_factory
):
    server = server_factory(project, sshd_target)
    assert bob_api.post(url(server, "check")).status_code == 403
    Membership.objects.filter(user=bob).update(role=Role.DEPLOYER)
    assert bob_api.post(url(server, "check")).json()["ok"] is True
    # Trusting a key is configuration: admins only.
    trust = bob_api.post(
        url(server, "trust"), {"fingerprint": sshd_target.host_key_fingerprint}, format="json"
    )
    assert trust.status_code == 403


def test_it_reports_an_unsafe_deploy_path_and_the_command_that_fixes_it(
    alice_api, project, sshd_target, server_factory
):
    server = server_factory(project, sshd_target)
    sshd_target.deploy_path.chmod(0o777)
    check = alice_api.post(url(server, "check")).json()
    assert check["ok"] is False and check["trusted"] is True
    assert (
        f"The deploy path {sshd_target.deploy_path} on 127.0.0.1:{sshd_target.port}"
        in (check["error"])
    )
    assert f"`chmod go-w {sshd_target.deploy_path}`" in check["error"]
