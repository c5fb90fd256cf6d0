"""/api/v1/projects/<slug>/servers/: add, read, change, delete; secrets stay write-only."""

from __future__ import annotations

import pytest
from django.conf import settings

from projects.models import AuditEvent, Membership, Role
from servers.models import AuthMethod, Server

pytestmark = pytest.mark.django_db

FINGERPRINT = "SHA256:" + "a" * 43
PASSWORD = "pa55-w0rd-very-secret"


def servers_url(project) -> str:
    return f"/api/v1/projects/{project.slug}/servers/"


def server_data(**fields):
    return {
        "name": "web1",
        "hostname": "web1.example.com",
        "username": "deploy",
        "deploy_path": "/srv/shop",
        **fields,
    }


def test_it_adds_a_server_that_logs_in_with_the_project_key(alice_api, alice, project):
    response = alice_api.post(servers_url(project), server_data(), format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    server = Server.objects.get()
    assert body["id"] == server.pk
    assert body["auth_method"] == AuthMethod.PROJECT_KEY
    assert body["port"] == 22 and body["keep_releases"] == 3 and body["protocol"] == "ssh"
    assert body["trusted"] is False and body["live_release"] is None
    assert body["url"] == settings.BASE_URL + f"{servers_url(project)}{server.pk}/"
    assert body["html_url"] == (
        settings.BASE_URL + f"/projects/{project.slug}/servers/{server.pk}/"
    )
    event = AuditEvent.objects.get(action="server.created")
    assert event.actor == alice and event.target == "server web1"


def test_it_never_shows_a_password_or_private_key(alice_api, bob_api, project, ssh_client_key_pair):
    created = alice_api.post(servers_url(project), server_data(password=PASSWORD), format="json")
    assert created.status_code == 201, created.content
    server = Server.objects.get()
    assert server.auth_method == AuthMethod.PASSWORD and server.password == PASSWORD
    key = ssh_client_key_pair.private_key
    changed = alice_api.patch(
        f"{servers_url(project)}{server.pk}/", {"private_key": key}, format="json"
    )
    assert changed.status_code == 200, changed.content
    server.refresh_from_db()
    assert server.auth_method == AuthMethod.PRIVATE_KEY
    assert server.private_key == key and server.password == ""

    responses = [
        created,
        changed,
        alice_api.get(servers_url(project)),
        alice_api.get(f"{servers_url(project)}{server.pk}/"),
        bob_api.get(f"{servers_url(project)}{server.pk}/"),
        alice_api.get(f"/api/v1/projects/{project.slug}/"),
    ]
    key_body = "".join(key.strip().splitlines()[1:-1])
    for response in responses:
        assert PASSWORD.encode() not in response.content
        assert key_body[:40].encode() not in response.content
        assert b'"password":' not in response.content
        assert b'"private_key":' not in response.content
    events = str(list(AuditEvent.objects.values_list("detail", flat=True)))
    assert PASSWORD not in events and key_body[:40] not in events


def test_it_goes_back_to_the_project_key(alice_api, project):
    alice_api.post(servers_url(project), server_data(password=PASSWORD), format="json")
    server = Server.objects.get()
    response = alice_api.patch(
        f"{servers_url(project)}{server.pk}/", {"auth_method": "project_key"}, format="json"
    )
    assert response.status_code == 200
    server.refresh_from_db()
    assert server.auth_method == AuthMethod.PROJECT_KEY and server.password == ""


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("deploy_path", "srv/relative"),
        ("deploy_path", "/srv/../etc"),
        ("deploy_path", "/srv/$(reboot)"),
        ("port", 0),
        ("port", 70000),
        ("keep_releases", 0),
        ("host_key_fingerprint", "MD5:aa:bb"),
        ("host_key_fingerprint", "SHA256:short"),
        ("file_mode", "999"),
        ("directory_mode", "rwx"),
        ("release_copy", "symlinks"),
        ("private_key", "-----BEGIN OPENSSH PRIVATE KEY-----\nnot a key\n"),
        ("branch", "bad..branch"),
        ("protocol", "gopher"),
        ("hostname", "-oProxyCommand=evil"),
        ("auth_method", "project_key_typo"),
    ],
)
def test_it_names_the_field_it_refuses(alice_api, project, field, value):
    response = alice_api.post(servers_url(project), server_data(**{field: value}), format="json")
    assert response.status_code == 400, response.content
    assert list(response.json()) == [field]
    assert not Server.objects.exists()


def test_it_refuses_a_second_server_of_the_same_name(alice_api, project):
    assert alice_api.post(servers_url(project), server_data(), format="json").status_code == 201
    response = alice_api.post(servers_url(project), server_data(), format="json")
    assert response.status_code == 400
    assert "name" in response.json()


def test_it_pins_a_fingerprint_given_on_creation(alice_api, project):
    response = alice_api.post(
        servers_url(project), server_data(host_key_fingerprint=FINGERPRINT), format="json"
    )
    assert response.json()["trusted"] is True
    assert AuditEvent.objects.filter(action="host_key.trusted").exists()


def test_moving_a_server_forgets_its_pinned_host_key(alice_api, project):
    alice_api.post(
        servers_url(project), server_data(host_key_fingerprint=FINGERPRINT), format="json"
    )
    server = Server.objects.get()
    response = alice_api.patch(
        f"{servers_url(project)}{server.pk}/", {"hostname": "web2.example.com"}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["trusted"] is False
    assert response.json()["host_key_fingerprint"] == ""


def test_a_viewer_reads_servers_but_cannot_change_them(alice_api, bob_api, project):
    alice_api.post(servers_url(project), server_data(), format="json")
    server = Server.objects.get()
    detail = f"{servers_url(project)}{server.pk}/"
    assert bob_api.get(servers_url(project)).status_code == 200
    assert bob_api.get(detail).status_code == 200
    assert (
        bob_api.post(servers_url(project), server_data(name="x"), format="json").status_code == 403
    )
    assert bob_api.patch(detail, {"name": "x"}, format="json").status_code == 403
    assert bob_api.delete(detail).status_code == 403
    assert bob_api.post(f"{detail}trust/", {"fingerprint": FINGERPRINT}).status_code == 403
    assert Server.objects.get().name == "web1"


def test_a_deployer_cannot_configure_servers(alice_api, bob_api, bob, project):
    Membership.objects.filter(user=bob).update(role=Role.DEPLOYER)
    alice_api.post(servers_url(project), server_data(), format="json")
    server = Server.objects.get()
    response = bob_api.patch(f"{servers_url(project)}{server.pk}/", {"name": "x"}, format="json")
    assert response.status_code == 403


def test_another_projects_servers_are_not_found(
    alice_api, charlie_api, charlie, project, project_factory, repo
):
    alice_api.post(servers_url(project), server_data(), format="json")
    server = Server.objects.get()
    theirs = project_factory(repo, owner=charlie, name="Charlie's")
    # Charlie is admin of his own project, and still cannot reach Alice's server through it.
    for path in ("", "check/", "trust/", "releases/", "rollback/"):
        url = f"{servers_url(theirs)}{server.pk}/{path}"
        method = charlie_api.get if path in ("", "releases/") else charlie_api.post
        assert method(url).status_code == 404, url
    assert charlie_api.get(servers_url(project)).status_code == 404
    assert charlie_api.delete(f"{servers_url(project)}{server.pk}/").status_code == 404
    assert alice_api.get(f"{servers_url(project)}999999/").status_code == 404
    assert Server.objects.filter(pk=server.pk).exists()


def test_an_admin_deletes_a_server(alice_api, project):
    alice_api.post(servers_url(project), server_data(), format="json")
    server = Server.objects.get()
    assert alice_api.delete(f"{servers_url(project)}{server.pk}/").status_code == 204
    assert not Server.objects.exists()
    assert AuditEvent.objects.filter(action="server.deleted").exists()
