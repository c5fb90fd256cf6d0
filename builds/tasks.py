"""Celery tasks: thin wrappers that take ids. The work lives in builds.runner and services."""

from __future__ import annotations

from celery import shared_task

from builds import services


@shared_task(bind=True, acks_late=True, ignore_result=True)
def run_deployment(self: object, deployment_id: int) -> None:
    from builds.runner import run

    request = self.request  # type: ignore[attr-defined]
    deployment = services.deployment_claim(
        deployment_id, task_id=request.id or "", worker=request.hostname or ""
    )
    if deployment is None:
        return
    run(deployment)


@shared_task(ignore_result=True)
def reap_stale_deployments() -> int:
    return services.deployments_reap_stale()
