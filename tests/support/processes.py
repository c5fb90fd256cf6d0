"""Helpers to run Slipway's own processes (serve, celery worker) in tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

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


def require_scaled_out() -> None:
    """Skip a test that needs PostgreSQL and Redis when they are not set; fail it in CI, which
    always sets them (see .ci/run)."""
    import pytest
    from django.conf import settings

    if not (settings.REDIS_URL and settings.DATABASE_URL):
        if os.environ.get("CI"):
            pytest.fail("CI must run with DATABASE_URL and REDIS_URL set (see .ci/run)")
        pytest.skip("scaled-out mode only: set DATABASE_URL and REDIS_URL (as .ci/run does)")


def shared_test_database_url() -> str:
    """The URL of the test database that pytest-django created, for processes to share."""
    from django.db import connection

    database = connection.settings_dict
    user = quote(database["USER"], safe="")
    if database.get("PASSWORD"):
        user += ":" + quote(database["PASSWORD"], safe="")
    return f"postgres://{user}@{database['HOST']}:{database['PORT']}/{database['NAME']}"


def start_celery_worker(
    data_dir: Path,
    *,
    name: str,
    pool: str = "solo",
    concurrency: int = 1,
    queues: str = "",
    redis_url: str = "",
    log_path: Path | None = None,
    **extra_env: str,
) -> subprocess.Popen[str]:
    """A separate `celery -A deployer worker` on this test run's database and Redis.

    ``pool`` is Celery's (solo, prefork as in production, threads); ``queues`` a -Q list
    (default: every queue); ``redis_url`` a broker of the test's own (RedisServer) instead of
    REDIS_URL; ``log_path`` takes the output instead of a pipe (a pipe nobody reads fills up
    and stops a chatty worker). Scaled-out mode only: skipped without DATABASE_URL and
    REDIS_URL, a failure in CI (which always sets them, see .ci/run)."""
    from django.conf import settings

    require_scaled_out()
    env = {
        **os.environ,
        # The worker must use the test database that pytest-django created.
        "DATABASE_URL": shared_test_database_url(),
        "SLIPWAY_DATA_DIR": str(data_dir),
        "SLIPWAY_ENCRYPTION_KEYS": ",".join(settings.ENCRYPTION_KEYS),
        "SLIPWAY_SECRET_KEY": settings.SECRET_KEY,
        **({"REDIS_URL": redis_url} if redis_url else {}),
        **extra_env,
    }
    command = [
        *(sys.executable, "-m", "celery", "-A", "deployer", "worker"),
        *(f"--pool={pool}", f"--concurrency={concurrency}", "--loglevel=INFO"),
        *("-n", f"{name}@%h"),
        *(("-Q", queues) if queues else ()),
    ]
    if log_path is None:
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    with log_path.open("a") as log:
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )


class RedisServer:
    """A `redis-server` of the test's own on a free loopback port, to restart at will (never
    the machine's Redis, which other tests and people share). No persistence, like a Redis
    whose disk was lost: a restart forgets every message it held."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        self.directory.mkdir(parents=True, exist_ok=True)
        with (self.directory / "redis.log").open("a") as log:
            self.process = subprocess.Popen(
                [
                    *("redis-server", "--port", str(self.port), "--bind", "127.0.0.1"),
                    *("--save", "", "--appendonly", "no", "--dir", str(self.directory)),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                redis.Redis.from_url(self.url, socket_timeout=1).ping()
                return
            except redis.ConnectionError:
                assert self.process.poll() is None, (self.directory / "redis.log").read_text()
                time.sleep(0.05)
        raise AssertionError(f"redis-server on port {self.port} did not answer")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=15)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (a prefork worker's pool processes), from /proc."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # The command name (field 2) is in parentheses and may hold spaces: split after it.
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            children.append(int(entry.name))
    return sorted(children)
