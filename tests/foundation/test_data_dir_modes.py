"""The data directory is 0700 and its keys and database 0600: at first start and at every start."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import clean_env, free_port, manage, start_serve, stop

SECRETS = ("secret_key", "encryption.key", "admin-password.txt", "slipway.sqlite3")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    # The processes below inherit it: what a careless shell or service manager would give.
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_it_creates_the_data_dir_private_and_repairs_it_at_start(tmp_path, loose_umask):
    data = tmp_path / "var"
    env = clean_env(SLIPWAY_DATA_DIR=str(data), SLIPWAY_BIND=f"127.0.0.1:{free_port()}")
    assert manage("migrate", "--noinput", env=env).returncode == 0
    assert manage("ensure_admin", env=env).returncode == 0

    assert mode(data) == 0o700
    for name in SECRETS:
        assert mode(data / name) == 0o600, name

    # A restore or a copy that loosened everything...
    data.chmod(0o755)
    for name in SECRETS:
        (data / name).chmod(0o644)
    # ...is repaired by the next start, as `make run` starts Slipway.
    server = start_serve(env, tmp_path / "serve.log")
    try:
        assert mode(data) == 0o700
        for name in SECRETS:
            assert mode(data / name) == 0o600, name
        for companion in data.glob("slipway.sqlite3-*"):
            assert mode(companion) == 0o600, companion.name
    finally:
        stop(server)
