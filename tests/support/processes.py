"""Helpers to run Slipway's own processes (serve, celery worker) in tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
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
    return _stopped(process)


def stop_all(processes: Iterable[subprocess.Popen[str]]) -> list[str]:
    """Stop every process in parallel: each is sent SIGTERM first, then each is waited for
    (a Celery worker or a web process takes a second or two to shut down)."""
    processes = list(processes)
    for process in processes:
        process.terminate()
    return [_stopped(process) for process in processes]


def _stopped(process: subprocess.Popen[str]) -> str:
    """The output of a process sent SIGTERM, once it exited (killed after 15 s)."""
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


def scaled_out_env(data_dir: Path, **extra_env: str) -> dict[str, str]:
    """The environment of a separate Slipway process (web, worker, manage.py) on this test
    run's database (the test database pytest-django created), with this run's keys.

    Scaled-out mode only (require_scaled_out); ``extra_env`` may point REDIS_URL elsewhere."""
    from django.conf import settings

    require_scaled_out()
    return {
        **os.environ,
        # The worker must use the test database that pytest-django created.
        "DATABASE_URL": shared_test_database_url(),
        "SLIPWAY_DATA_DIR": str(data_dir),
        "SLIPWAY_ENCRYPTION_KEYS": ",".join(settings.ENCRYPTION_KEYS),
        "SLIPWAY_SECRET_KEY": settings.SECRET_KEY,
        **extra_env,
    }


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
    if redis_url:
        extra_env = {"REDIS_URL": redis_url, **extra_env}
    env = scaled_out_env(data_dir, **extra_env)
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
    """A redis-server of the test's own on a free loopback port, without persistence (as a
    restarted cache-like Redis: it forgets what it held). Never the machine's Redis."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.process: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import pytest

        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is missing: apt-get install redis-server", pytrace=False)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                "redis-server",
                *("--port", str(self.port), "--bind", "127.0.0.1", "--save", ""),
                *("--appendonly", "no", "--dir", str(self.directory)),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            assert self.process.poll() is None, "redis-server exited"
            time.sleep(0.1)
        raise AssertionError(f"redis-server on port {self.port} did not answer")

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


class Web:
    """`manage.py serve` on the test database and the test's own Redis."""

    def __init__(self, directory: Path, redis_url: str) -> None:
        bind = f"127.0.0.1:{free_port()}"
        self.url = f"http://{bind}"
        self.log = directory / "web.log"
        env = scaled_out_env(directory / "web", SLIPWAY_BIND=bind, REDIS_URL=redis_url)
        self.process: subprocess.Popen[str] | None = start_serve(env, self.log)

    def stop(self) -> str:
        """Stop it (its database sessions end, flushing their statistics); its log."""
        if self.process is not None:
            stop(self.process)
            self.process = None
        return self.log.read_text()


class ReadyOutput:
    """Reads a worker's output as it comes (a full pipe would stop the worker); ``ready`` is
    set once Celery says the worker consumes."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.lines.append(line)
            if " ready." in line:
                self.ready.set()

    def text(self) -> str:
        return "".join(self.lines)


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
