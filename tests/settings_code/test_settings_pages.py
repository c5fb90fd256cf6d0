"""The dashboard: the opt-in on the settings page, Export and Import there, the values a
.slipway.yml replaced badged on the settings pages, and what it changed on a deployment's
page. Alice is the project's admin, Bob a viewer, Charlie no member."""

from __future__ import annotations

import pytest
import yaml

from builds.models import Deployment, Kind, Status
from projects.models import BuildCommand
from tests.dashboard.support import signed_in
from tests.templates.conftest import SECRET_VALUES

pytestmark = pytest.mark.django_db

RECORD = {
    "revision": "a" * 40,
    "found": True,
    "keys": ["build_commands"],
    "changed": {
        "build_commands": {
            "project": [{"command": "composer install"}],
            "file": [{"command": "make build-from-file"}],
        }
    },
    "effective": {"build_commands": [{"command": "make build-from-file"}]},
}


def test_alice_opts_in_on_the_settings_page(alice, configured):
    client = signed_in(alice)
    page = client.get(f"/projects/{configured.slug}/settings/")
    assert b"Take settings from .slipway.yml" in page.content

    data = {
        "name": configured.name,
        "repository_url": configured.repository_url,
        "branch": "main",
        "shared_paths": "storage/\n.env",
        "cache_paths": "vendor",
        "generated_paths": "/public/storage",
        "export_ignore": "on",
        "submodules": "on",
        "settings_from_repository": "on",
    }
    saved = client.post(f"/projects/{configured.slug}/settings/", data)

    assert saved.status_code == 302, saved.content.decode()[:2000]
    configured.refresh_from_db()
    assert configured.settings_from_repository is True


def test_the_export_downloads_yaml_without_a_secret(bob, configured):
    answer = signed_in(bob).get(f"/projects/{configured.slug}/settings/export/")

    assert answer.status_code == 200
    assert answer["Content-Disposition"] == 'attachment; filename="shop.slipway.yml"'
    text = answer.content.decode()
    assert yaml.safe_load(text)["shared_paths"] == ["storage/", ".env"]
    for secret in SECRET_VALUES:
        assert secret not in text


def test_alice_imports_after_a_dry_run(alice, configured):
    client = signed_in(alice)
    document = yaml.safe_load(client.get(f"/projects/{configured.slug}/settings/export/").content)
    document["build_commands"][0]["command"] = "composer install --no-dev"
    text = yaml.safe_dump(document, sort_keys=False)
    url = f"/projects/{configured.slug}/settings/import/"

    dry = client.post(url, {"import-yaml": text, "import-dry_run": "on"})

    assert dry.status_code == 200
    assert b"Would change" in dry.content and b"composer install --no-dev" in dry.content
    assert BuildCommand.objects.filter(command="composer install").exists()

    applied = client.post(url, {"import-yaml": text})

    assert applied.status_code == 302
    assert BuildCommand.objects.filter(command="composer install --no-dev").exists()


def test_an_invalid_import_shows_the_line(alice, configured):
    answer = signed_in(alice).post(
        f"/projects/{configured.slug}/settings/import/",
        {"import-yaml": "excluded_files:\n  - tests/\n  - 42\n", "import-dry_run": "on"},
    )

    assert answer.status_code == 200
    assert b"line 3: excluded_files[1]: must be text, not 42." in answer.content


def test_bob_and_charlie_may_not_import(bob, charlie, configured):
    url = f"/projects/{configured.slug}/settings/import/"
    assert signed_in(bob).post(url, {"import-yaml": "shared_paths: []\n"}).status_code == 403
    assert signed_in(charlie).post(url, {"import-yaml": "shared_paths: []\n"}).status_code == 404
    assert (
        signed_in(charlie).get(f"/projects/{configured.slug}/settings/export/").status_code == 404
    )
    configured.refresh_from_db()
    assert configured.shared_paths == ["storage/", ".env"]


def test_the_settings_pages_badge_what_the_last_file_set(alice, configured):
    client = signed_in(alice)
    Deployment.objects.create(
        project=configured, kind=Kind.PREVIEW, status=Status.SUCCEEDED, settings_file=RECORD
    )
    build_commands = f"/projects/{configured.slug}/settings/build-commands/"
    commands = f"/projects/{configured.slug}/settings/commands/"

    assert b"from .slipway.yml" not in client.get(build_commands).content
    configured.settings_from_repository = True
    configured.save()

    page = client.get(build_commands).content.decode()
    assert "from .slipway.yml" in page and "aaaaaaa" in page
    assert "from .slipway.yml" not in client.get(commands).content.decode()


def test_a_deployments_page_shows_what_the_file_changed(alice, configured):
    deployment = Deployment.objects.create(
        project=configured, status=Status.SUCCEEDED, settings_file=RECORD
    )

    page = signed_in(alice).get(f"/projects/{configured.slug}/deployments/{deployment.pk}/")

    text = page.content.decode()
    assert "Settings from <code>.slipway.yml</code>" in text
    assert "make build-from-file" in text and "composer install" in text


def test_the_general_page_badges_shared_paths_and_the_preview_shows_the_change(alice, configured):
    configured.settings_from_repository = True
    configured.save()
    record = {
        **RECORD,
        "keys": ["shared_paths"],
        "changed": {"shared_paths": {"project": ["storage/", ".env"], "file": ["var/"]}},
        "effective": {"shared_paths": ["var/"]},
    }
    preview = Deployment.objects.create(
        project=configured, kind=Kind.PREVIEW, status=Status.SUCCEEDED, settings_file=record
    )
    client = signed_in(alice)

    general = client.get(f"/projects/{configured.slug}/settings/").content.decode()
    shown = client.get(
        f"/projects/{configured.slug}/deployments/{preview.pk}/preview/"
    ).content.decode()

    assert "from .slipway.yml" in general and "<code>shared_paths</code>" in general
    assert "Settings from <code>.slipway.yml</code>" in shown
    assert "- var/" in shown and "- storage/" in shown


def test_the_guide_is_served_on_the_dashboard(alice):
    page = signed_in(alice).get("/docs/settings-as-code.md")

    assert page.status_code == 200
    assert b"# Settings as code" in page.getvalue()
