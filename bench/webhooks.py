"""`make bench-webhooks`: signed webhook deliveries against the scaled-out stack.

It starts a stack of its own: a PostgreSQL database (created on the server that
SLIPWAY_BENCH_POSTGRES names, dropped at the end), a redis-server on a free port, `manage.py
serve` and one `celery -A deployer worker` on the `webhooks` queue. A project with three
servers (auto-deploy on main, never connected to: no deployment worker runs) receives
``--count`` signed GitHub pushes from ``--senders`` concurrent senders, each a new head of
main, so every delivery is recorded, processed and supersedes the previous deployment.

It prints deliveries/s (answers over the sending time), the answer latency's p50/p95/p99, how
long the worker took to process everything after the last answer, and lost: deliveries sent
minus deliveries recorded. docs/benchmarks-webhooks.md has the last run's figures.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import psycopg
from cryptography.fernet import Fernet

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.processes import free_port, start_serve, stop  # noqa: E402

DEFAULT_POSTGRES = "postgres://postgres@127.0.0.1:5432/postgres"

SETUP = """
import json
from django.contrib.auth.models import User
from projects.services import project_create
from servers.models import Server
owner = User.objects.create_user("bench", password="bench-password-1234")
project = project_create(owner=owner, name="Bench", repository_url="https://git.example.com/b.git")
for n in range(3):
    Server.objects.create(project=project, name=f"web{n}", hostname="127.0.0.1", port=9,
        username="deploy", deploy_path=f"/srv/web{n}", auto_deploy=True,
        host_key_fingerprint="SHA256:" + "k" * 43)
print(json.dumps({"path": project.webhook_path, "secret": project.webhook_secret}))
"""


def _push(n: int) -> bytes:
    # A fake 40-hex-digit commit SHA per delivery (GitHub sends SHA-1 ids).
    head = hashlib.sha256(f"bench-{n}".encode()).hexdigest()[:40]
    return json.dumps(
        {
            "ref": "refs/heads/main",
            "before": "0" * 40,
            "after": head,
            "repository": {"full_name": "acme/bench"},
            "head_commit": {"id": head, "message": f"Change {n}"},
            "commits": [{"id": head, "message": f"Change {n}"}],
        }
    ).encode()


def _signed(body: bytes, secret: str) -> dict[str, str]:
    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": "push",
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": f"sha256={signature}",
    }


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and its live children, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=3000, help="deliveries to send")
    parser.add_argument("--senders", type=int, default=8, help="concurrent senders")
    options = parser.parse_args()

    admin_url = os.environ.get("SLIPWAY_BENCH_POSTGRES", DEFAULT_POSTGRES)
    database = f"slipway_bench_{os.getpid()}"
    work = Path(tempfile.mkdtemp(prefix="slipway-bench-webhooks-"))
    redis_port = free_port()
    processes: list[subprocess.Popen[str]] = []
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    database_url = admin_url.rsplit("/", 1)[0] + f"/{database}"
    try:
        redis = subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            text=True,
        )
        processes.append(redis)
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("SLIPWAY_", "DATABASE_URL", "REDIS_URL", "DJANGO_"))
        }
        env.update(
            DATABASE_URL=database_url,
            REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
            SLIPWAY_DATA_DIR=str(work / "data"),
            SLIPWAY_SECRET_KEY=secrets.token_urlsafe(32),
            SLIPWAY_ENCRYPTION_KEYS=Fernet.generate_key().decode(),
            SLIPWAY_BIND=f"127.0.0.1:{free_port()}",
            SLIPWAY_LOG_LEVEL="WARNING",
        )
        for name in ("SLIPWAY_WEB_WORKERS", "SLIPWAY_DB_POOL_SIZE"):
            if name in os.environ:
                env[name] = os.environ[name]
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
        setup = subprocess.run(
            [sys.executable, "manage.py", "shell", "-c", SETUP],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        project = json.loads(setup.stdout.strip().splitlines()[-1])
        web = start_serve(env, work / "serve.log")
        processes.append(web)
        worker = subprocess.Popen(
            [
                *(sys.executable, "-m", "celery", "-A", "deployer", "worker", "-Q", "webhooks"),
                *("--pool=solo", "--loglevel=WARNING", "-n", "bench@%h"),
            ],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=(work / "worker.log").open("w"),
            stderr=subprocess.STDOUT,
            text=True,
        )
        processes.append(worker)

        url = f"http://{env['SLIPWAY_BIND']}{project['path']}"
        requests = [_push(n) for n in range(options.count)]
        signed = [(body, _signed(body, project["secret"])) for body in requests]
        latencies: list[float] = []
        failures: list[str] = []
        delivery_ids: list[int] = []
        lock = threading.Lock()
        next_index = iter(range(len(signed)))

        def sender() -> None:
            with httpx.Client(timeout=30) as client:
                while True:
                    with lock:
                        index = next(next_index, None)
                    if index is None:
                        return
                    body, headers = signed[index]
                    started = time.perf_counter()
                    try:
                        response = client.post(url, content=body, headers=headers)
                    except httpx.HTTPError as error:
                        with lock:
                            failures.append(type(error).__name__)
                        continue
                    elapsed = time.perf_counter() - started
                    with lock:
                        latencies.append(elapsed)
                        if response.status_code == 202:
                            delivery_ids.append(response.json()["delivery"])
                        else:
                            failures.append(f"HTTP {response.status_code}")

        # Warm up: the first requests pay for imports and the pool's first connections.
        with httpx.Client(timeout=30) as client:
            for n in range(20):
                body = _push(options.count + n)
                client.post(url, content=body, headers=_signed(body, project["secret"]))

        threads = [threading.Thread(target=sender) for _ in range(options.senders)]
        web_cpu, worker_cpu = _cpu_seconds(web.pid), _cpu_seconds(worker.pid)
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        sending = time.perf_counter() - started
        web_cpu = _cpu_seconds(web.pid) - web_cpu

        with psycopg.connect(database_url) as connection:
            recorded = connection.execute(
                "SELECT count(*) FROM builds_webhookdelivery WHERE id = ANY(%s)", [delivery_ids]
            ).fetchone()
            deadline = time.monotonic() + 600
            waiting = 1
            while waiting and time.monotonic() < deadline:
                row = connection.execute(
                    "SELECT count(*) FROM builds_webhookdelivery WHERE outcome = 'accepted'"
                ).fetchone()
                waiting = row[0] if row else 0
                connection.commit()
                if waiting:
                    time.sleep(0.2)
            drained = time.perf_counter() - started - sending
            worker_cpu = _cpu_seconds(worker.pid) - worker_cpu
            web_connections = connection.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                "AND application_name = 'slipway-web'",
                [database],
            ).fetchone()
        recorded_count = recorded[0] if recorded else 0
        lost = options.count - recorded_count
        print(f"deliveries:        {options.count} from {options.senders} concurrent senders")
        print(f"web workers:       {env.get('SLIPWAY_WEB_WORKERS', '1')}")
        print(f"deliveries/s:      {len(latencies) / sending:.0f}")
        print(
            "latency (ms):      "
            f"p50 {1000 * _percentile(latencies, 0.50):.1f}  "
            f"p95 {1000 * _percentile(latencies, 0.95):.1f}  "
            f"p99 {1000 * _percentile(latencies, 0.99):.1f}"
        )
        print(f"answered 202:      {len(delivery_ids)}  errors: {len(failures)}")
        print(f"lost:              {lost}")
        print(
            f"processed:         all within {drained:.1f} s after the last answer"
            if not waiting
            else f"processed:         {waiting} still waiting after 600 s"
        )
        print(f"web connections:   {web_connections[0] if web_connections else 0} at the end")
        print(
            f"CPU per delivery:  web {1000 * web_cpu / len(latencies):.1f} ms, "
            f"worker {1000 * worker_cpu / len(latencies):.1f} ms"
        )
        print(f"load average:      {os.getloadavg()[0]:.1f} (other processes share the cores)")
        if failures:
            print("first errors:", ", ".join(failures[:5]))
        return 0 if lost == 0 and not failures and not waiting else 1
    finally:
        for process in reversed(processes):
            stop(process)
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
