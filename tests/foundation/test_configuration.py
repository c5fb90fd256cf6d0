"""A bad value in the environment fails at start, naming the variable."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.processes import clean_env, manage


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SLIPWAY_DEBUG", "maybe"),
        ("SLIPWAY_HEARTBEAT_TIMEOUT", "soon"),
        ("SLIPWAY_REAPER_INTERVAL", "1"),
        ("SLIPWAY_WORKER_CONCURRENCY", "0"),
        ("DATABASE_URL", "mysql://db/slipway"),
        ("REDIS_URL", "http://127.0.0.1:6379"),
        ("SLIPWAY_LOG_LEVEL", "LOUD"),
        ("SLIPWAY_BUILD_SANDBOX", "sometimes"),
        ("SLIPWAY_BUILD_READONLY_PATHS", "/"),
        ("SLIPWAY_BUILD_READONLY_PATHS", "relative/tools"),
        ("SLIPWAY_BUILD_MAX_PROCESSES", "1"),
        ("SLIPWAY_BUILD_HOST", "https://builder/srv"),
        ("SLIPWAY_BUILD_HOST", "ssh://builder/srv"),
        ("SLIPWAY_PROCESS_ROLE", "cook"),
        ("SLIPWAY_DB_POOL_SIZE", "0"),
        ("SLIPWAY_WEB_WORKERS", "many"),
        # The embedded worker lives in the one web process.
        ("SLIPWAY_WEB_WORKERS", "2"),
    ],
)
def test_it_names_the_variable_that_holds_a_bad_value(tmp_path, variable, value):
    env = clean_env(SLIPWAY_DATA_DIR=str(tmp_path), **{variable: value})
    result = manage("check", env=env)
    assert result.returncode != 0
    assert variable in result.stderr
    assert "ConfigurationError" in result.stderr


def test_it_requires_keys_when_scaled_out(tmp_path):
    env = clean_env(
        SLIPWAY_DATA_DIR=str(tmp_path),
        REDIS_URL="redis://127.0.0.1:6379/0",
        SLIPWAY_SECRET_KEY="x" * 50,
    )
    result = manage("check", env=env)
    assert result.returncode != 0
    assert "SLIPWAY_ENCRYPTION_KEYS" in result.stderr


def test_it_documents_every_variable_in_the_example_file():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    example = (root / ".env.example").read_text()
    settings_source = (root / "deployer" / "settings.py").read_text()
    import re

    used = set(re.findall(r'"((?:SLIPWAY_|DATABASE_|REDIS_)[A-Z_]+)"', settings_source))
    assert used, "settings read no variables?"
    missing = sorted(name for name in used if name not in example)
    assert missing == []


def test_the_data_directory_is_never_given_to_builds(tmp_path):
    env = clean_env(
        SLIPWAY_DATA_DIR=str(tmp_path), SLIPWAY_BUILD_READONLY_PATHS=f"/opt,{tmp_path}/builds"
    )
    result = manage("check", env=env)
    assert result.returncode != 0
    assert "SLIPWAY_BUILD_READONLY_PATHS" in result.stderr
    assert "overlaps Slipway's data directory" in result.stderr


def _database_settings(tmp_path, role: str) -> dict[str, Any]:
    import json

    env = clean_env(
        SLIPWAY_DATA_DIR=str(tmp_path),
        DATABASE_URL="postgres://slipway@db.invalid:5432/slipway",
        REDIS_URL="redis://redis.invalid:6379/0",
        SLIPWAY_SECRET_KEY="x" * 50,
        SLIPWAY_ENCRYPTION_KEYS="p5QCyJ7jmK2m1tyx9Y1sS3wt9tyCzGxkGTrXcqXkK0c=",
        SLIPWAY_PROCESS_ROLE=role,
        SLIPWAY_DB_POOL_SIZE="5",
    )
    result = manage(
        "shell",
        "-c",
        "import json; from django.conf import settings; "
        "print(json.dumps(settings.DATABASES['default'], default=str))",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_web_process_borrows_from_a_bounded_pool_and_names_its_connections(tmp_path):
    database = _database_settings(tmp_path, "web")
    assert database["CONN_MAX_AGE"] == 0
    assert database["OPTIONS"]["pool"]["max_size"] == 5
    assert database["OPTIONS"]["application_name"] == "slipway-web"


def test_a_worker_keeps_one_persistent_connection_and_no_pool(tmp_path):
    database = _database_settings(tmp_path, "worker")
    assert database["CONN_MAX_AGE"] == 60
    assert "pool" not in database["OPTIONS"]
    assert database["OPTIONS"]["application_name"] == "slipway-worker"


@pytest.mark.parametrize(
    ("argv", "role"),
    [
        (["manage.py", "serve"], "web"),
        (["/venv/bin/uvicorn", "deployer.asgi:application"], "web"),
        (["/venv/bin/celery", "-A", "deployer", "worker", "-Q", "webhooks"], "worker"),
        (
            ["/venv/lib/python3.11/site-packages/celery/__main__.py", "-A", "deployer", "worker"],
            "worker",
        ),
        (["/venv/bin/celery", "-A", "deployer", "beat"], "beat"),
        (["manage.py", "migrate"], "manage"),
        (["/venv/bin/pytest", "tests/"], "manage"),
    ],
)
def test_the_process_role_follows_the_command(argv, role):
    from deployer.settings import _process_role

    assert _process_role(argv) == role
