"""The scaled-out stack of `make faults`, started without Docker, and a supervisor for it.

One Redis of its own (no persistence), a fresh PostgreSQL database on 127.0.0.1:5432 (user
postgres, trust auth; created here, dropped on exit), migrations, `manage.py serve`, WORKERS
`celery -A deployer worker` processes with the prefork pool (so there are pool children to
kill), and `celery -A deployer beat`. Each process runs in a session of its own, so a fault can
kill a worker with its pool children as the kernel's OOM killer or a lost machine would.

The supervisor restarts any of them that exits, a second after (as systemd's
``Restart=always``, ``RestartSec=1`` would), and records every exit it did not expect: the
campaign reports them beside the fault that was running.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg
from cryptography.fernet import Fernet
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
POSTGRES = "postgres://postgres@127.0.0.1:5432"
WORKERS = 3
#: Pool children per worker: more than one, so killing one leaves its siblings working.
WORKER_CONCURRENCY = 2
#: The queues every worker consumes: all of Slipway's (deployer/settings.py CELERY_TASK_QUEUES).
WORKER_QUEUES: tuple[str, ...] = (
    "deployments",
    "previews",
    "webhooks",
    "notifications",
    "housekeeping",
)
#: Short windows, so that a dead worker's deployment is reaped within seconds: a deployment
#: silent for HEARTBEAT_TIMEOUT s (the minimum) is failed by the reaper, which beat runs every
#: REAPER_INTERVAL s. DEPLOYMENT_TIME_LIMIT is Celery's soft limit (the minimum), and the
#: broker's visibility timeout is 1.5 times that.
HEARTBEAT_TIMEOUT = 10
REAPER_INTERVAL = 5
DEPLOYMENT_TIME_LIMIT = 60
RESTART_DELAY = 1.0


class StackError(Exception):
    """A part of the stack did not start; the message names it and shows its log's end."""


@dataclass(frozen=True)
class Exit:
    """A supervised process that exited when no fault meant it to."""

    name: str
    returncode: int | None
    at: float
    log_tail: str


@dataclass
class Supervised:
    """A process the supervisor keeps running."""

    name: str
    command: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    #: Held down on purpose (a fault stopped it): not restarted until released.
    held: bool = False
    #: The next exit is the fault's doing, not news.
    expect_exit: bool = False
    starts: int = 0
    ready: Callable[[], bool] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@dataclass
class Stack:
    """The processes and the database of one campaign. Use as a context manager."""

    base: Path
    database: str
    redis_port: int
    web_port: int
    env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, Supervised] = field(default_factory=dict)
    exits: list[Exit] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _supervisor: threading.Thread | None = None
    _database_created: bool = False

    @property
    def database_url(self) -> str:
        return f"{POSTGRES}/{self.database}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def environment(self, data_dir: Path) -> dict[str, str]:
        """What every process of the stack (and the campaign's own Django) runs with."""
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("SLIPWAY_", "DATABASE_URL", "REDIS_URL", "DJANGO_"))
        }
        env.update(
            DATABASE_URL=self.database_url,
            REDIS_URL=self.redis_url,
            SLIPWAY_DATA_DIR=str(data_dir),
            SLIPWAY_SECRET_KEY=secrets.token_urlsafe(50),
            SLIPWAY_ENCRYPTION_KEYS=Fernet.generate_key().decode(),
            SLIPWAY_ALLOW_LOCAL_REPOSITORIES="true",
            SLIPWAY_ALLOW_PRIVATE_SERVERS="true",
            SLIPWAY_HEARTBEAT_TIMEOUT=str(HEARTBEAT_TIMEOUT),
            SLIPWAY_REAPER_INTERVAL=str(REAPER_INTERVAL),
            SLIPWAY_DEPLOYMENT_TIME_LIMIT=str(DEPLOYMENT_TIME_LIMIT),
            SLIPWAY_BIND=f"127.0.0.1:{self.web_port}",
            SLIPWAY_LOG_LEVEL="INFO",
            PYTHONUNBUFFERED="1",
        )
        return env

    # -- starting and stopping

    def start(self, data_dir: Path) -> None:
        """Start everything and wait until the web answers; raises StackError."""
        self.env = self.environment(data_dir)
        logs = self.base / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        self._add(
            "redis",
            [
                *("redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--daemonize", "no"),
                *("--dir", str(self.base)),
            ],
            ready=self.redis_answers,
        )
        self._spawn(self.processes["redis"])
        self._wait("redis", self.redis_answers, 20)
        self._create_database()
        migrate = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput"],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        if migrate.returncode != 0:
            raise StackError(f"manage.py migrate failed:\n{migrate.stdout}\n{migrate.stderr}")
        self._add("web", [sys.executable, "manage.py", "serve"], ready=self.web_answers)
        for number in range(1, WORKERS + 1):
            self._add(
                f"worker{number}",
                [
                    *(sys.executable, "-m", "celery", "-A", "deployer", "worker"),
                    *("--pool=prefork", f"--concurrency={WORKER_CONCURRENCY}"),
                    *("-Q", ",".join(WORKER_QUEUES), "-n", f"worker{number}@faults"),
                    "--loglevel=INFO",
                ],
            )
        self._add(
            "beat",
            [
                *(sys.executable, "-m", "celery", "-A", "deployer", "beat", "--loglevel=INFO"),
                *("--schedule", str(self.base / "celerybeat-schedule")),
            ],
        )
        for name, supervised in self.processes.items():
            if name != "redis":
                self._spawn(supervised)
        self._wait("web", self.web_answers, 90)
        self._supervisor = threading.Thread(target=self._supervise, name="supervisor", daemon=True)
        self._supervisor.start()

    def stop(self) -> None:
        """Stop every process (their whole sessions) and drop the database."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=5)
        for supervised in reversed(list(self.processes.values())):
            self._kill_session(supervised, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for supervised in self.processes.values():
            process = supervised.process
            if process is None:
                continue
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._kill_session(supervised, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=5)
        if self._database_created:
            with (
                contextlib.suppress(psycopg.Error),
                psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as connection,
            ):
                connection.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(self.database)
                    )
                )

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _create_database(self) -> None:
        with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as connection:
            name = sql.Identifier(self.database)
            connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
            connection.execute(sql.SQL("CREATE DATABASE {}").format(name))
        self._database_created = True

    def _add(self, name: str, command: list[str], ready: Callable[[], bool] | None = None) -> None:
        self.processes[name] = Supervised(
            name=name, command=command, log_path=self.base / "logs" / f"{name}.log", ready=ready
        )

    def _spawn(self, supervised: Supervised) -> None:
        with supervised.log_path.open("ab") as log:
            log.write(f"\n=== start {supervised.starts + 1} at {time.ctime()}\n".encode())
            log.flush()
            supervised.process = subprocess.Popen(
                supervised.command,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        supervised.starts += 1

    def _wait(self, name: str, ready: Callable[[], bool], timeout: float) -> None:
        supervised = self.processes[name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            if not supervised.alive:
                break
            time.sleep(0.2)
        raise StackError(
            f"{name} did not start within {timeout:g} s; the end of {supervised.log_path}:\n"
            f"{_log_tail(supervised.log_path)}"
        )

    @staticmethod
    def _kill_session(supervised: Supervised, sig: int) -> None:
        if supervised.process is None or supervised.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(supervised.process.pid, sig)

    # -- the supervisor

    def _supervise(self) -> None:
        while not self._stopping.wait(0.25):
            for supervised in list(self.processes.values()):
                with self._lock:
                    process = supervised.process
                    if supervised.held or process is None or process.poll() is None:
                        continue
                    if not supervised.expect_exit:
                        self.exits.append(
                            Exit(
                                name=supervised.name,
                                returncode=process.returncode,
                                at=time.time(),
                                log_tail=_log_tail(supervised.log_path),
                            )
                        )
                    supervised.expect_exit = False
                    # What is left of its session (pool children, git) goes with it.
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(process.pid, signal.SIGKILL)
                time.sleep(RESTART_DELAY)
                with self._lock:
                    if not self._stopping.is_set() and not supervised.held:
                        self._spawn(supervised)

    def kill(self, name: str) -> None:
        """SIGKILL the process and its whole session (a worker with its pool children)."""
        supervised = self.processes[name]
        with self._lock:
            supervised.expect_exit = True
            self._kill_session(supervised, signal.SIGKILL)

    def hold_down(self, name: str, sig: int = signal.SIGTERM) -> None:
        """Stop the process and keep it down until ``release``."""
        supervised = self.processes[name]
        with self._lock:
            supervised.held = True
            supervised.expect_exit = True
            self._kill_session(supervised, sig)
        if supervised.process is not None:
            try:
                supervised.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._kill_session(supervised, signal.SIGKILL)
                supervised.process.wait(timeout=10)

    def release(self, name: str) -> None:
        supervised = self.processes[name]
        with self._lock:
            supervised.held = False
            supervised.expect_exit = False
            self._spawn(supervised)
        if supervised.ready is not None:
            self._wait(name, supervised.ready, 20)

    def take_exits(self) -> list[Exit]:
        with self._lock:
            exits, self.exits = self.exits, []
        return exits

    def workers(self) -> list[Supervised]:
        return [p for name, p in self.processes.items() if name.startswith("worker")]

    # -- probes

    def redis_answers(self) -> bool:
        try:
            result = subprocess.run(
                ["redis-cli", "-p", str(self.redis_port), "ping"],
                capture_output=True,
                text=True,
                timeout=2,
            )
        except subprocess.TimeoutExpired:
            return False
        return result.stdout.strip() == "PONG"

    def web_answers(self) -> bool:
        try:
            httpx.get(f"{self.web_url}/healthz", timeout=2)
        except httpx.HTTPError:
            return False
        return True

    def terminate_database_connections(self) -> int:
        """pg_terminate_backend every connection to the campaign's database (but this one)."""
        with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as connection:
            rows = connection.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (self.database,),
            ).fetchall()
        return sum(1 for (terminated,) in rows if terminated)
