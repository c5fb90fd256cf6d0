"""FTP and FTPS servers through the API: what may be set, write-only passwords, and
"Test connection" then "Trust" for an FTPS certificate against pyftpdlib on loopback."""

from __future__ import annotations

import time

import pytest

from builds.engine import ftp
from builds.models import Deployment, Status
from projects.models import AuditEvent
from servers.models import Protocol, Server
from tests.support.ftpd import PASSWORD, USER

pytestmark = pytest.mark.django_db


def servers_url(project) -> str:
    return f"/api/v1/projects/{project.slug}/servers/"


def url(server: Server, action: str) -> str:
    return f"{servers_url(server.project)}{server.pk}/{action}/"


def ftp_data(**fields):
    return {
        "name": "shared-host",
        "protocol": "ftps",
        "hostname": "ftp.example.com",
        "username": "deploy",
        "password": PASSWORD,
        "deploy_path": "/public_html",
        **fields,
    }


def test_it_adds_an_ftps_server_with_a_write_only_password(alice_api, project):
    response = alice_api.post(
        servers_url(project),
        ftp_data(certificate_fingerprint="ab" * 32, ftp_connections=2),
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["protocol"] == "ftps" and body["port"] == 21 and body["atomic"] is False
    assert body["certificate_fingerprint"] == "SHA256:" + ":".join(["AB"] * 32)
    assert body["ftp_connections"] == 2 and body["trusted"] is True
    assert PASSWORD not in response.content.decode()
    server = Server.objects.get()
    assert server.password == PASSWORD and server.auth_method == "password"


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"atomic": True}, "atomic"),
        ({"password": ""}, "password"),
        ({"certificate_fingerprint": "SHA256:nope"}, "certificate_fingerprint"),
        ({"ftp_connections": 0}, "ftp_connections"),
        ({"ftp_connections": 17}, "ftp_connections"),
    ],
)
def test_it_refuses_what_an_ftp_server_cannot_be_naming_the_setting(
    alice_api, project, fields, named
):
    response = alice_api.post(servers_url(project), ftp_data(**fields), format="json")
    assert response.status_code == 400, response.content
    assert list(response.json()) == [named]
    if named == "atomic":
        assert "FTP cannot make the symlink" in response.json()["atomic"][0]
    assert not Server.objects.exists()


def test_plain_ftp_is_allowed_and_the_schema_warns_of_clear_text(alice_api, project):
    response = alice_api.post(servers_url(project), ftp_data(protocol="ftp"), format="json")
    assert response.status_code == 201, response.content
    schema = alice_api.get("/api/schema/").content.decode()
    assert "certificate_fingerprint" in schema and "ftp_connections" in schema
    assert "ftp sends the password and the files in clear text" in schema


def _ftps_server(project, target, **fields) -> Server:
    return Server.objects.create(
        project=project,
        name="shared-host",
        protocol=Protocol.FTPS,
        hostname="127.0.0.1",
        port=target.port,
        username=USER,
        auth_method="password",
        password=PASSWORD,
        deploy_path="/site/www",
        atomic=False,
        **fields,
    )


def test_test_connection_shows_the_certificate_then_trust_pins_it(
    alice_api, alice, project, ftps_target
):
    server = _ftps_server(project, ftps_target)
    check = alice_api.post(url(server, "check")).json()
    assert check["ok"] is False and check["trusted"] is False
    assert check["certificate_fingerprint"] == ftps_target.fingerprint
    assert check["certificate_verified"] is False
    assert "do not vouch for" in check["error"]
    assert "PASS" not in ftps_target.commands  # no password for an untrusted server

    wrong = alice_api.post(url(server, "trust"), {"fingerprint": "cd" * 32}, format="json")
    assert wrong.status_code == 400
    assert ftps_target.fingerprint in wrong.json()["fingerprint"][0]
    trusted = alice_api.post(
        url(server, "trust"), {"fingerprint": ftps_target.fingerprint}, format="json"
    )
    assert trusted.status_code == 200, trusted.content
    server.refresh_from_db()
    assert server.certificate_fingerprint == ftps_target.fingerprint
    assert AuditEvent.objects.filter(action="certificate.trusted").exists()

    check = alice_api.post(url(server, "check")).json()
    assert check["ok"] is True, check
    assert check["trusted"] is True and check["error"] == ""
    assert (ftps_target.deploy_path / "www").is_dir()
    assert list((ftps_target.deploy_path / "www").iterdir()) == []


def test_test_connection_names_a_wrong_password_and_a_changed_certificate(
    alice_api, project, ftps_target, ftpd_factory
):
    server = _ftps_server(project, ftps_target, certificate_fingerprint=ftps_target.fingerprint)
    server.password = "wrong"
    server.save()
    check = alice_api.post(url(server, "check")).json()
    assert check["ok"] is False
    assert f"refused the login of '{USER}': wrong user name or password" in check["error"]

    other = ftpd_factory(tls=True)
    server.port = other.port
    server.save()
    check = alice_api.post(url(server, "check")).json()
    assert check["ok"] is False and check["trusted"] is False
    assert "has changed" in check["error"] and other.fingerprint in check["error"]


def test_test_connection_works_for_plain_ftp(alice_api, project, ftp_target):
    server = _ftps_server(project, ftp_target)
    server.protocol = Protocol.FTP
    server.save()
    check = alice_api.post(url(server, "check")).json()
    assert check == {
        "ok": True,
        "address": f"127.0.0.1:{ftp_target.port}",
        "host_key_fingerprint": None,
        "host_key_type": None,
        "trusted": True,
        "error": "",
        "certificate_fingerprint": None,
        "certificate_verified": False,
        "jump_address": "",
        "jump_host_key_fingerprint": None,
        "jump_host_key_type": None,
        "jump_trusted": False,
    }
    trust = alice_api.post(url(server, "trust"), {"fingerprint": "ab" * 32}, format="json")
    assert trust.status_code == 400
    assert "plain FTP has no certificate" in trust.json()["fingerprint"][0]


def test_bob_a_viewer_cannot_test_an_ftp_server(bob_api, project, ftp_target):
    server = _ftps_server(project, ftp_target)
    assert bob_api.post(url(server, "check")).status_code == 403


def test_an_admin_breaks_an_ftp_servers_lock_unless_its_deployment_still_runs(
    alice_api, project, ftp_target
):
    server = _ftps_server(project, ftp_target)
    server.protocol = Protocol.FTP
    server.deploy_path = "/site"
    server.save()
    running = Deployment.objects.create(project=project, status=Status.RUNNING)
    lock = ftp_target.deploy_path / ftp.LOCK_DIR
    lock.mkdir()
    (lock / "info").write_text(
        f"owner=deployment-{running.pk}\nholder=Slipway deployment #{running.pk} by alice\n"
        f"since=2026-12-01T07:00:00Z\nat={int(time.time())}\n"
    )
    break_url = f"{servers_url(project)}{server.pk}/lock/break/"
    refused = alice_api.post(break_url, {}, format="json")
    assert refused.status_code == 409
    assert f"deployment #{running.pk} is still running" in refused.json()["detail"]
    assert lock.exists()

    forced = alice_api.post(break_url, {"force": True}, format="json")
    assert forced.status_code == 200, forced.content
    assert forced.json()["broken"] is True and forced.json()["deployment_id"] == running.pk
    assert not lock.exists()
    event = AuditEvent.objects.get(action="server.lock_broken")
    assert event.detail["path"] == f"/site/{ftp.LOCK_DIR}" and event.detail["forced"] is True
    again = alice_api.post(break_url, {}, format="json")
    assert again.json()["broken"] is False
