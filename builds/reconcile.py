"""Reconciliation: after a worker is lost, the database is made to agree with the servers.

The invariant (docs/reliability-invariant.md): each server has one ``current``, pointing at a
complete release, and that same release is the server's live Release in the database. A
deployment whose worker died (its pool process killed, its host gone) leaves the database
saying "running" while each server is wherever the worker left it: before the switch (the old
release still live, maybe an unfinished new one beside it) or after it (the new release live).

So a lost deployment is not simply failed. Each server it was working on is read over SSH,
read-only (builds.engine.pipeline.inspect_server): a server whose ``current`` already points at
this deployment's release is recorded as switched (target succeeded, the Release live), one
that did not switch as failed "worker lost before the switch", and one that cannot be read
as failed with the reason and ``state_unknown``, read again at every reaper pass until it
answers (or a later deployment of that server settles it).

Two things notice a lost worker:

- Celery's own signal: when a prefork pool process dies while running a task, the worker's
  main process fails the task with WorkerLostError (``task_failure``, builds.tasks), at once;
- the reaper (a beat task on the ``housekeeping`` queue, every 30 s): a running deployment
  whose heartbeat is older than HEARTBEAT_TIMEOUT (a whole worker or its host gone).

A deployment's release is named after the moment it was claimed (``started_at``, to the
millisecond, builds.engine.release.release_prefix), so "current points at this deployment's
release" needs nothing the dead worker might not have stored.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from builds import runner, services
from builds.engine import pipeline, release
from builds.engine.errors import EngineError
from builds.engine.ssh import Endpoint
from builds.models import FINAL, Deployment, DeploymentTarget, Kind, Status, TargetStatus
from deployer import outbox
from deployer.db import project_lock
from servers.models import Protocol, Server

logger = logging.getLogger(__name__)

#: The reason of a server whose ``current`` did not switch before the worker was lost.
NOT_SWITCHED = "The worker was lost before the switch: current still points at {current}"


@dataclass(frozen=True)
class ServerState:
    """What reading one server found. ``error`` set: it could not be read."""

    current: str | None = None
    complete: bool = False
    error: str = ""


#: Servers read at once when a lost deployment had several.
READ_PARALLEL = 8


def server_states(servers: Sequence[Server]) -> list[ServerState]:
    """Read where ``current`` points on each of ``servers`` (read-only; several at once, each
    bounded by the SSH connect timeout), in order. Never raises: a server that cannot be read
    is a ServerState with ``error``."""
    # Endpoints (secrets decrypted, the address policy checked) here, with the database;
    # the threads only talk SSH.
    reads: list[ServerState | tuple[Endpoint, str]] = []
    for server in servers:
        if not server.atomic or server.protocol != Protocol.SSH:
            reads.append(ServerState(error="an in-place server keeps no releases to tell it by"))
            continue
        try:
            reads.append((runner.endpoint_for(server), server.deploy_path))
        except EngineError as exc:
            reads.append(_unreadable(exc))
    with ThreadPoolExecutor(max_workers=READ_PARALLEL) as pool:
        futures = [
            read if isinstance(read, ServerState) else pool.submit(_read, *read) for read in reads
        ]
        return [f if isinstance(f, ServerState) else f.result() for f in futures]


def server_state(server: Server) -> ServerState:
    """server_states of one server."""
    return server_states([server])[0]


def _read(endpoint: Endpoint, deploy_path: str) -> ServerState:
    try:
        state = pipeline.inspect_server(endpoint, deploy_path)
    except Exception as exc:  # EngineError, or a socket's, paramiko's: not readable now
        return _unreadable(exc)
    return ServerState(current=state.current, complete=state.complete)


def _unreadable(exc: Exception) -> ServerState:
    if isinstance(exc, EngineError) and exc.user_facing:
        return ServerState(error=str(exc))
    logger.warning("Reading a server failed", exc_info=exc)
    return ServerState(error=type(exc).__name__)


def _release_of(deployment: Deployment, server: Server) -> tuple[str, str] | None:
    """(release name, revision) when ``server``'s ``current`` would be this deployment's,
    else None. A deployment's name is only known by its prefix (the SHA is appended)."""
    if deployment.kind == Kind.ROLLBACK:
        target = services.rollback_release_for(deployment, server)
        return (target.name, target.revision) if target is not None else None
    if deployment.started_at is None:
        return None
    return (release.release_prefix(deployment.started_at.timestamp()), "")


def switched_to(deployment: Deployment, server: Server, state: ServerState) -> bool:
    """``state``'s ``current`` is this deployment's (complete) release."""
    expected = _release_of(deployment, server)
    if expected is None or state.current is None or not state.complete:
        return False
    name, _ = expected
    if deployment.kind == Kind.ROLLBACK:
        return state.current == name
    return state.current.startswith(name) and release.is_release_name(state.current)


def _revision(deployment: Deployment, server: Server, name: str) -> str:
    """The SHA of release ``name``: known in full when the deployment stored it or named a
    SHA, else the short one the release name ends with."""
    if deployment.kind == Kind.ROLLBACK:
        expected = _release_of(deployment, server)
        return expected[1] if expected else ""
    short = name.rsplit("-", 1)[-1]
    for candidate in (deployment.end_revision, deployment.revision):
        if candidate and len(candidate) == 40 and candidate.startswith(short):
            return candidate
    return short


def _record_switched(deployment: Deployment, target: DeploymentTarget, name: str) -> None:
    server = target.server
    previous = server.live_release()
    runner.mark_live(
        deployment,
        pipeline.ServerResult(server_id=server.pk, release=name),
        _revision(deployment, server, name),
    )
    target.status = TargetStatus.SUCCEEDED
    target.release = name
    target.previous_release = previous.name if previous and previous.name != name else ""
    target.reason = (
        f"Switched to releases/{name} before the worker was lost; its after-switch commands, "
        "checks and clean-up may not have run"
    )
    target.state_unknown = False
    target.finished_at = timezone.now()
    target.save()


def _record_target(deployment: Deployment, target: DeploymentTarget, state: ServerState) -> str:
    """Record one server's outcome from ``state``; return a few words for the log."""
    name = target.server.name
    if state.error:
        target.status = TargetStatus.FAILED
        target.state_unknown = target.server.atomic and target.server.protocol == Protocol.SSH
        target.reason = (
            f"Unknown: the worker was lost and the server could not be read ({state.error}); "
            + ("checked again by the reaper" if target.state_unknown else "check it by hand")
        )[:2000]
        target.finished_at = timezone.now()
        target.save()
        return f"{name}: unknown ({state.error})"
    if switched_to(deployment, target.server, state):
        assert state.current is not None
        _record_switched(deployment, target, state.current)
        return f"{name}: switched to releases/{state.current}"
    current = f"releases/{state.current}" if state.current else "nothing (no current link)"
    target.status = TargetStatus.FAILED
    target.state_unknown = False
    target.reason = NOT_SWITCHED.format(current=current)
    target.finished_at = timezone.now()
    target.save()
    return f"{name}: not switched (current → {current})"


def deployment_worker_lost(deployment_id: int, *, task_id: str, reason: str) -> bool:
    """The worker process that ran ``task_id`` for ``deployment_id`` died (``reason``: what
    Celery said). Reconcile the deployment if that task was running it; re-queue it if it
    died before claiming it. True when something was done."""
    deployment = Deployment.objects.filter(pk=deployment_id).first()
    if deployment is None:
        return False
    if deployment.status == Status.QUEUED:
        # Died between taking the message and claiming, perhaps before marking it consumed:
        # mark it now, so that dispatch_ready (which sends none while one is unconsumed)
        # gives the deployment a new one.
        outbox.consumed(task_id, worker="")
        return services.dispatch_ready(server_ids=_server_ids(deployment)) > 0
    if deployment.status != Status.RUNNING or deployment.task_id != task_id:
        return False  # a duplicate message's task, or another worker's deployment
    return deployment_reconcile(
        deployment,
        reason=f"The worker process running this deployment ({deployment.worker or 'unknown'}) "
        f"died: {reason}",
    )


def deployment_reconcile(deployment: Deployment, *, reason: str) -> bool:
    """End a running deployment whose worker is gone, each server recorded as it really is
    (see the module docstring). ``reason`` starts the deployment's error. False when it was
    no longer running (another reconciler, or its worker, finished it first)."""
    targets = (
        []  # a preview touches no server
        if deployment.kind == Kind.PREVIEW
        else list(
            deployment.targets.filter(
                status__in=[TargetStatus.RUNNING, TargetStatus.WAITING]
            ).select_related("server", "server__project")
        )
    )
    # Read before the transaction: SSH takes seconds, no row stays locked meanwhile.
    read = server_states([t.server for t in targets])
    states = {t.pk: state for t, state in zip(targets, read, strict=True)}
    with transaction.atomic():
        # The lock order (deployer.db): the project, its servers by pk, then the deployment.
        project_lock(deployment.project_id)
        list(
            Server.objects.select_for_update()
            .filter(pk__in=[t.server_id for t in targets])
            .order_by("pk")
        )
        locked = Deployment.objects.select_for_update().filter(pk=deployment.pk).first()
        if locked is None or locked.status != Status.RUNNING:
            return False
        still = set(
            locked.targets.filter(
                status__in=[TargetStatus.RUNNING, TargetStatus.WAITING]
            ).values_list("pk", flat=True)
        )
        targets = [t for t in targets if t.pk in still]
        outcomes = [_record_target(locked, t, states[t.pk]) for t in targets]
        services.system_line(
            locked, reason + (". Servers: " + "; ".join(outcomes) if outcomes else "")
        )
        switched = [t for t in targets if t.status == TargetStatus.SUCCEEDED]
        error = reason
        if switched:
            error += (
                f"; {len(switched)} of {len(targets)} servers had switched to the new release "
                "and are recorded on it"
            )
        services.deployment_finish(
            locked, status=Status.FAILED, error=error[:2000], error_code="worker_lost"
        )
    return True


def deployments_reap_stale() -> int:
    """The reaper: reconcile running deployments whose heartbeat went stale (their worker
    died), read again the servers left unknown, and queue what can start now. Returns how
    many deployments were reaped."""
    cutoff = timezone.now() - timedelta(seconds=settings.HEARTBEAT_TIMEOUT)
    stale = list(Deployment.objects.filter(status=Status.RUNNING, heartbeat_at__lt=cutoff))
    reaped = 0
    for deployment in stale:
        reaped += deployment_reconcile(
            deployment,
            reason=f"The worker running this deployment ({deployment.worker or 'unknown'}) "
            f"stopped responding: no heartbeat for {settings.HEARTBEAT_TIMEOUT} s",
        )
    targets_recheck()
    services.dispatch_ready()
    return reaped


def deployments_recover_after_restart() -> None:
    """`serve` with the in-process worker, at start: a deployment still running ran in the
    previous process (embedded mode: the only one), so its worker is lost; the in-memory
    broker's messages died with that process too."""
    if settings.EMBEDDED:
        for deployment in Deployment.objects.filter(status=Status.RUNNING):
            deployment_reconcile(
                deployment, reason="Slipway restarted while this deployment was running"
            )
    if settings.EMBEDDED_WORKER:
        outbox.resend_unconsumed()
    services.dispatch_ready()


def targets_recheck() -> int:
    """Read again each server left ``state_unknown`` by a lost worker; record it switched
    when ``current`` is that deployment's release. A server a later deployment has worked
    on since is settled by that one (its outcome is the newer truth). Returns how many
    were settled."""
    settled = 0
    unknown = DeploymentTarget.objects.filter(
        state_unknown=True, deployment__status__in=FINAL
    ).select_related("deployment", "server", "server__project")
    for target in unknown:
        later = DeploymentTarget.objects.filter(
            Q(status__in=[TargetStatus.RUNNING, TargetStatus.WAITING])
            | Q(deployment__started_at__gt=target.deployment.started_at),
            server_id=target.server_id,
        ).exclude(pk=target.pk)
        if later.filter(status__in=[TargetStatus.RUNNING, TargetStatus.WAITING]).exists():
            continue  # busy: read it once that deployment is done
        if later.exists():
            DeploymentTarget.objects.filter(pk=target.pk).update(state_unknown=False)
            settled += 1
            continue
        state = server_state(target.server)
        if state.error:
            continue
        with transaction.atomic():
            project_lock(target.server.project_id)
            list(Server.objects.select_for_update().filter(pk=target.server_id))
            locked = DeploymentTarget.objects.select_for_update().filter(
                pk=target.pk, state_unknown=True
            )
            if not locked.exists():
                continue
            outcome = _record_target(target.deployment, target, state)
            services.system_line(target.deployment, f"Checked again: {outcome}")
        settled += 1
    return settled


def _server_ids(deployment: Deployment) -> list[int]:
    return list(deployment.targets.values_list("server_id", flat=True))
