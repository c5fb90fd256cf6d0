"""Every secret the project holds is masked in the stored log, after a real deployment that
prints each of them: whole, split across output chunks, across the cut of a long line, and in
base64."""

from __future__ import annotations

import base64
import shlex

import pytest

from builds import services
from builds.engine.masking import Masker, config_file_secrets
from builds.models import LogLine, Status
from builds.tasks import run_deployment
from projects.models import Command, ConfigFile, EnvironmentVariable, Notification
from projects.secrets import project_secrets
from servers.models import Server

pytestmark = pytest.mark.django_db(transaction=True)

CONFIG_BODY = (
    "APP_ENV=production\n"
    "DB_PASSWORD=cfg-Pa55word-7731\n"
    "API_URL=https://%hostname%/v1?key=cfgkey-90817263\n"
)


def _stored(deployment) -> list[str]:
    return list(
        LogLine.objects.filter(deployment=deployment).order_by("seq").values_list("text", flat=True)
    )


def test_it_masks_every_secret_of_the_project_in_the_stored_log(
    git_repo_factory, sshd_target, project_factory, server_factory, alice
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"})
    project = project_factory(repo)
    project.repository_token = "repo-token-5551212"
    project.save()
    server = server_factory(project, sshd_target, password="srv-password-1234")
    Server.objects.create(
        project=project,
        name="elsewhere",
        hostname="192.0.2.10",
        username="deploy",
        deploy_path="/srv/app",
        password="other-server-pw-4321",
    )
    EnvironmentVariable.objects.create(
        project=project, name="API_TOKEN", value="env-secret-abcdef", secret=True
    )
    Notification.objects.create(
        project=project,
        kind="webhook",
        url="https://hooks.example.com/services/T000/B000/hookpathtoken77",
        secret="notify-secret-2468",
    )
    ConfigFile.objects.create(project=project, path="config/app.env", body=CONFIG_BODY)
    secrets = {
        "repository token": project.repository_token,
        "webhook secret": project.webhook_secret,
        "server password": "srv-password-1234",
        "another server's password": "other-server-pw-4321",
        "secret variable": "env-secret-abcdef",
        "notification secret": "notify-secret-2468",
        "notification URL token": "hookpathtoken77",
        "config file value": "cfg-Pa55word-7731",
        "config file value beside a variable": "cfgkey-90817263",
    }
    echo_each = "; ".join(f"echo {shlex.quote(value)}" for value in secrets.values())
    env_secret = "env-secret-abcdef"
    commands = [
        "cat config/app.env",
        echo_each,
        # Split across two writes of the remote command: two SSH packets.
        f"printf %s {env_secret[:6]}; sleep 0.5; printf '%s\\n' {env_secret[6:]}",
        # In a 160 kB line, across the point where the stored line is cut (64 KiB).
        f"head -c 65530 /dev/zero | tr '\\0' a; printf %s {env_secret}; "
        "head -c 100000 /dev/zero | tr '\\0' b; echo",
        f"printf %s {env_secret} | base64; printf %s x{env_secret} | base64",
        "printf %s cfg-Pa55word-7731 | base64",
    ]
    for position, command in enumerate(commands):
        Command.objects.create(
            project=project, command=command, stage="after_switch", position=position
        )

    deployment = services.deployment_create(project=project, servers=[server], user=alice)
    run_deployment.apply(args=(deployment.pk,))
    deployment.refresh_from_db()

    assert deployment.status == Status.SUCCEEDED, deployment.error
    lines = _stored(deployment)
    joined_lines, joined_pieces = "\n".join(lines), "".join(lines)
    for what, value in secrets.items():
        assert value not in joined_lines, what
        assert value not in joined_pieces, what
    for encoded in (
        base64.b64encode(env_secret.encode()).decode(),
        base64.b64encode(b"x" + env_secret.encode()).decode(),
    ):
        assert encoded[2:-2] not in joined_lines
    assert "DB_PASSWORD=cfg-Pa55word-7731" not in joined_lines
    # The long line is stored up to 64 KiB, cut before the secret lying across that limit.
    assert "a" * 65530 + f"… [line cut: {len(env_secret) + 100000} bytes]" in lines
    assert joined_lines.count("********") >= len(secrets) + 4


def test_it_counts_tokens_in_repository_urls_and_every_server_of_the_project(
    git_repo_factory, project_factory
):
    project = project_factory(git_repo_factory())
    project.repository_url = "https://deploy:ghp_url%2Dtoken99@git.example.com/shop.git"
    project.save()
    mask = Masker(project_secrets(project, []))
    assert mask("token ghp_url-token99 and ghp_url%2Dtoken99") == "token ******** and ********"


def test_config_file_secrets_skip_numbers_and_variables_but_keep_lines_and_values():
    found = config_file_secrets(
        'PORT=8080\nDEBUG=true\nSECRET_KEY="s3cr3t-value"\nURL=http://%hostname%:8080/x/y\n'
        "'password' => 'php-secret',\n"
    )
    assert "s3cr3t-value" in found and "php-secret" in found
    assert 'SECRET_KEY="s3cr3t-value"' in found
    assert "8080" not in found and "true" not in found
    assert not any("%hostname%" in piece for piece in found)


def test_a_percent_name_that_is_not_slipways_variable_is_masked_as_written():
    # Nothing replaces %cfgpasssecret%: the file holds it as written, a secret like the rest.
    mask = Masker(config_file_secrets("PASS=%cfgpasssecret%\nDIR=%release_path%/app\n"))
    assert mask("PASS=%cfgpasssecret%") == "********"
    assert mask("value %cfgpasssecret%") == "value ********"
    assert mask("in /srv/shop/releases/7 now") == "in /srv/shop/releases/7 now"
