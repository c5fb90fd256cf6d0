"""The configuration forms: the services' errors appear beside the field that caused them,
and secrets go in but never come back out."""

from __future__ import annotations

import pytest

from projects.models import ApiToken, AuditEvent, ConfigFile, EnvironmentVariable, Membership, Role
from servers.models import AuthMethod, Server
from tests.dashboard.support import field_errors

pytestmark = pytest.mark.django_db

SERVER = {
    "name": "web2",
    "hostname": "web2.example.com",
    "port": "22",
    "username": "deploy",
    "deploy_path": "/srv/shop",
    "auth_method": AuthMethod.PROJECT_KEY,
    "protocol": "ssh",
    "keep_releases": "3",
    "atomic": "on",
    "enabled": "on",
}


def test_it_adds_a_server_and_records_it(alice_client, project):
    response = alice_client.post(f"/projects/{project.slug}/servers/new/", SERVER)
    server = Server.objects.get(name="web2")
    assert response.status_code == 302
    assert response["Location"] == f"/projects/{project.slug}/servers/{server.pk}/"
    assert (server.hostname, server.deploy_path, server.auth_method) == (
        "web2.example.com",
        "/srv/shop",
        AuthMethod.PROJECT_KEY,
    )
    assert not server.host_key_fingerprint
    assert AuditEvent.objects.filter(action="server.created", target="server web2").exists()


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"deploy_path": "srv/shop"}, "deploy_path", "must be an absolute path"),
        ({"hostname": "-oProxyCommand=x"}, "hostname", "must not be empty"),
        ({"port": "70000"}, "port", "less than or equal to 65535"),
        ({"name": "web1"}, "name", "is already used"),
        (
            {"auth_method": AuthMethod.PASSWORD},
            "password",
            "is needed when auth_method is password",
        ),
        ({"file_mode": "rwx"}, "file_mode", "is not an octal mode"),
        ({"branch": "bad..branch"}, "branch", ""),
    ],
)
def test_it_shows_a_server_error_beside_its_field(
    alice_client, project, server, changes, field, message
):
    response = alice_client.post(f"/projects/{project.slug}/servers/new/", {**SERVER, **changes})
    assert response.status_code == 200
    errors = field_errors(response.content.decode(), field)
    assert errors and message in errors[0], errors
    assert not Server.objects.filter(name="web2").exists()


def test_a_servers_password_is_write_only(alice_client, project, server):
    path = f"/projects/{project.slug}/servers/{server.pk}/edit/"
    form = {
        **SERVER,
        "name": "web1",
        "auth_method": AuthMethod.PASSWORD,
        "password": "hunter2-secret",
    }
    assert alice_client.post(path, form).status_code == 302
    server.refresh_from_db()
    assert server.password == "hunter2-secret"
    assert "hunter2-secret" not in alice_client.get(path).content.decode()
    # Saved again with the password left blank, it stays.
    assert alice_client.post(path, {**form, "password": ""}).status_code == 302
    server.refresh_from_db()
    assert server.password == "hunter2-secret"


def test_it_shows_a_project_error_beside_its_field(alice_client, project):
    path = f"/projects/{project.slug}/settings/"
    form = {"name": "Shop", "repository_url": "ext::sh -c touch% /tmp/pwned", "branch": "main"}
    errors = field_errors(alice_client.post(path, form).content.decode(), "repository_url")
    assert errors, "no error beside the repository URL"
    form = {
        "name": "Shop",
        "repository_url": project.repository_url,
        "branch": "main",
        "shared_paths": "storage/\n../etc",
    }
    errors = field_errors(alice_client.post(path, form).content.decode(), "shared_paths")
    assert errors and "../etc" in errors[0]


def test_it_creates_a_project_with_its_creator_as_admin(alice_client, site_admin, alice):
    form = {"name": "Blog", "repository_url": "https://git.example.com/blog.git", "branch": "main"}
    response = alice_client.post("/projects/new/", form)
    assert response.status_code == 302 and response["Location"] == "/projects/blog/"
    assert Membership.objects.get(project__slug="blog", user=alice).role == Role.ADMIN
    page = alice_client.get("/projects/blog/").content.decode()
    assert "ssh-ed25519 " in page and "slipway-blog" in page


def test_a_repository_token_is_never_shown(alice_client, project):
    path = f"/projects/{project.slug}/settings/"
    form = {
        "name": "Shop",
        "repository_url": project.repository_url,
        "branch": "main",
        "repository_token": "ghp_secret_token_1",
    }
    assert alice_client.post(path, form).status_code == 302
    project.refresh_from_db()
    assert project.repository_token == "ghp_secret_token_1"
    assert "ghp_secret_token_1" not in alice_client.get(path).content.decode()
    # Blank keeps it; the box removes it.
    alice_client.post(path, {**form, "repository_token": ""})
    project.refresh_from_db()
    assert project.repository_token == "ghp_secret_token_1"
    alice_client.post(path, {**form, "repository_token": "", "remove_repository_token": "on"})
    project.refresh_from_db()
    assert project.repository_token == ""


def test_a_secret_variable_is_write_only_and_masked(alice_client, bob_client, project):
    path = f"/projects/{project.slug}/settings/environment/"
    form = {
        "name": "DB_PASSWORD",
        "value": "s3cret-value",
        "secret": "on",
        "build": "on",
        "servers": "on",
    }
    assert alice_client.post(path, form).status_code == 302
    variable = EnvironmentVariable.objects.get(name="DB_PASSWORD")
    assert variable.value == "s3cret-value" and variable.secret
    edit = f"{path}{variable.pk}/"
    for client in (alice_client, bob_client):
        assert "••••••••" in client.get(path).content.decode()
        for page in (path, edit):
            assert "s3cret-value" not in client.get(page).content.decode(), page
    # Saved with a blank value, the secret stays.
    assert alice_client.post(edit, {**form, "value": ""}).status_code == 302
    variable.refresh_from_db()
    assert variable.value == "s3cret-value"
    # It cannot be made visible without a new value.
    response = alice_client.post(edit, {"name": "DB_PASSWORD", "value": "", "build": "on"})
    assert "Give a new value" in field_errors(response.content.decode(), "value")[0]
    # A value typed with a mistake elsewhere is not sent back to the browser.
    response = alice_client.post(path, {**form, "name": "1BAD", "value": "typed-secret"})
    html = response.content.decode()
    assert "shell variable name" in field_errors(html, "name")[0]
    assert "typed-secret" not in html


def test_it_shows_a_config_file_error_beside_its_field_and_hides_bodies_from_viewers(
    alice_client, bob_client, project, server
):
    path = f"/projects/{project.slug}/settings/config-files/"
    response = alice_client.post(path, {"path": "../etc/passwd", "body": "x"})
    assert field_errors(response.content.decode(), "path")
    form = {
        "path": "config/.env",
        "body": "DB_HOST=%server%.internal\n",
        "servers": [str(server.pk)],
    }
    assert alice_client.post(path, form).status_code == 302
    config = ConfigFile.objects.get()
    assert list(config.servers.all()) == [server]
    page = alice_client.get(f"{path}{config.pk}/").content.decode()
    assert "DB_HOST=%server%.internal" in page and "%release_path%" in page
    assert "DB_HOST" not in bob_client.get(f"{path}{config.pk}/").content.decode()


def test_a_config_files_group_and_mode_are_saved_and_a_bad_mode_is_named(alice_client, project):
    path = f"/projects/{project.slug}/settings/config-files/"
    response = alice_client.post(path, {"path": ".env", "body": "x", "mode": "u+rw"})
    errors = field_errors(response.content.decode(), "mode")
    assert errors and "octal" in errors[0]
    form = {"path": ".env", "body": "SECRET_KEY=x\n", "group": "www-data", "mode": ""}
    assert alice_client.post(path, form).status_code == 302
    config = ConfigFile.objects.get()
    assert (config.group, config.mode) == ("www-data", "")


def test_a_projects_generated_paths_are_saved_one_per_line(alice_client, project):
    form = {
        "name": "Shop",
        "repository_url": project.repository_url,
        "branch": "main",
        "generated_paths": "staticfiles/\n**/__pycache__/\n",
    }
    path = f"/projects/{project.slug}/settings/"
    assert alice_client.post(path, form).status_code == 302
    project.refresh_from_db()
    assert project.generated_paths == ["staticfiles/", "**/__pycache__/"]
    errors = field_errors(
        alice_client.post(path, {**form, "generated_paths": "!keep"}).content.decode(),
        "generated_paths",
    )
    assert errors and "'!keep'" in errors[0]


def test_it_adds_commands_build_commands_excluded_files_and_groups(alice_client, project, server):
    slug = project.slug
    posts = {
        "commands": {
            "command": "php artisan migrate",
            "stage": "before_switch",
            "run_on": "always",
            "halt_on_error": "on",
        },
        "build-commands": {
            "command": "npm ci",
            "watch_globs": "package-lock.json\n",
            "halt_on_error": "on",
        },
        "excluded-files": {"pattern": "tests/"},
        "groups": {"name": "production", "servers": [str(server.pk)], "auto_deploy": "on"},
    }
    for kind, form in posts.items():
        response = alice_client.post(f"/projects/{slug}/settings/{kind}/", form)
        assert response.status_code == 302, (kind, response.content.decode()[-2000:])
    assert project.build_commands.get().watch_globs == ["package-lock.json"]
    assert project.groups.get().ordered_servers() == [server]
    empty = alice_client.post(
        f"/projects/{slug}/settings/commands/",
        {"command": "  ", "stage": "after_switch", "run_on": "always"},
    )
    assert field_errors(empty.content.decode(), "command")


def test_it_shows_member_errors_and_keeps_an_admin(alice_client, alice, project):
    path = f"/projects/{project.slug}/members/"
    response = alice_client.post(path, {"username": "nobody", "role": "viewer"})
    assert "no user named" in field_errors(response.content.decode(), "username")[0]
    response = alice_client.post(f"{path}alice/role/", {"role": "viewer"}, follow=True)
    assert "last admin" in response.content.decode()
    assert Membership.objects.get(project=project, user=alice).role == Role.ADMIN


def test_it_issues_a_token_once_and_revokes_it(alice_client, bob_client, alice):
    response = alice_client.post("/account/tokens/", {"name": "CI", "scope": "deploy"})
    html = response.content.decode()
    record = ApiToken.objects.get(user=alice)
    token = html.split('id="new-token" class="mono" value="', 1)[1].split('"', 1)[0]
    assert token.startswith(record.prefix) and len(token) > 30
    assert "no-store" in response["Cache-Control"]
    assert token not in alice_client.get("/account/tokens/").content.decode()
    assert record.prefix in alice_client.get("/account/tokens/").content.decode()
    assert AuditEvent.objects.filter(action="token.issued", actor=alice, project=None).exists()

    assert bob_client.post(f"/account/tokens/{record.pk}/revoke/").status_code == 404
    assert alice_client.post(f"/account/tokens/{record.pk}/revoke/").status_code == 302
    record.refresh_from_db()
    assert record.revoked_at is not None
    assert AuditEvent.objects.filter(action="token.revoked", actor=alice).count() == 1
    empty = alice_client.post("/account/tokens/", {"name": "  ", "scope": "read"})
    assert field_errors(empty.content.decode(), "name")


def test_a_servers_jump_host_is_saved_from_the_form_and_its_key_is_write_only(
    alice_client, project, server, ssh_client_key_pair
):
    path = f"/projects/{project.slug}/servers/{server.pk}/edit/"
    key = ssh_client_key_pair.private_key
    form = {
        **SERVER,
        "name": "web1",
        "hostname": "10.0.0.5",
        "jump_hostname": "bastion.example.com",
        "jump_port": "2222",
        "jump_username": "jump",
        "jump_auth_method": "private_key",
        "jump_private_key": key,
    }
    assert alice_client.post(path, form).status_code == 302
    server.refresh_from_db()
    assert (server.jump_hostname, server.jump_port, server.jump_username) == (
        "bastion.example.com",
        2222,
        "jump",
    )
    assert server.jump_private_key == key and not server.jump_host_key_fingerprint
    page = alice_client.get(path).content.decode()
    assert "PRIVATE KEY" not in page and "bastion.example.com" in page
    # Saved again with the key left blank, it stays.
    assert alice_client.post(path, {**form, "jump_private_key": ""}).status_code == 302
    server.refresh_from_db()
    assert server.jump_private_key == key
    detail = alice_client.get(f"/projects/{project.slug}/servers/{server.pk}/").content.decode()
    assert "Through the jump host" in detail and "jump@bastion.example.com:2222" in detail
    assert "PRIVATE KEY" not in detail


def test_a_jump_host_error_is_shown_beside_its_field(alice_client, project):
    response = alice_client.post(
        f"/projects/{project.slug}/servers/new/",
        {**SERVER, "jump_hostname": "bastion.example.com", "jump_username": ""},
    )
    assert response.status_code == 200
    errors = field_errors(response.content.decode(), "jump_username")
    assert errors and "is needed with a jump host" in errors[0], errors


def test_it_adds_a_run_once_migration_and_its_reversal_after_a_rollback(alice_client, project):
    path = f"/projects/{project.slug}/settings/commands/"
    form = alice_client.get(path).content.decode()
    assert 'name="run_once"' in form and "After a rollback" in form
    for stage, command in (
        ("before_switch", "php artisan migrate --force"),
        ("after_rollback", "cd %previous_release_path% && php artisan migrate:rollback"),
    ):
        response = alice_client.post(
            path,
            {"command": command, "stage": stage, "run_on": "always", "run_once": "on"},
        )
        assert response.status_code == 302, response.content.decode()[-2000:]
    assert [(c.stage, c.run_once) for c in project.commands.all()] == [
        ("before_switch", True),
        ("after_rollback", True),
    ]
    page = alice_client.get(path).content.decode()
    assert "once: on one server" in page
    assert "After a rollback&#x27;s switch" in page or "After a rollback's switch" in page
    assert "%previous_release_path%" in page and "%rollback%" in page


def test_a_projects_drift_settings_are_saved_and_kept_when_left_out(alice_client, project):
    path = f"/projects/{project.slug}/settings/"
    form = {"name": "Shop", "repository_url": project.repository_url, "branch": "main"}
    saved = alice_client.post(path, {**form, "on_drift": "refuse", "drift_check_hours": "6"})
    assert saved.status_code == 302
    project.refresh_from_db()
    assert (project.on_drift, project.drift_check_hours) == ("refuse", 6)
    assert alice_client.post(path, form).status_code == 302
    project.refresh_from_db()
    assert (project.on_drift, project.drift_check_hours) == ("refuse", 6)
    wrong = alice_client.post(path, {**form, "on_drift": "ignore"}).content.decode()
    assert field_errors(wrong, "on_drift")
