"""The templates shipped with Slipway: the usual settings of a Laravel, Django, Rails, Node
or static site, to start a project from (docs/templates.md says what each holds and why).

Each is a template document, the shape projects.services.template_document makes of a
project and template_apply copies into a new one. The commands follow what Capistrano
(capistrano/laravel, capistrano/rails: linked_dirs, linked_files) and Deployer
(recipe/laravel.php: shared_dirs, shared_files) do, fitted to Slipway's stages: what builds
a release and can fail runs before the switch, so a failure leaves the live release alone;
migrations run after the switch, on one server of each deployment (run_once). Anything
installed with native code or absolute paths (a virtualenv, gems) is installed on the
server, not on the worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

BEFORE_SWITCH = "before_switch"
AFTER_SWITCH = "after_switch"


def _command(command: str, description: str, stage: str, **options: Any) -> dict[str, Any]:
    return {"command": command, "description": description, "stage": stage, **options}


def _build(command: str, description: str, **options: Any) -> dict[str, Any]:
    return {"command": command, "description": description, **options}


@dataclass(frozen=True)
class BuiltinTemplate:
    slug: str
    name: str
    description: str
    contents: dict[str, Any]


LARAVEL = BuiltinTemplate(
    slug="laravel",
    name="Laravel",
    description="Shared storage/ and .env; Composer and Vite on the worker; config, route "
    "and view caches before the switch, migrations after it.",
    contents={
        "shared_paths": ["storage/", ".env"],
        "cache_paths": ["vendor", "node_modules"],
        # What the commands below write in the release on the server.
        "generated_paths": [
            "/bootstrap/cache/config.php",
            "/bootstrap/cache/routes-*.php",
            "/public/storage",
        ],
        "excluded_files": ["node_modules/"],
        "build_commands": [
            _build(
                "composer install --no-dev --prefer-dist --no-interaction --optimize-autoloader",
                "PHP dependencies",
            ),
            _build(
                "npm ci && npm run build",
                "Front-end assets (Vite); remove it when the app has no package.json",
            ),
        ],
        "commands": [
            _command(
                "php artisan storage:link", "public/storage → storage/app/public", BEFORE_SWITCH
            ),
            _command("php artisan config:cache", "Cache the configuration", BEFORE_SWITCH),
            _command("php artisan route:cache", "Cache the routes", BEFORE_SWITCH),
            _command("php artisan view:cache", "Compile the views", BEFORE_SWITCH),
            _command(
                "php artisan migrate --force", "Run the migrations", AFTER_SWITCH, run_once=True
            ),
            _command(
                "php artisan queue:restart",
                "Tell queue workers to restart on the new release",
                AFTER_SWITCH,
            ),
        ],
    },
)

DJANGO = BuiltinTemplate(
    slug="django",
    name="Django",
    description="Shared .env and media/; a virtualenv per release made on the server; "
    "collectstatic before the switch, migrations after it.",
    contents={
        "shared_paths": [".env", "media/"],
        "generated_paths": [".venv/", "staticfiles/", "**/__pycache__/"],
        "excluded_files": ["*.pyc"],
        "commands": [
            _command(
                "python3 -m venv --clear .venv && .venv/bin/python -m pip install --quiet "
                "-r requirements.txt",
                "A virtualenv for this release, with requirements.txt",
                BEFORE_SWITCH,
            ),
            _command(
                ".venv/bin/python manage.py collectstatic --noinput",
                "Collect the static files",
                BEFORE_SWITCH,
            ),
            _command(
                ".venv/bin/python manage.py migrate --noinput",
                "Run the migrations",
                AFTER_SWITCH,
                run_once=True,
            ),
        ],
    },
)

RAILS = BuiltinTemplate(
    slug="rails",
    name="Rails",
    description="Shared log/, tmp/pids, tmp/sockets, tmp/cache, public/system, storage/, "
    "vendor/bundle and config/master.key; a config/database.yml that reads DATABASE_URL; "
    "bundle install and assets:precompile before the switch, db:migrate after it.",
    contents={
        "shared_paths": [
            "log/",
            "tmp/pids/",
            "tmp/sockets/",
            "tmp/cache/",
            "public/system/",
            "storage/",
            "vendor/bundle/",
            "config/master.key",
        ],
        "generated_paths": ["/.bundle/", "/public/assets/"],
        "environment_variables": [
            {"name": "RAILS_ENV", "value": "production", "build": False, "servers": True},
        ],
        "config_files": [
            {
                "path": "config/database.yml",
                "description": "Production reads its database from DATABASE_URL",
                "body": "production:\n"
                '  url: <%= ENV["DATABASE_URL"] %>\n'
                '  pool: <%= ENV.fetch("RAILS_MAX_THREADS", 5) %>\n',
            },
        ],
        "commands": [
            _command(
                "bundle config set --local deployment true && "
                "bundle config set --local without 'development test' && bundle install",
                "Gems into the shared vendor/bundle",
                BEFORE_SWITCH,
            ),
            _command("bin/rails assets:precompile", "Compile the assets", BEFORE_SWITCH),
            _command("bin/rails db:migrate", "Run the migrations", AFTER_SWITCH, run_once=True),
        ],
    },
)

NODE = BuiltinTemplate(
    slug="node",
    name="Node",
    description="Shared .env; npm ci and npm run build on the worker; NODE_ENV=production on "
    "the servers.",
    contents={
        "shared_paths": [".env"],
        "cache_paths": ["node_modules"],
        "environment_variables": [
            {"name": "NODE_ENV", "value": "production", "build": False, "servers": True},
        ],
        "build_commands": [
            _build("npm ci", "Dependencies, from package-lock.json"),
            _build("npm run build", "The build script of package.json"),
        ],
    },
)

STATIC = BuiltinTemplate(
    slug="static",
    name="Static site",
    description="No shared paths; npm ci && npm run build on the worker when the repository "
    "has a package.json, else the files as they are.",
    contents={
        "cache_paths": ["node_modules"],
        "excluded_files": ["node_modules/"],
        "build_commands": [
            _build(
                "if [ -f package.json ]; then npm ci && npm run build; fi",
                "Build the site when there is a package.json",
            ),
        ],
    },
)

BUILTIN_TEMPLATES: dict[str, BuiltinTemplate] = {
    template.slug: template for template in (LARAVEL, DJANGO, RAILS, NODE, STATIC)
}
