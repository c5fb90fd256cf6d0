"""Templates fixtures: Alice (a site admin, so she creates projects) and her project with a
secret of every kind Slipway keeps; Bob on her team as a viewer; Charlie no member."""

from __future__ import annotations

import pytest

from projects.models import (
    BuildCommand,
    Command,
    ConfigFile,
    EnvironmentVariable,
    ExcludedFile,
    Membership,
    Role,
)
from servers.models import HealthCheck, Server
from tests.api.conftest import client_for

SECRET_VALUES = (
    "tok-variable-9f8e7d6c5b4a",
    "ghp_repository_token_123456",
    "db-password-in-config-file",
    "base64:YXBwLWtleS1zZWNyZXQtMTIzNDU2",
    "health-check-password-77",
    "server-password-secret-55",
)


@pytest.fixture
def alice_api(alice):
    return client_for(alice)


@pytest.fixture
def bob_api(bob):
    return client_for(bob)


@pytest.fixture
def charlie_api(charlie):
    return client_for(charlie)


@pytest.fixture
def repo(git_repo_factory):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    return repo


@pytest.fixture
def configured(site_admin, repo, project_factory, bob):
    """Alice's project with settings of every kind and secrets wherever Slipway keeps them."""
    project = project_factory(
        repo,
        name="Shop",
        shared_paths=["storage/", ".env"],
        cache_paths=["vendor"],
        generated_paths=["/public/storage"],
        build_network=False,
        repository_token=SECRET_VALUES[1],
    )
    Membership.objects.create(project=project, user=bob, role=Role.VIEWER)
    server = Server.objects.create(
        project=project,
        name="web1",
        hostname="127.0.0.1",
        port=9,
        username="deploy",
        deploy_path="/srv/shop",
        auth_method="password",
        password=SECRET_VALUES[5],
    )
    BuildCommand.objects.create(
        project=project, position=1, command="composer install", watch_globs=["composer.lock"]
    )
    BuildCommand.objects.create(project=project, position=2, command="npm ci", timeout_seconds=60)
    migrate = Command.objects.create(
        project=project,
        position=1,
        command="php artisan migrate --force",
        stage="after_switch",
        run_on="not_first",
        run_once=True,
        halt_on_error=False,
    )
    migrate.servers.set([server])
    Command.objects.create(
        project=project, position=1, command="php artisan config:cache", stage="before_switch"
    )
    ExcludedFile.objects.create(project=project, pattern="/tests/")
    EnvironmentVariable.objects.create(
        project=project, name="API_TOKEN", value=SECRET_VALUES[0], secret=True
    )
    EnvironmentVariable.objects.create(
        project=project, name="APP_ENV", value="production", build=False
    )
    config = ConfigFile.objects.create(
        project=project,
        path="config/app.env",
        body=f"APP_KEY={SECRET_VALUES[3]}\nDB_PASSWORD={SECRET_VALUES[2]}\nAPP_DIR=%release_path%\n",
        mode="640",
        group="www-data",
    )
    config.servers.set([server])
    HealthCheck.objects.create(
        project=project,
        kind="http",
        url=f"https://monitor:{SECRET_VALUES[4]}@%hostname%/up",
        body_contains="ok",
        retries=2,
    )
    return project
