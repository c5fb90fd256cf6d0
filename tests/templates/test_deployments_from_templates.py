"""Projects made from built-in templates deploy to a real sshd target.

Laravel: a Laravel-shaped repository, twice: storage/ and .env are linked from shared/ and
outlive the release, the commands run at their stages, and what the build made on the worker
is uploaded. php, composer and npm need not be on the machine: the template's build commands
are swapped for shell that makes what they would (vendor/, public/build/), and `php artisan`
for `sh artisan`, a script in the repository that records each call in storage/logs/.
Static: plain files, no package.json, go as they are."""

from __future__ import annotations

import pytest

from builds import services
from builds.models import Deployment, Status
from builds.tasks import run_deployment
from projects.services import project_register

pytestmark = pytest.mark.django_db(transaction=True)

ARTISAN = """\
#!/bin/sh
# Stands in for Laravel's artisan: records the call, does what the template needs of it.
echo "$*" >> storage/logs/artisan.log
case "$1" in
  storage:link) ln -sfn ../storage/app/public public/storage ;;
  config:cache) echo '<?php return [];' > bootstrap/cache/config.php ;;
esac
"""
LARAVEL_TREE = {
    "artisan": ARTISAN,
    "composer.json": '{"name": "acme/shop", "require": {"laravel/framework": "^11.0"}}\n',
    "composer.lock": "{}\n",
    "package.json": '{"private": true, "scripts": {"build": "vite build"}}\n',
    "app/Http/Controllers/Controller.php": "<?php\nnamespace App\\Http\\Controllers;\n",
    "bootstrap/app.php": "<?php\nreturn 'app';\n",
    "bootstrap/cache/.gitignore": "*\n!.gitignore\n",
    "config/app.php": "<?php\nreturn ['name' => env('APP_NAME', 'Shop')];\n",
    "public/index.php": "<?php\nrequire __DIR__.'/../bootstrap/app.php';\n",
    "resources/views/welcome.blade.php": "<h1>Shop</h1>\n",
    "routes/web.php": "<?php\n",
    "storage/app/public/.gitignore": "*\n!.gitignore\n",
    "storage/framework/views/.gitignore": "*\n!.gitignore\n",
    "storage/logs/.gitignore": "*\n!.gitignore\n",
}
# What composer install and npm ci && npm run build leave in the workspace.
FAKE_BUILDS = {
    "composer install": "mkdir -p vendor/composer && echo '<?php // autoload' > vendor/autoload.php",
    "npm ci && npm run build": "mkdir -p node_modules/vite public/build && "
    "echo 'x' > node_modules/vite/index.js && echo '{}' > public/build/manifest.json",
}


def _run(deployment: Deployment) -> Deployment:
    run_deployment.apply(args=(deployment.pk,))
    deployment.refresh_from_db()
    return deployment


def _stand_ins(project) -> None:
    for build in project.build_commands.all():
        [fake] = [text for start, text in FAKE_BUILDS.items() if build.command.startswith(start)]
        build.command = fake
        build.save(update_fields=["command"])
    for command in project.commands.all():
        assert command.command.startswith("php artisan "), command.command
        command.command = command.command.replace("php artisan", "sh artisan", 1)
        command.save(update_fields=["command"])


def test_a_laravel_project_from_the_template_deploys_with_its_shared_paths(
    git_repo_factory, sshd_target, server_factory, site_admin
):
    repo = git_repo_factory()
    repo.commit(LARAVEL_TREE, "Laravel app")
    project = project_register(
        owner=site_admin, name="Shop", repository_url=repo.url, template="laravel"
    )
    assert project.shared_paths == ["storage/", ".env"]
    _stand_ins(project)
    server = server_factory(project, sshd_target)

    first = _run(services.deployment_create(project=project, servers=[server], user=site_admin))
    assert first.status == Status.SUCCEEDED, first.error

    root = sshd_target.deploy_path
    current, shared = root / "current", root / "shared"
    assert (current / "storage").is_symlink() and (current / ".env").is_symlink()
    assert (current / "storage").resolve() == (shared / "storage").resolve()
    assert (current / ".env").resolve() == (shared / ".env").resolve()
    # Built on the worker, uploaded; node_modules left out.
    assert (current / "vendor/autoload.php").read_text() == "<?php // autoload\n"
    assert (current / "public/build/manifest.json").is_file()
    assert not (current / "node_modules").exists()
    # The commands ran in the release, before and after the switch, in order.
    log = shared / "storage/logs/artisan.log"
    assert log.read_text().splitlines() == [
        "storage:link",
        "config:cache",
        "route:cache",
        "view:cache",
        "migrate --force",
        "queue:restart",
    ]
    assert (current / "bootstrap/cache/config.php").is_file()
    assert (current / "public/storage").is_symlink()

    # What lives in shared/ outlives the release: the server's .env and the app's files.
    (shared / ".env").write_text("APP_KEY=base64:server-side-key\n")
    (shared / "storage/app/public/avatar.png").write_bytes(b"\x89PNG")
    repo.commit({"routes/web.php": "<?php\n// home\n"}, "Route")
    second = _run(services.deployment_create(project=project, servers=[server], user=site_admin))
    assert second.status == Status.SUCCEEDED, second.error
    assert second.changes["modified"] == ["routes/web.php"]
    assert (current / "routes/web.php").read_text() == "<?php\n// home\n"
    assert (current / ".env").read_text() == "APP_KEY=base64:server-side-key\n"
    assert (current / "storage/app/public/avatar.png").read_bytes() == b"\x89PNG"
    assert (current / "public/storage/avatar.png").read_bytes() == b"\x89PNG"
    assert log.read_text().splitlines()[6:] == [
        "storage:link",
        "config:cache",
        "route:cache",
        "view:cache",
        "migrate --force",
        "queue:restart",
    ]


def test_a_static_site_from_the_template_deploys_as_it_is_without_a_package_json(
    git_repo_factory, sshd_target, server_factory, site_admin
):
    repo = git_repo_factory()
    repo.commit({"index.html": "<h1>Hello</h1>\n", "css/site.css": "h1 { color: red }\n"})
    project = project_register(
        owner=site_admin, name="Site", repository_url=repo.url, template="static"
    )
    server = server_factory(project, sshd_target)
    deployment = _run(services.deployment_create(project=project, servers=[server]))
    assert deployment.status == Status.SUCCEEDED, deployment.error
    current = sshd_target.deploy_path / "current"
    assert (current / "index.html").read_text() == "<h1>Hello</h1>\n"
    assert (current / "css/site.css").is_file()
    assert not any(path.is_symlink() for path in current.rglob("*"))
