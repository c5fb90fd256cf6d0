"""A bad value in the environment fails at start, naming the variable."""

from __future__ import annotations

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
