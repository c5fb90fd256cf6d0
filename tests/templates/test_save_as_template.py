"""A project saved as a template, and a project made from that template: every setting
comes across, and no secret does (not in the rows, not in any answer)."""

from __future__ import annotations

import json

import pytest
from django.db import connection

from projects.models import AuditEvent, Project, ProjectTemplate
from tests.dashboard.support import field_errors
from tests.templates.conftest import SECRET_VALUES

pytestmark = pytest.mark.django_db


def _save(client, project, name="Our Laravel", **extra):
    return client.post(
        "/api/v1/templates/",
        {"project": project.slug, "name": name, "description": "PHP apps", **extra},
        format="json",
    )


def _stored_text() -> str:
    """Every stored template row as the database holds it."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM projects_projecttemplate")
        return json.dumps(cursor.fetchall(), default=str)


def test_it_saves_a_project_as_a_template_without_its_secrets(alice_api, configured, alice):
    response = _save(alice_api, configured)
    assert response.status_code == 201, response.content
    answer = response.json()
    template = ProjectTemplate.objects.get()
    assert answer["id"] == str(template.pk) and answer["builtin"] is False
    assert answer["source_project"] == "shop" and answer["created_by"] == "alice"
    contents = answer["contents"]
    assert contents["shared_paths"] == ["storage/", ".env"]
    assert contents["cache_paths"] == ["vendor"] and contents["build_network"] is False
    assert [c["command"] for c in contents["build_commands"]] == ["composer install", "npm ci"]
    assert contents["build_commands"][0]["watch_globs"] == ["composer.lock"]
    assert [(c["stage"], c["run_on"]) for c in contents["commands"]] == [
        ("before_switch", "always"),
        ("after_switch", "not_first"),
    ]
    assert contents["excluded_files"] == ["/tests/"]
    assert contents["environment_variables"] == [
        {"name": "API_TOKEN", "value": "", "secret": True, "build": True, "servers": True},
        {
            "name": "APP_ENV",
            "value": "production",
            "secret": False,
            "build": False,
            "servers": True,
        },
    ]
    [config] = contents["config_files"]
    assert config["body"] == "APP_KEY=\nDB_PASSWORD=\nAPP_DIR=%release_path%\n"
    assert (config["mode"], config["group"]) == ("640", "www-data")
    [check] = contents["health_checks"]
    assert check["url"] == "https://%hostname%/up" and check["retries"] == 2
    # No secret anywhere: the answer, the row, a later read.
    listed = alice_api.get("/api/v1/templates/").content.decode()
    for secret in SECRET_VALUES:
        assert secret not in response.content.decode()
        assert secret not in _stored_text()
        assert secret not in listed
    for key in ("private_key", "public_key", "webhook", "repository", "servers", "badge"):
        assert not any(key in field for field in contents if field != "submodules"), key
    assert configured.private_key.strip() not in _stored_text()
    event = AuditEvent.objects.get(action="project.saved_as_template")
    assert event.project == configured and event.target == "template Our Laravel"


def test_a_project_made_from_a_saved_template_gets_its_settings_and_no_secret(
    alice_api, configured, repo
):
    template_id = _save(alice_api, configured).json()["id"]
    response = alice_api.post(
        "/api/v1/projects/",
        {"name": "Blog", "repository_url": repo.url, "template": template_id},
        format="json",
    )
    assert response.status_code == 201, response.content
    assert response.json()["has_repository_token"] is False
    blog = Project.objects.get(slug="blog")
    assert blog.shared_paths == configured.shared_paths
    assert blog.build_network is False
    assert list(blog.build_commands.values_list("command", "position", "timeout_seconds")) == [
        ("composer install", 1, None),
        ("npm ci", 2, 60),
    ]
    migrate = blog.commands.get(stage="after_switch")
    assert (migrate.run_on, migrate.run_once, migrate.halt_on_error) == ("not_first", True, False)
    assert not migrate.servers.exists()
    secret = blog.environment_variables.get(name="API_TOKEN")
    assert secret.secret is True and secret.value == ""
    variables = alice_api.get("/api/v1/projects/blog/environment/").json()
    assert {v["name"]: v["value"] for v in variables} == {
        "API_TOKEN": None,
        "APP_ENV": "production",
    }
    assert blog.config_files.get().body == "APP_KEY=\nDB_PASSWORD=\nAPP_DIR=%release_path%\n"
    assert blog.health_checks.get().url == "https://%hostname%/up"
    assert not blog.servers.exists()
    assert blog.private_key != configured.private_key
    assert blog.webhook_secret != configured.webhook_secret
    # Not linked: changing the template's source changes nothing in the copy.
    configured.build_commands.all().delete()
    ProjectTemplate.objects.all().delete()
    assert blog.build_commands.count() == 2


def test_it_names_the_field_of_bad_input(alice_api, configured, repo):
    assert list(_save(alice_api, configured, name="  ").json()) == ["name"]
    assert list(_save(alice_api, configured, name="laravel").json()) == ["name"]
    assert _save(alice_api, configured).status_code == 201
    taken = _save(alice_api, configured, name="OUR LARAVEL")
    assert taken.status_code == 400 and list(taken.json()) == ["name"]
    long = _save(alice_api, configured, name="x" * 101)
    assert long.status_code == 400 and list(long.json()) == ["name"]
    missing = alice_api.post("/api/v1/templates/", {"name": "A"}, format="json")
    assert missing.status_code == 400 and list(missing.json()) == ["project"]
    for reference in ("wordpress", "999999", "-1", "1" * 40):
        response = alice_api.post(
            "/api/v1/projects/",
            {"name": "Blog", "repository_url": repo.url, "template": reference},
            format="json",
        )
        assert response.status_code == 400, response.content
        assert list(response.json()) == ["template"]
        assert "laravel" in response.json()["template"][0]
    assert not Project.objects.filter(slug="blog").exists()


def test_it_saves_a_template_from_the_settings_page(alice_client, configured):
    page = alice_client.get("/projects/shop/settings/").content.decode()
    assert "Save as template" in page
    response = alice_client.post(
        "/projects/shop/save-as-template/",
        {"template-name": "Shop settings", "template-description": ""},
    )
    assert response.status_code == 302
    assert ProjectTemplate.objects.get().name == "Shop settings"
    again = alice_client.post(
        "/projects/shop/save-as-template/", {"template-name": "shop settings"}
    )
    assert again.status_code == 200
    [error] = field_errors(again.content.decode(), "template-name")
    assert "exists already" in error
    new_page = alice_client.get("/projects/new/").content.decode()
    assert "Shop settings (saved)" in new_page  # never mistaken for a built-in
