"""Helpers to run Slipway's own processes (serve, celery worker) in tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**overrides: str) -> dict[str, str]:
    """The environment of a fresh shell: no Slipway, database or broker variables."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SLIPWAY_", "DATABASE_URL", "REDIS_URL", "DJANGO_"))
    }
    env.update(overrides)
    return env


def manage(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def wait_for_http(url: str, process: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read() if process.stdout else ""
            raise AssertionError(f"process exited with {process.returncode}:\n{output}")
        try:
            httpx.get(url, timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within {timeout} s")


def stop(process: subprocess.Popen[str]) -> str:
    process.terminate()
    try:
        output, _ = process.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return output or ""


def start_serve(env: dict[str, str], log_path: Path) -> subprocess.Popen[str]:
    """`manage.py serve` with ``env``, its output in ``log_path``; returns once it answers."""
    bind = env["SLIPWAY_BIND"]
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "serve"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        wait_for_http(f"http://{bind}/healthz", process)
    except BaseException:
        stop(process)
        raise
    return process


def scaled_out_env(data_dir: Path, **extra_env: str) -> dict[str, str]:
    """The environment of a Slipway process on this test run's database and Redis.

    Scaled-out mode only: skipped without DATABASE_URL and REDIS_URL, a failure in CI (which
    always sets them, see .ci/run)."""
    import pytest
    from django.conf import settings
    from django.db import connection

    if not (settings.REDIS_URL and settings.DATABASE_URL):
        if os.environ.get("CI"):
            pytest.fail("CI must run with DATABASE_URL and REDIS_URL set (see .ci/run)")
        pytest.skip("scaled-out mode only: set DATABASE_URL and REDIS_URL (as .ci/run does)")
    database = connection.settings_dict
    # The process must use the test database that pytest-django created.
    url = f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{database['NAME']}"
    return {
        **os.environ,
        "DATABASE_URL": url,
        "SLIPWAY_DATA_DIR": str(data_dir),
        "SLIPWAY_ENCRYPTION_KEYS": ",".join(settings.ENCRYPTION_KEYS),
        "SLIPWAY_SECRET_KEY": settings.SECRET_KEY,
        **extra_env,
    }


def start_celery_worker(
    data_dir: Path,
    *,
    name: str,
    queues: str = "",
    log_path: Path | None = None,
    **extra_env: str,
) -> subprocess.Popen[str]:
    """A separate `celery -A deployer worker` on this test run's database and Redis, consuming
    ``queues`` (comma-separated; all of them by default). Its output is piped (read by
    ``stop``), or written to ``log_path`` for a worker that logs more than a pipe holds.
    Scaled-out mode only (see scaled_out_env)."""
    env = scaled_out_env(data_dir, **extra_env)
    output = log_path.open("w") if log_path is not None else subprocess.PIPE
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "celery", "-A", "deployer", "worker"),
            *("--pool=solo", "--concurrency=1", "--loglevel=INFO", "-n", f"{name}@%h"),
            *(("-Q", queues) if queues else ()),
        ],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT,
        text=True,
    )
