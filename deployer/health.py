"""What /healthz reports: the database, the broker and the workers consuming each queue.

    {"status": "ok" | "degraded" | "down",
     "database": {"ok": true},
     "broker": {"ok": true, "kind": "redis" | "in-memory"},
     "workers": {"count": 2, "queues": {"deployments": 2, "housekeeping": 1, ...}},
     "problems": ["no worker consumes the deployments queue", ...]}

"down" (HTTP 503) when the database does not answer: nothing works without it. "degraded"
(HTTP 200: the web process itself is fine, and a load balancer should keep sending requests,
which are recorded and wait) when the broker is away or no live worker consumes the
``deployments`` queue: deployments are accepted but wait. Nothing in it names a host, a URL
or a password; errors are reduced to their kind.

Bounded: the broker is pinged with a 1 s timeout and the workers asked with Celery's
``inspect().active_queues()`` and a 1 s timeout (answers from live workers only), and the
broker and worker part is kept for CACHE_SECONDS per process, so a monitor polling every
second costs the broker one round of questions every few seconds.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import redis
from django.conf import settings
from django.db import DatabaseError, connection

from deployer import embedded
from deployer.celery import app

#: Seconds to wait for the broker's ping and for the workers' answers.
TIMEOUT_SECONDS = 1.0
#: Seconds one broker and workers reading is reused.
CACHE_SECONDS = 5.0
#: The queue whose workers a deployment needs (deployer/settings.py routes to it).
DEPLOYMENTS_QUEUE = "deployments"
#: Every queue of deployer/settings.py's CELERY_TASK_QUEUES, each of which needs a consumer.
ALL_QUEUES = tuple(queue.name for queue in settings.CELERY_TASK_QUEUES)


@dataclass(frozen=True)
class Cluster:
    """The broker and the live workers, as read at one moment."""

    broker_ok: bool
    broker_kind: str
    broker_error: str = ""
    #: Worker names (``celery@host``) with the queues each consumes.
    workers: dict[str, list[str]] = field(default_factory=dict)

    def queues(self) -> dict[str, int]:
        """How many live workers consume each queue (every known queue, 0 when none)."""
        counts = {queue.name: 0 for queue in app.conf.task_queues or ()}
        for queues in self.workers.values():
            for name in queues:
                counts[name] = counts.get(name, 0) + 1
        return counts


_cache_lock = threading.Lock()
_cached: tuple[float, Cluster] | None = None


def report() -> tuple[dict[str, Any], int]:
    """The health document and its HTTP status (200, or 503 when the database is down)."""
    database = _database()
    cluster = cluster_state()
    queues = cluster.queues()
    problems = []
    if not database["ok"]:
        problems.append("the database does not answer")
    if not cluster.broker_ok:
        problems.append("the broker does not answer: new work is recorded and sent when it is back")
    else:
        # Every queue needs a consumer: without one for webhooks, deliveries are answered but
        # never processed; without housekeeping, the outbox relay and the reaper never run.
        problems.extend(
            f"no live worker consumes the {name} queue"
            for name in ALL_QUEUES
            if not queues.get(name)
        )
    status = "down" if not database["ok"] else "degraded" if problems else "ok"
    broker: dict[str, Any] = {"ok": cluster.broker_ok, "kind": cluster.broker_kind}
    if cluster.broker_error:
        broker["error"] = cluster.broker_error
    document = {
        "status": status,
        "database": database,
        "broker": broker,
        "workers": {"count": len(cluster.workers), "queues": queues},
        "problems": problems,
    }
    return document, 503 if status == "down" else 200


def cluster_state(*, fresh: bool = False) -> Cluster:
    """The broker and the live workers, read at most every CACHE_SECONDS (``fresh``: now)."""
    global _cached
    with _cache_lock:
        if not fresh and _cached is not None and time.monotonic() - _cached[0] < CACHE_SECONDS:
            return _cached[1]
        cluster = _read_cluster()
        _cached = (time.monotonic(), cluster)
        return cluster


def _read_cluster() -> Cluster:
    if settings.EMBEDDED_WORKER:
        # The in-memory broker lives in this process; so does the worker, once `serve` ran it.
        queues = [queue.name for queue in app.conf.task_queues or ()]
        workers = {embedded.worker_name(): queues} if embedded.worker_running() else {}
        return Cluster(broker_ok=True, broker_kind="in-memory", workers=workers)
    try:
        client = redis.Redis.from_url(
            settings.REDIS_URL,
            socket_timeout=TIMEOUT_SECONDS,
            socket_connect_timeout=TIMEOUT_SECONDS,
        )
        try:
            client.ping()
        finally:
            client.close()
    except redis.RedisError as exc:
        return Cluster(broker_ok=False, broker_kind="redis", broker_error=type(exc).__name__)
    try:
        answers = app.control.inspect(timeout=TIMEOUT_SECONDS).active_queues() or {}
    except Exception as exc:  # kombu's and redis' errors: the broker went away meanwhile
        return Cluster(broker_ok=False, broker_kind="redis", broker_error=type(exc).__name__)
    workers = {
        str(name): sorted(str(queue.get("name", "")) for queue in queues or ())
        for name, queues in answers.items()
    }
    return Cluster(broker_ok=True, broker_kind="redis", workers=workers)


def _database() -> dict[str, Any]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except DatabaseError as exc:
        return {"ok": False, "error": type(exc).__name__}
    return {"ok": True}
