"""FTP and FTPS servers in the dashboard: the form warns of clear text and sets what FTP
cannot do; "Test connection" shows the certificate and "Trust this certificate" pins it
(pyftpdlib on loopback)."""

from __future__ import annotations

import pytest

from servers.models import AuthMethod, Protocol, Server
from tests.dashboard.test_forms import SERVER
from tests.support.ftpd import PASSWORD, USER

pytestmark = pytest.mark.django_db


def test_the_form_warns_of_clear_text_and_adds_an_ftps_server_in_place(alice_client, project):
    new = f"/projects/{project.slug}/servers/new/"
    page = alice_client.get(new).content.decode()
    assert "Plain FTP sends it, and every file, in clear text" in page
    assert 'name="certificate_fingerprint"' in page and 'name="ftp_connections"' in page
    form = {
        **SERVER,
        "protocol": Protocol.FTPS,
        "port": "21",
        "auth_method": AuthMethod.PASSWORD,
        "password": PASSWORD,
        "ftp_connections": "3",
    }
    response = alice_client.post(new, form)  # "atomic" is still ticked from the SSH default
    assert response.status_code == 302, response.content.decode()[:2000]
    server = Server.objects.get(name="web2")
    assert (server.protocol, server.atomic, server.ftp_connections) == ("ftps", False, 3)
    assert server.password == PASSWORD


def test_test_connection_then_trust_this_certificate(alice_client, project, ftps_target):
    server = Server.objects.create(
        project=project,
        name="shared-host",
        protocol=Protocol.FTPS,
        hostname="127.0.0.1",
        port=ftps_target.port,
        username=USER,
        auth_method=AuthMethod.PASSWORD,
        password=PASSWORD,
        deploy_path="/site",
        atomic=False,
    )
    base = f"/projects/{project.slug}/servers/{server.pk}/"
    tested = alice_client.post(base + "test/").content.decode()
    assert "Check the certificate" in tested
    assert ftps_target.fingerprint in tested and "Trust this certificate" in tested
    trusted = alice_client.post(
        base + "trust/", {"fingerprint": ftps_target.fingerprint}
    ).content.decode()
    assert "Connected." in trusted and "the pinned one" in trusted
    server.refresh_from_db()
    assert server.certificate_fingerprint == ftps_target.fingerprint
    assert PASSWORD not in trusted
