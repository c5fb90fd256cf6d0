"""Secrets are encrypted in the database, under a key list that can be rotated."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.db import connection

from deployer import crypto
from deployer.crypto import DecryptionError, verify_canary
from projects.models import EnvironmentVariable
from projects.services import project_create
from servers.models import AuthMethod, Server

pytestmark = pytest.mark.django_db

SERVER_PASSWORD = "hunter2-server-password"
SERVER_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAA-server-key\n-----END OPENSSH PRIVATE KEY-----\n"
SECRET_VALUE = "s3cr3t-api-key-value"


def _raw_rows(table: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608
        return repr(cursor.fetchall())


@pytest.fixture
def project(alice):
    project = project_create(
        owner=alice, name="Shop", repository_url="https://git.example/shop.git"
    )
    Server.objects.create(
        project=project,
        name="web1",
        hostname="127.0.0.1",
        username="deploy",
        deploy_path="/srv/shop",
        auth_method=AuthMethod.PASSWORD,
        password=SERVER_PASSWORD,
        private_key=SERVER_KEY,
    )
    EnvironmentVariable.objects.create(
        project=project, name="API_KEY", value=SECRET_VALUE, secret=True
    )
    return project


def test_it_keeps_no_plaintext_secret_in_the_raw_rows(project):
    projects_raw = _raw_rows("projects_project")
    servers_raw = _raw_rows("servers_server")
    env_raw = _raw_rows("projects_environmentvariable")
    assert "PRIVATE KEY" not in projects_raw
    assert project.webhook_secret not in projects_raw
    assert SERVER_PASSWORD not in servers_raw
    assert "server-key" not in servers_raw
    assert SECRET_VALUE not in env_raw
    # ...while the models read them back as plain text.
    server = Server.objects.get(name="web1")
    assert server.password == SERVER_PASSWORD
    assert server.private_key == SERVER_KEY
    assert EnvironmentVariable.objects.get().value == SECRET_VALUE
    # The public half is public: stored as is.
    assert project.public_key.startswith("ssh-ed25519 ")
    assert project.public_key in projects_raw


def test_it_rotates_every_secret_to_a_new_first_key(project, settings):
    old_key = settings.ENCRYPTION_KEYS[0]
    new_key = Fernet.generate_key().decode()
    before = _raw_rows("servers_server")
    settings.ENCRYPTION_KEYS = [new_key, old_key]
    crypto.reset_keys()
    try:
        call_command("rotate_encryption_keys")
        assert _raw_rows("servers_server") != before
        # Only the new key is needed from now on.
        settings.ENCRYPTION_KEYS = [new_key]
        crypto.reset_keys()
        assert Server.objects.get(name="web1").password == SERVER_PASSWORD
        assert EnvironmentVariable.objects.get().value == SECRET_VALUE
        verify_canary()
    finally:
        crypto.reset_keys()


def test_it_fails_loudly_at_start_with_a_wrong_key(project, settings):
    verify_canary()
    settings.ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    crypto.reset_keys()
    try:
        with pytest.raises(DecryptionError, match="SLIPWAY_ENCRYPTION_KEYS"):
            verify_canary()
    finally:
        crypto.reset_keys()


def test_it_names_a_malformed_key(settings):
    settings.ENCRYPTION_KEYS = ["not-a-key"]
    crypto.reset_keys()
    try:
        with pytest.raises(DecryptionError, match="key 1 is not a valid Fernet key"):
            crypto.encrypt("x")
    finally:
        crypto.reset_keys()
