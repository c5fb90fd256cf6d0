"""The embedded mode's in-process worker: a Celery worker on threads, in this process.

With no REDIS_URL the broker is kombu's in-memory transport, which lives in this process only;
so the web process must host the worker itself. Messages in memory are lost on restart, which
is why start-up hands every still-queued deployment to the worker again (claiming a deployment
is a conditional update, so a second message for it does nothing).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import Task, signals
from celery.worker import WorkController
from django.conf import settings

from deployer.celery import app

logger = logging.getLogger(__name__)

# As often as beat runs it (CELERY_BEAT_SCHEDULE["prune-old-records"]).
PRUNE_INTERVAL_SECONDS = 3600.0
# How often the worker looks at the in-memory queues: a deployment waits half of it on
# average before it starts. An empty look costs microseconds, so 50 a second cost nothing.
POLLING_INTERVAL_SECONDS = 0.02

#: The in-process worker's thread, once start_worker ran (healthz counts it while alive).
_worker_thread: threading.Thread | None = None


def worker_name() -> str:
    return f"embedded@{settings.BIND}"


def worker_running() -> bool:
    """The in-process worker was started in this process and its thread is alive."""
    return _worker_thread is not None and _worker_thread.is_alive()


def start_worker() -> WorkController:
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        "polling_interval": POLLING_INTERVAL_SECONDS,
    }
    app.finalize()
    app.set_current()
    app.set_default()
    worker = WorkController(
        app=app,
        hostname=worker_name(),
        pool="threads",
        concurrency=settings.WORKER_CONCURRENCY,
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
        loglevel=settings.LOG_LEVEL,
        # The `celery worker` command sends worker_ready; a bare WorkController does not, and
        # the start-up work hung on it (builds.tasks: sweeping deleted projects' files) must
        # run here too.
        ready_callback=_send_worker_ready,
    )
    global _worker_thread
    _worker_thread = threading.Thread(target=worker.start, name="slipway-worker", daemon=True)
    _worker_thread.start()
    threading.Thread(target=_reap_forever, name="slipway-reaper", daemon=True).start()
    logger.info("Embedded worker started with %s threads", settings.WORKER_CONCURRENCY)
    return worker


def _send_worker_ready(consumer: object) -> None:
    signals.worker_ready.send(sender=consumer)


def _reap_forever() -> None:
    """The embedded mode's `celery beat`: the same periodic tasks, in a thread. Scheduled
    deployments are looked for every SCHEDULE_TICK seconds (or REAPER_INTERVAL, if shorter),
    the rest every REAPER_INTERVAL."""
    stop = threading.Event()
    next_prune = 0.0
    next_round = 0.0
    while not stop.wait(min(settings.SCHEDULE_TICK, settings.REAPER_INTERVAL)):
        now = time.monotonic()
        schedules_round()
        if now >= next_round:
            next_prune = periodic_round(now, next_prune=next_prune)
            next_round = now + settings.REAPER_INTERVAL


def schedules_round() -> None:
    """Claim the scheduled deployments' due slots once (the beat task tick-schedules); each
    claimed slot's run goes to the in-process worker through the outbox."""
    from builds.tasks import tick_schedules

    try:
        tick_schedules()
    except Exception:  # the loop must outlive a passing database error
        logger.exception("%s failed", tick_schedules.name)


def periodic_round(now: float, *, next_prune: float) -> float:
    """Run the periodic tasks once, and the retention prune too when ``now`` (time.monotonic(),
    seconds) has reached ``next_prune``; returns when the prune is due next."""
    from builds.tasks import (
        prune_old_records,
        reap_stale_deployments,
        relay_outbox,
        resend_due_notification_deliveries,
        tick_drift_checks,
        tick_gates,
    )

    periodic: list[Task[[], Any]] = [
        relay_outbox,
        reap_stale_deployments,
        resend_due_notification_deliveries,
        tick_drift_checks,
        tick_gates,
    ]
    if now >= next_prune:
        periodic.append(prune_old_records)
        next_prune = now + PRUNE_INTERVAL_SECONDS
    for task in periodic:
        try:
            task()
        except Exception:  # the loop must outlive a passing database error
            logger.exception("%s failed", task.name)
    return next_prune
