"""A project made from each built-in template holds that template's settings, copied."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from projects.builtin_templates import BUILTIN_TEMPLATES
from projects.models import AuditEvent, Project

pytestmark = pytest.mark.django_db


def _settings_of(project: Project) -> dict[str, Any]:
    return {
        "shared_paths": project.shared_paths,
        "cache_paths": project.cache_paths,
        "generated_paths": project.generated_paths,
        "build_commands": list(project.build_commands.values_list("command", flat=True)),
        "commands": list(project.commands.values_list("stage", "command")),
        "excluded_files": list(project.excluded_files.values_list("pattern", flat=True)),
        "config_files": list(project.config_files.values_list("path", "body")),
        "environment_variables": list(
            project.environment_variables.values_list("name", "value", "build", "servers")
        ),
    }


def _expected(slug: str) -> dict[str, Any]:
    contents = BUILTIN_TEMPLATES[slug].contents
    return {
        "shared_paths": contents.get("shared_paths", []),
        "cache_paths": contents.get("cache_paths", []),
        "generated_paths": contents.get("generated_paths", []),
        "build_commands": [item["command"] for item in contents.get("build_commands", [])],
        "commands": [(item["stage"], item["command"]) for item in contents.get("commands", [])],
        "excluded_files": contents.get("excluded_files", []),
        "config_files": [(item["path"], item["body"]) for item in contents.get("config_files", [])],
        "environment_variables": sorted(
            (item["name"], item["value"], item["build"], item["servers"])
            for item in contents.get("environment_variables", [])
        ),
    }


@pytest.mark.parametrize("slug", list(BUILTIN_TEMPLATES))
def test_it_creates_a_project_from_each_built_in_template(alice_api, site_admin, repo, slug):
    response = alice_api.post(
        "/api/v1/projects/",
        {"name": f"App {slug}", "repository_url": repo.url, "template": slug},
        format="json",
    )
    assert response.status_code == 201, response.content
    project = Project.objects.get(slug=response.json()["slug"])
    assert _settings_of(project) == _expected(slug)
    assert response.json()["shared_paths"] == BUILTIN_TEMPLATES[slug].contents.get(
        "shared_paths", []
    )
    event = AuditEvent.objects.get(project=project, action="project.created")
    assert event.detail == {"template": BUILTIN_TEMPLATES[slug].name}


def test_the_laravel_template_holds_the_usual_laravel_settings(alice_api, site_admin, repo):
    response = alice_api.post(
        "/api/v1/projects/",
        {"name": "Blog", "repository_url": repo.url, "template": "laravel"},
        format="json",
    )
    project = Project.objects.get(slug=response.json()["slug"])
    assert project.shared_paths == ["storage/", ".env"]
    builds = list(project.build_commands.order_by("position").values_list("command", flat=True))
    assert (
        builds[0].startswith("composer install --no-dev") and "--optimize-autoloader" in builds[0]
    )
    assert builds[1] == "npm ci && npm run build"
    commands = list(project.commands.values_list("stage", "command"))
    assert ("after_switch", "php artisan migrate --force") in commands
    assert project.commands.get(command="php artisan migrate --force").run_once is True
    assert ("before_switch", "php artisan config:cache") in commands
    # In the order they run: the caches before the switch, the migrations after it.
    assert [stage for stage, _ in commands] == sorted(
        (stage for stage, _ in commands), key=["before_switch", "after_switch"].index
    )


def test_fields_sent_with_the_project_win_over_the_templates(alice_api, site_admin, repo):
    response = alice_api.post(
        "/api/v1/projects/",
        {
            "name": "Blog",
            "repository_url": repo.url,
            "template": "laravel",
            "shared_paths": ["storage/", ".env", "public/uploads/"],
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    project = Project.objects.get(slug="blog")
    assert project.shared_paths == ["storage/", ".env", "public/uploads/"]
    assert project.build_commands.count() == 2


def test_it_lists_the_built_ins_to_every_signed_in_user(charlie_api):
    response = charlie_api.get("/api/v1/templates/")
    assert response.status_code == 200
    assert [t["id"] for t in response.json()] == ["laravel", "django", "rails", "node", "static"]
    rails = charlie_api.get("/api/v1/templates/rails/").json()
    assert rails["builtin"] is True and rails["created_by"] is None
    assert "config/master.key" in rails["contents"]["shared_paths"]


def test_it_offers_the_templates_on_the_new_project_page(alice_client, site_admin, repo):
    page = alice_client.get("/projects/new/").content.decode()
    for builtin in BUILTIN_TEMPLATES.values():
        assert f'value="{builtin.slug}"' in page and f"{builtin.name} (built in)" in page
    response = alice_client.post(
        "/projects/new/",
        {"name": "Site", "repository_url": repo.url, "branch": "main", "template": "static"},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    project = Project.objects.get(slug="site")
    assert list(project.build_commands.values_list("command", flat=True)) == [
        "if [ -f package.json ]; then npm ci && npm run build; fi"
    ]


def test_docs_templates_md_says_what_each_built_in_holds():
    docs = (Path(settings.BASE_DIR) / "docs" / "templates.md").read_text()
    for builtin in BUILTIN_TEMPLATES.values():
        contents = builtin.contents
        assert f"(`{builtin.slug}`)" in docs, builtin.slug
        texts = [
            *contents.get("shared_paths", []),
            *contents.get("cache_paths", []),
            *contents.get("generated_paths", []),
            *contents.get("excluded_files", []),
            *(item["command"] for item in contents.get("build_commands", [])),
            *(item["command"] for item in contents.get("commands", [])),
            *(item["path"] for item in contents.get("config_files", [])),
            *(f"{v['name']}={v['value']}" for v in contents.get("environment_variables", [])),
        ]
        for text in texts:
            assert f"`{text}`" in docs, (builtin.slug, text)
