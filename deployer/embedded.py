"""The embedded mode's in-process worker: a Celery worker on threads, in this process.

With no REDIS_URL the broker is kombu's in-memory transport, which lives in this process only;
so the web process must host the worker itself. Messages in memory are lost on restart, which
is why start-up hands every still-queued deployment to the worker again (claiming a deployment
is a conditional update, so a second message for it does nothing).
"""

from __future__ import annotations

import logging
import threading

from celery import signals
from celery.worker import WorkController
from django.conf import settings

from deployer.celery import app

logger = logging.getLogger(__name__)


def start_worker() -> WorkController:
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        "polling_interval": 0.1,
    }
    app.finalize()
    app.set_current()
    app.set_default()
    worker = WorkController(
        app=app,
        hostname=f"embedded@{settings.BIND}",
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
    threading.Thread(target=worker.start, name="slipway-worker", daemon=True).start()
    threading.Thread(target=_reap_forever, name="slipway-reaper", daemon=True).start()
    logger.info("Embedded worker started with %s threads", settings.WORKER_CONCURRENCY)
    return worker


def _send_worker_ready(consumer: object) -> None:
    signals.worker_ready.send(sender=consumer)


def _reap_forever() -> None:
    """The embedded mode's `celery beat`: the same periodic tasks, in a thread."""
    from builds.tasks import reap_stale_deployments, resend_due_notification_deliveries

    stop = threading.Event()
    while not stop.wait(settings.REAPER_INTERVAL):
        for periodic in (reap_stale_deployments, resend_due_notification_deliveries):
            try:
                periodic()
            except Exception:  # the loop must outlive a passing database error
                logger.exception("%s failed", periodic.name)
