"""A server's jump host through the API: saved, checked, its key write-only and encrypted,
its host key trusted through check/ and jump-host/trust/ against a real bastion."""

from __future__ import annotations

import pytest
from django.db import connection

from projects.models import AuditEvent
from servers.models import JumpAuthMethod, Server

pytestmark = pytest.mark.django_db

FINGERPRINT = "SHA256:" + "a" * 43


def servers_url(project) -> str:
    return f"/api/v1/projects/{project.slug}/servers/"


def behind_a_jump_host(**fields):
    return {
        "name": "app1",
        "hostname": "10.0.0.5",
        "username": "deploy",
        "deploy_path": "/srv/shop",
        "jump_hostname": "bastion.example.com",
        "jump_username": "jump",
        **fields,
    }


def _raw_servers() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM servers_server")
        return repr(cursor.fetchall())


def test_it_saves_a_jump_host_and_never_answers_its_key(
    alice_api, alice, project, ssh_client_key_pair
):
    key = ssh_client_key_pair.private_key
    response = alice_api.post(
        servers_url(project),
        behind_a_jump_host(
            jump_port=2222, jump_private_key=key, jump_host_key_fingerprint=FINGERPRINT
        ),
        format="json",
    )

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["jump_hostname"] == "bastion.example.com" and body["jump_port"] == 2222
    assert body["jump_username"] == "jump"
    assert body["jump_auth_method"] == JumpAuthMethod.PRIVATE_KEY
    assert body["jump_host_key_fingerprint"] == FINGERPRINT and body["jump_trusted"] is True
    assert body["trusted"] is False  # the server's own key is not pinned yet
    assert "jump_private_key" not in body and "PRIVATE KEY" not in response.content.decode()
    server = Server.objects.get()
    assert server.jump_private_key == key
    assert "PRIVATE KEY" not in _raw_servers()
    read = alice_api.get(f"{servers_url(project)}{server.pk}/")
    assert "jump_private_key" not in read.json() and "PRIVATE KEY" not in read.content.decode()
    created = AuditEvent.objects.get(action="server.created")
    assert "jump_private_key" not in str(created.detail)
    assert AuditEvent.objects.filter(
        action="host_key.trusted", target="jump host bastion.example.com:2222 of server app1"
    ).exists()


def test_a_private_address_behind_a_jump_host_is_allowed_while_the_jump_host_is_checked(
    alice_api, project, settings
):
    settings.ALLOW_PRIVATE_SERVERS = False
    refused = alice_api.post(
        servers_url(project), behind_a_jump_host(jump_hostname="10.1.2.3"), format="json"
    )
    assert refused.status_code == 400, refused.content
    assert "jump_hostname" in refused.content.decode()

    accepted = alice_api.post(servers_url(project), behind_a_jump_host(), format="json")
    assert accepted.status_code == 201, accepted.content


def test_it_keeps_the_jump_key_unless_replaced_and_forgets_the_pin_when_the_jump_host_moves(
    alice_api, project, ssh_client_key_pair
):
    key = ssh_client_key_pair.private_key
    created = alice_api.post(
        servers_url(project),
        behind_a_jump_host(jump_private_key=key, jump_host_key_fingerprint=FINGERPRINT),
        format="json",
    ).json()
    url = f"{servers_url(project)}{created['id']}/"

    renamed = alice_api.patch(url, {"jump_username": "ops"}, format="json")
    assert renamed.status_code == 200, renamed.content
    server = Server.objects.get()
    assert server.jump_private_key == key and server.jump_host_key_fingerprint == FINGERPRINT

    moved = alice_api.patch(url, {"jump_hostname": "bastion2.example.com"}, format="json")
    assert moved.json()["jump_host_key_fingerprint"] == "" and not moved.json()["jump_trusted"]

    back = alice_api.patch(url, {"jump_auth_method": "project_key"}, format="json")
    assert back.json()["jump_auth_method"] == "project_key"
    assert Server.objects.get().jump_private_key == ""

    direct = alice_api.patch(url, {"jump_hostname": ""}, format="json")
    assert direct.json()["jump_hostname"] == "" and direct.json()["jump_username"] == ""


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"jump_username": ""}, "jump_username"),
        ({"jump_private_key": "not a key"}, "jump_private_key"),
        ({"jump_auth_method": "private_key"}, "jump_private_key"),
        ({"jump_host_key_fingerprint": "MD5:00"}, "jump_host_key_fingerprint"),
        ({"jump_hostname": "-oProxyCommand=x"}, "jump_hostname"),
    ],
)
def test_it_refuses_a_bad_jump_host_naming_the_field(alice_api, project, fields, field):
    response = alice_api.post(servers_url(project), behind_a_jump_host(**fields), format="json")
    assert response.status_code == 400, response.content
    assert field in response.json(), response.json()


def test_the_schema_covers_the_jump_host_with_its_key_write_only(alice_api):
    schema = alice_api.get("/api/schema/?format=json").json()
    components = schema["components"]["schemas"]
    answered = components["Server"]["properties"]
    sent = components["ServerInputRequest"]["properties"]
    for name in ("jump_hostname", "jump_port", "jump_username", "jump_auth_method"):
        assert name in answered and name in sent
    assert "jump_host_key_fingerprint" in answered and "jump_trusted" in answered
    assert "jump_private_key" in sent and "jump_private_key" not in answered
    assert "jump_host_key_fingerprint" in components["ServerCheck"]["properties"]
    assert "/api/v1/projects/{slug}/servers/{server_id}/jump-host/trust/" in schema["paths"]


def test_check_and_trust_go_through_the_jump_host(alice_api, project, bastion):
    target = bastion.target()
    target.authorize(project.public_key)
    bastion.jump.authorize(project.public_key)
    created = alice_api.post(
        servers_url(project),
        behind_a_jump_host(
            hostname=target.hostname,
            port=target.port,
            username=target.username,
            deploy_path=str(target.deploy_path),
            jump_hostname=bastion.jump.hostname,
            jump_username=bastion.jump.username,
        ),
        format="json",
    ).json()
    url = f"{servers_url(project)}{created['id']}/"

    first = alice_api.post(url + "check/").json()
    assert first["jump_host_key_fingerprint"] == bastion.jump.host_key_fingerprint
    assert first["host_key_fingerprint"] is None and not first["ok"]
    trusted = alice_api.post(
        url + "jump-host/trust/", {"fingerprint": first["jump_host_key_fingerprint"]}
    )
    assert trusted.status_code == 200, trusted.content
    assert trusted.json()["jump_trusted"] is True and trusted.json()["trusted"] is False

    second = alice_api.post(url + "check/").json()
    assert second["host_key_fingerprint"] == target.host_key_fingerprint
    alice_api.post(url + "trust/", {"fingerprint": second["host_key_fingerprint"]})
    third = alice_api.post(url + "check/").json()
    assert third["ok"] is True, third
    assert (third["jump_trusted"], third["trusted"]) == (True, True)


def test_removing_the_jump_host_checks_the_servers_own_address_again(alice_api, project, settings):
    settings.ALLOW_PRIVATE_SERVERS = False
    created = alice_api.post(servers_url(project), behind_a_jump_host(), format="json").json()

    direct = alice_api.patch(
        f"{servers_url(project)}{created['id']}/", {"jump_hostname": ""}, format="json"
    )

    assert direct.status_code == 400, direct.content
    assert "10.0.0.5" in direct.json()["hostname"][0]
    assert Server.objects.get().jump_hostname == "bastion.example.com"


@pytest.mark.parametrize(
    ("field", "hostname"),
    [
        ("hostname", "a" * 64 + ".example.com"),
        ("hostname", "app..example.com"),
        ("jump_hostname", "bastion..example.com"),
        ("jump_hostname", "b" * 64),
        ("hostname", "[::1]"),
        ("hostname", "::1%a..b"),
        ("hostname", "fe80::1%eth0"),
        ("hostname", "a/b"),
        ("hostname", "http://evil"),
        ("hostname", "$(id)"),
        ("hostname", "xn--"),
        ("hostname", "xn--zz"),
        ("hostname", "a:22"),
        ("hostname", ".".join(["a" * 50] * 5)),  # 254 characters
        ("jump_hostname", "[10.0.0.1]"),
    ],
)
def test_a_host_name_that_cannot_be_looked_up_is_a_400_naming_its_field(
    alice_api, project, field, hostname
):
    response = alice_api.post(
        servers_url(project), behind_a_jump_host(**{field: hostname}), format="json"
    )
    assert response.status_code == 400, response.content
    assert field in response.content.decode()
    assert "not a valid host name" in response.content.decode()
    assert not Server.objects.exists()


def test_addresses_and_international_names_are_accepted(alice_api, project):
    accepted = [
        "::1",
        "10.0.0.7",
        "bücher.example",
        "app.example.",
        "xn--bcher-kva.example",
        "a_b.internal",
    ]
    for number, hostname in enumerate(accepted):
        response = alice_api.post(
            servers_url(project),
            behind_a_jump_host(name=f"app{number}", hostname=hostname),
            format="json",
        )
        assert response.status_code == 201, response.content
