"""Celery tasks: thin wrappers that take ids. The work lives in builds.runner and services."""

from __future__ import annotations

import logging
from typing import Any

from billiard.exceptions import TimeLimitExceeded, WorkerLostError
from celery import Task, shared_task
from celery.signals import task_failure, worker_ready
from celery.worker.control import control_command
from django.db import DatabaseError

from builds import (
    cleanup,
    drift_checks,
    notifications,
    reconcile,
    retention,
    runner,
    schedules,
    services,
    webhook_services,
)
from deployer import outbox
from deployer.memory import release_free_memory

logger = logging.getLogger(__name__)

#: Reconciles a deployment whose worker process died (housekeeping queue, see below).
RECONCILE_LOST_TASK = "builds.tasks.reconcile_lost_deployment"


@shared_task(name=services.RUN_DEPLOYMENT_TASK, bind=True, ignore_result=True)
def run_deployment(self: Task[..., None], deployment_id: int) -> None:
    _claim_and_run(self, deployment_id)


# The same work as run_deployment, on the `previews` queue: a preview never waits behind
# deployments (deployer/settings.py routes the two).
@shared_task(name=services.RUN_PREVIEW_TASK, bind=True, ignore_result=True)
def run_preview(self: Task[..., None], deployment_id: int) -> None:
    _claim_and_run(self, deployment_id)


#: Seconds between tries when the database is away before a deployment could be claimed.
CLAIM_RETRY_SECONDS = 2
CLAIM_RETRIES = 30


def _claim_and_run(task: Task[..., None], deployment_id: int) -> None:
    request = task.request
    try:
        outbox.consumed(request.id, worker=request.hostname or "")
        deployment = services.deployment_claim(
            deployment_id, task_id=request.id or "", worker=request.hostname or ""
        )
    except DatabaseError as exc:
        # The database went away before the deployment started (even while committing, which
        # deployer.db never retries): nothing ran, so try again shortly rather than leave the
        # message to the outbox's stranded-message recovery. Same task id: one message.
        raise task.retry(exc=exc, countdown=CLAIM_RETRY_SECONDS, max_retries=CLAIM_RETRIES) from exc
    if deployment is None:
        return
    try:
        runner.run(deployment)
    finally:
        # A large tree's manifests are freed now: give their pages back, or the worker stays
        # at this deployment's high-water mark (deployer.memory).
        release_free_memory()


# A database error (a dropped connection) rolls the processing back whole: try again later.
# Processing is idempotent (webhook_services claims each delivery).
_WEBHOOK_PROCESSING: dict[str, Any] = {
    "bind": True,
    "ignore_result": True,
    "autoretry_for": (DatabaseError,),
    "retry_backoff": True,
    "max_retries": 8,
    "soft_time_limit": 120,
    "time_limit": 150,
}


@shared_task(name=webhook_services.PROCESS_WEBHOOKS_TASK, **_WEBHOOK_PROCESSING)
def process_webhooks(self: Any, project_id: int) -> int:
    # consumed() first: it waits for the deliveries that counted on this message.
    outbox.consumed(self.request.id, worker=self.request.hostname or "")
    return webhook_services.webhook_process_project(project_id)


# Messages recorded one per delivery (before the project's message): the same work.
@shared_task(name=webhook_services.PROCESS_WEBHOOK_TASK, **_WEBHOOK_PROCESSING)
def process_webhook_delivery(self: Any, delivery_id: int) -> int:
    outbox.consumed(self.request.id, worker=self.request.hostname or "")
    return webhook_services.webhook_process(delivery_id)


# A commit status arrived for a project with held deployments: check their gates again.
@shared_task(name=webhook_services.REEVALUATE_GATES_TASK, **_WEBHOOK_PROCESSING)
def reevaluate_gates(self: Any, project_id: int) -> int:
    outbox.consumed(self.request.id, worker=self.request.hostname or "")
    return services.gates_reevaluate_project(project_id)


@shared_task(ignore_result=True)
def tick_gates() -> int:
    """Held deployments (beat's tick-gates, or the embedded loop): CI statuses read from the
    Git hosts' APIs, gates checked again, those past their wait refused."""
    return services.gates_tick()


@shared_task(ignore_result=True)
def tick_schedules() -> int:
    """Claim the scheduled deployments' due slots (beat's tick-schedules, or the embedded
    loop); each claimed slot's run is a run_schedule message."""
    return len(schedules.schedules_tick())


# A database error rolls the decision back whole; the run is still pending: try again.
@shared_task(name=schedules.RUN_SCHEDULE_TASK, **_WEBHOOK_PROCESSING)
def run_schedule(self: Any, run_id: int) -> None:
    outbox.consumed(self.request.id, worker=self.request.hostname or "")
    schedules.schedule_run(run_id)


@shared_task(ignore_result=True)
def relay_outbox() -> int:
    return outbox.relay()


@shared_task(ignore_result=True)
def reap_stale_deployments() -> int:
    webhook_services.webhooks_sweep()
    return reconcile.deployments_reap_stale()


@shared_task(name=RECONCILE_LOST_TASK, bind=True, ignore_result=True)
def reconcile_lost_deployment(
    self: Task[..., bool], deployment_id: int, task_id: str, reason: str
) -> bool:
    outbox.consumed(self.request.id, worker=self.request.hostname or "")
    return reconcile.deployment_worker_lost(deployment_id, task_id=task_id, reason=reason)


@task_failure.connect
def _deployment_worker_lost(
    sender: Any = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    args: Any = None,
    **_: Any,
) -> None:
    # Sent in the worker's main process when the pool process running the task died
    # (WorkerLostError: killed, out of memory) or was killed at the hard time limit; the
    # task's own code never ran its `except`. The reconciliation reads servers over SSH, so
    # it runs as a housekeeping task rather than here, in the loop that feeds the pool.
    name = getattr(sender, "name", "")
    if name not in (services.RUN_DEPLOYMENT_TASK, services.RUN_PREVIEW_TASK):
        return
    if not isinstance(exception, WorkerLostError | TimeLimitExceeded) or not args:
        return
    deployment_id = int(args[0])
    reason = f"{type(exception).__name__}: {exception}"
    logger.warning("Deployment %s lost its worker (%s); reconciling it", deployment_id, reason)
    outbox.enqueue(
        RECONCILE_LOST_TASK, deployment_id, task_id or "", reason, key=f"reconcile:{deployment_id}"
    )


# Batches of at most retention.BATCH_SIZE rows: a first run on a large database may take a
# while, but no statement holds its locks for long.
@shared_task(ignore_result=True, soft_time_limit=1800, time_limit=2160)
def prune_old_records() -> dict[str, int]:
    return retention.records_prune().as_dict()


# Notifications: sending one is bounded by builds.outbound's total timeout (30 s) or the mail
# server's (10 s per step); these limits only stop a send that hangs in spite of them, and stay
# below the claim's lease (builds.notifications.CLAIM_LEASE, 5 min).
@shared_task(
    name=notifications.SEND_DELIVERY_TASK,
    ignore_result=True,
    soft_time_limit=120,
    time_limit=150,
)
def send_notification_delivery(delivery_id: int) -> None:
    notifications.delivery_attempt(delivery_id)


@shared_task(ignore_result=True, soft_time_limit=660, time_limit=720)
def resend_due_notification_deliveries() -> int:
    return notifications.resend_due()


# A deleted project's files, on every worker (builds.cleanup): a remote-control command, so that
# each worker gets it on its own control channel, whatever queues it consumes.
@control_command(
    name=cleanup.REMOVE_PROJECT_FILES, args=[("project_id", int)], signature="<project_id>"
)
def remove_project_files(state: object, project_id: int) -> dict[str, str]:
    removed = cleanup.project_files_remove(int(project_id))
    return {"ok": "removed" if removed else "nothing to remove"}


@worker_ready.connect
def _sweep_deleted_projects(**_: Any) -> None:
    # For the deletions broadcast while this worker was down.
    cleanup.project_files_sweep()


@shared_task(name=drift_checks.RUN_DRIFT_CHECK_TASK, bind=True, ignore_result=True)
def run_drift_check(self: Task[..., None], check_id: int) -> None:
    """Run one queued drift check (builds.drift_checks.drift_check_run)."""
    outbox.consumed(self.request.id, worker=self.request.hostname or "")
    drift_checks.drift_check_run(check_id)


@shared_task(ignore_result=True)
def tick_drift_checks() -> int:
    """Queue the scheduled drift checks that are due (beat's tick-drift-checks, or the
    embedded loop)."""
    return len(drift_checks.drift_checks_tick())
