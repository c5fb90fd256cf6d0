"""`export` writes a project's settings as YAML without a secret; `import` takes them back:
the round trip changes nothing and keeps every stored secret; a changed file changes what
it says; only the project's admins import, any member exports."""

from __future__ import annotations

import pytest
import yaml
from rest_framework.test import APIClient

from builds.engine.settings_file import parse
from projects.models import (
    ApiToken,
    AuditEvent,
    BuildCommand,
    ConfigFile,
    EnvironmentVariable,
    TokenScope,
)
from projects.settings_code import settings_document
from servers.models import ServerGroup
from tests.templates.conftest import SECRET_VALUES

pytestmark = pytest.mark.django_db


def _export(api, project) -> str:
    answer = api.get(f"/api/v1/projects/{project.slug}/settings/")
    assert answer.status_code == 200, answer.content
    return answer.json()["yaml"]


def _import(api, project, text: str, *, dry_run: bool = False):
    return api.post(
        f"/api/v1/projects/{project.slug}/settings/import/",
        {"yaml": text, "dry_run": dry_run},
        format="json",
    )


def test_it_exports_every_setting_and_no_secret(alice_api, configured):
    ServerGroup.objects.create(project=configured, name="production", strategy="rolling")

    text = _export(alice_api, configured)

    for secret in SECRET_VALUES:
        assert secret not in text
    document = yaml.safe_load(text)
    assert document == settings_document(configured)
    assert [c["command"] for c in document["build_commands"]] == ["composer install", "npm ci"]
    assert {v["name"]: v["value"] for v in document["environment_variables"]} == {
        "API_TOKEN": "",
        "APP_ENV": "production",
    }
    assert document["config_files"][0]["body"].startswith("APP_KEY=")
    assert document["health_checks"][0]["url"] == "https://%hostname%/up"
    assert document["groups"]["production"]["strategy"] == "rolling"
    # The file's part of an export is a valid .slipway.yml, by the published schema.
    file_keys = ("build_commands", "commands", "excluded_files", "shared_paths", "health_checks")
    part = yaml.safe_dump({key: document[key] for key in file_keys})
    assert parse(part.encode()).data.keys() == set(file_keys)


def test_the_round_trip_changes_nothing_and_keeps_the_secrets(alice_api, configured):
    before = settings_document(configured)
    secrets = {v.name: v.value for v in EnvironmentVariable.objects.filter(project=configured)}
    body = ConfigFile.objects.get(project=configured).body

    answer = _import(alice_api, configured, _export(alice_api, configured))

    assert answer.status_code == 200, answer.content
    assert answer.json() == {"dry_run": False, "changed": {}}
    assert settings_document(configured) == before
    assert {
        v.name: v.value for v in EnvironmentVariable.objects.filter(project=configured)
    } == secrets
    assert ConfigFile.objects.get(project=configured).body == body
    # The SSH command restricted to web1 kept its server: nothing was replaced.
    assert configured.commands.get(run_once=True).servers.count() == 1


def test_an_import_changes_what_the_file_says_and_is_audited(alice_api, configured):
    document = yaml.safe_load(_export(alice_api, configured))
    document["build_commands"][1]["command"] = "npm ci --omit=dev"
    document["shared_paths"] = ["storage/"]
    text = yaml.safe_dump(document, sort_keys=False)

    preview = _import(alice_api, configured, text, dry_run=True)

    assert preview.status_code == 200, preview.content
    changed = preview.json()["changed"]
    assert set(changed) == {"build_commands", "shared_paths"}
    assert changed["shared_paths"] == {"project": ["storage/", ".env"], "file": ["storage/"]}
    assert BuildCommand.objects.filter(project=configured, command="npm ci").exists()

    applied = _import(alice_api, configured, text)

    assert applied.status_code == 200, applied.content
    configured.refresh_from_db()
    assert configured.shared_paths == ["storage/"]
    assert list(configured.build_commands.values_list("command", flat=True)) == [
        "composer install",
        "npm ci --omit=dev",
    ]
    # Unchanged keys keep their rows, with their secrets.
    assert EnvironmentVariable.objects.get(name="API_TOKEN").value == SECRET_VALUES[0]
    event = AuditEvent.objects.get(action="project.settings_imported")
    assert event.detail["fields"] == ["build_commands", "shared_paths"]


def test_an_invalid_import_names_the_line_and_changes_nothing(alice_api, configured):
    before = settings_document(configured)
    text = "shared_paths:\n  - storage/\nbuild_commands:\n  - command: make\n    halt_on_error: maybe\n"

    answer = _import(alice_api, configured, text)

    assert answer.status_code == 400
    assert answer.json() == {
        "yaml": ["line 5: build_commands[0].halt_on_error: must be true or false, not 'maybe'."]
    }
    assert settings_document(configured) == before


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("shared_paths: " + "[" * 3000 + "]" * 3000 + "\n", "line 1: nests lists"),
        ("build_commands:\n  - {command: make, timeout_seconds: " + "9" * 5000 + "}\n", "line 2:"),
        ('build_commands:\n  - command: "make \\ud800"\n', "line 2: build_commands[0].command"),
        ('build_commands:\n  - command: "make \\0"\n', "line 2: build_commands[0].command"),
    ],
)
def test_a_hostile_import_is_a_400_naming_the_line_never_a_500(
    alice_api, configured, text, message
):
    before = settings_document(configured)

    answer = _import(alice_api, configured, text)

    assert answer.status_code == 400, answer.content
    assert answer.json()["yaml"][0].startswith(message)
    assert settings_document(configured) == before


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        # Saved, it was past the column's 10 characters: a 500 on PostgreSQL.
        ("batch_size: " + "9" * 30, "line 3: groups.production.batch_size: is too long"),
        # It named canary_window_seconds, which the file did not set, on the group's line.
        ("pause_seconds: " + "9" * 30, "line 3: groups.production.pause_seconds: must fit"),
    ],
)
def test_a_groups_number_too_large_is_refused_naming_its_field(
    alice_api, configured, fields, message
):
    ServerGroup.objects.create(project=configured, name="production", strategy="rolling")

    answer = _import(alice_api, configured, f"groups:\n  production:\n    {fields}\n")

    assert answer.status_code == 400, answer.content
    assert answer.json()["yaml"][0].startswith(message)
    assert ServerGroup.objects.get(name="production").batch_size == "1"


def test_an_import_that_leaves_the_release_is_refused_with_its_line(alice_api, configured):
    answer = _import(alice_api, configured, "cache_paths: [vendor]\nshared_paths:\n  - ../etc\n")

    assert answer.status_code == 400
    [message] = answer.json()["yaml"]
    assert (
        message
        == "line 3: shared_paths[0]: '../etc' must be a plain relative path without '.' or '..'"
    )


def test_bob_a_viewer_exports_but_may_not_import(bob_api, configured):
    text = _export(bob_api, configured)

    answer = _import(bob_api, configured, text)

    assert answer.status_code == 403
    for secret in SECRET_VALUES:
        assert secret not in text


def test_charlie_sees_neither(charlie_api, configured):
    assert charlie_api.get(f"/api/v1/projects/{configured.slug}/settings/").status_code == 404
    assert _import(charlie_api, configured, "shared_paths: []\n").status_code == 404


def test_a_read_token_of_the_admin_may_not_import(alice, configured):
    _, token = ApiToken.issue(user=alice, name="read only", scope=TokenScope.READ)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")

    assert client.get(f"/api/v1/projects/{configured.slug}/settings/").status_code == 200
    assert _import(client, configured, "shared_paths: []\n").status_code == 403
    configured.refresh_from_db()
    assert configured.shared_paths == ["storage/", ".env"]
