"""Deployment services: create, claim, finish, cancel, recover. Views, the API, webhooks and
tasks all change deployments through these functions."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone

from builds import gates, notifications
from builds.engine.errors import InvalidInput
from builds.engine.git import validate_ref
from builds.logs import broadcast, stored_lines_after
from builds.models import (
    ACTIVE,
    FINAL,
    TARGET_ACTIVE,
    TARGET_NOT_DEPLOYED,
    Approval,
    Artefact,
    Deployment,
    DeploymentTarget,
    GatePolicy,
    Kind,
    LogLine,
    Status,
    TargetStatus,
    Trigger,
)
from builds.presenters import deployment_status
from deployer import outbox
from deployer.db import project_lock, retrying
from projects.freeze import Freeze, project_freeze
from projects.models import Membership, Project, Role
from projects.services import audit_record
from servers.models import Release, Server, ServerGroup, Strategy, rollback_target

logger = logging.getLogger(__name__)


class DeploymentRefused(Exception):
    """The deployment cannot be created as asked; the message names the field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


class DeploymentLocked(DeploymentRefused):
    """The project or one of the servers is locked (a stack lock): only a rollback runs."""

    code = "locked"


class DeploymentFrozen(DeploymentRefused):
    """A freeze window is in force: automatic deployments wait, a person needs an admin's
    reason (``freeze_override_reason``)."""

    code = "frozen"


class FreezeOverrideForbidden(DeploymentRefused):
    """A freeze window is in force and the person asking is not an admin of the project."""

    code = "frozen"


class DeploymentGated(DeploymentRefused):
    """A gate of the environment failed (builds.gates): a webhook or schedule is refused, a
    person needs an admin's reason (``gates_override_reason``)."""

    code = "gates"


class GateOverrideForbidden(DeploymentRefused):
    """A gate failed and the person giving ``gates_override_reason`` is not a project admin."""

    code = "gates"


class DeployRightsForbidden(DeploymentRefused):
    """A deployer asked for a server outside their deploy rights (Membership.may_deploy_to)."""

    code = "forbidden"


def deploy_rights_check(*, project: Project, user: User | None, servers: Sequence[Server]) -> None:
    """Refuse ``user`` servers of ``project`` outside their deploy rights
    (docs/users.md#deploy-rights): DeployRightsForbidden naming them and what the user may
    deploy to. No user (a webhook, a schedule, which only admins set up) or no membership
    (the caller checked access otherwise) passes."""
    if user is None or not user.is_authenticated:
        return
    membership = Membership.objects.filter(project=project, user=user).first()
    if membership is None or not membership.is_limited:
        return
    refused = [server for server in servers if not membership.may_deploy_to(server)]
    if not refused:
        return
    allowed = [f"environment {name}" for name in membership.deploy_environments] + [
        f"server {server.name}" for server in membership.deploy_servers.order_by("name")
    ] or ["no server any more (the servers they were given were deleted)"]
    names = ", ".join(
        f"{server.name}" + (f" ({server.environment})" if server.environment else "")
        for server in refused
    )
    raise DeployRightsForbidden(
        "servers",
        f"{user.get_username()} may not deploy to {names} in {project.name}: their deploy "
        f"rights cover {', '.join(allowed)}. A project admin changes them on the Members page.",
    )


#: Triggers no person is behind: refused outright during a freeze.
AUTOMATIC_TRIGGERS = (Trigger.WEBHOOK, Trigger.SCHEDULE)
#: The longest reason kept for a lock or a freeze override, in characters.
MAX_REASON_LENGTH = 1000


def _when(at: datetime) -> str:
    return f"{at.astimezone(UTC):%Y-%m-%d %H:%M} UTC"


def lock_refusal(*, project: Project, servers: Sequence[Server]) -> DeploymentLocked | None:
    """Why the stack lock refuses a deployment to ``servers`` (read fresh from the
    database), or None when neither the project nor any of them is locked."""
    row = (
        Project.objects.filter(pk=project.pk)
        .values("locked_at", "lock_reason", "locked_by__username")
        .first()
    )
    if row is not None and row["locked_at"] is not None:
        return DeploymentLocked(
            "project",
            f"Project {project.slug} is locked by {row['locked_by__username'] or 'someone'} "
            f"since {_when(row['locked_at'])}: “{row['lock_reason']}”. Only rollbacks run "
            "until it is unlocked.",
        )
    locked = (
        Server.objects.filter(pk__in=[s.pk for s in servers], locked_at__isnull=False)
        .select_related("locked_by")
        .order_by("pk")
        .first()
    )
    if locked is not None and locked.locked_at is not None:
        by = locked.locked_by.username if locked.locked_by is not None else "someone"
        return DeploymentLocked(
            "servers",
            f"Server {locked.name} is locked by {by} since {_when(locked.locked_at)}: "
            f"“{locked.lock_reason}”. Only rollbacks run until it is unlocked.",
        )
    return None


def freeze_in_force(
    *, project: Project, servers: Sequence[Server], group: ServerGroup | None, now: datetime
) -> Freeze | None:
    """The freeze window covering ``now`` for these servers (their environments and the
    group's), or None."""
    environments = {server.environment for server in servers if server.environment}
    if group is not None and group.environment:
        environments.add(group.environment)
    return project_freeze(project.pk, now, environments)


def _check_gates(
    *,
    project: Project,
    servers: Sequence[Server],
    group: ServerGroup | None,
    kind: str,
    trigger: str,
    user: User | None,
    freeze_override_reason: str,
    now: datetime,
) -> Freeze | None:
    """Refuse what the stack lock and the freeze windows do not allow (a rollback passes
    both: it is how a bad release is undone); return the freeze an admin overrode."""
    if kind in (Kind.PREVIEW, Kind.ROLLBACK, Kind.SWITCH):
        return None
    refusal = lock_refusal(project=project, servers=servers)
    if refusal is not None:
        raise refusal
    freeze = freeze_in_force(project=project, servers=servers, group=group, now=now)
    if freeze is None:
        return None
    frozen = f"Project {project.slug} is {freeze.describe()}"
    if trigger in AUTOMATIC_TRIGGERS:
        raise DeploymentFrozen(
            "freeze",
            f"{frozen}: automatic deployments ({trigger}) are not run during a freeze.",
        )
    if not freeze_override_reason:
        raise DeploymentFrozen(
            "freeze_override_reason",
            f"{frozen}. A project admin may deploy anyway by giving a reason, which the "
            "audit log keeps.",
        )
    if not _is_admin(project, user):
        raise FreezeOverrideForbidden(
            "freeze_override_reason",
            f"{frozen}: only a project admin may deploy during a freeze.",
        )
    return freeze


@retrying
def system_line(deployment: Deployment, text: str) -> None:
    """Append one system line outside a running LogWriter (queueing, cancelling, reaping)."""
    project_lock(deployment.project_id)
    locked = Deployment.objects.select_for_update().get(pk=deployment.pk)
    seq = locked.log_seq + 1
    LogLine.objects.create(deployment=locked, seq=seq, stream="system", text=text)
    Deployment.objects.filter(pk=locked.pk).update(log_seq=seq)


def _looks_like_sha(revision: str) -> bool:
    return 7 <= len(revision) <= 40 and all(c in "0123456789abcdef" for c in revision)


#: The Celery tasks that run a deployment, and a preview (builds.tasks registers them under
#: these names; deployer/settings.py routes them to the `deployments` and `previews` queues).
#: Sent by name: the tasks call these services, so the services do not import the tasks.
RUN_DEPLOYMENT_TASK = "builds.tasks.run_deployment"
RUN_PREVIEW_TASK = "builds.tasks.run_preview"


def _dispatch(deployment_id: int, kind: str) -> None:
    """Record the message that starts the deployment (deployer.outbox: sent once the
    transaction commits); nothing when one is already waiting for a worker."""
    outbox.enqueue(
        RUN_PREVIEW_TASK if kind == Kind.PREVIEW else RUN_DEPLOYMENT_TASK,
        deployment_id,
        key=dispatch_key(deployment_id),
    )


def dispatch_key(deployment_id: int) -> str:
    """The outbox key of a deployment's start message."""
    return f"deployment:{deployment_id}"


@retrying
def deployment_create(
    *,
    project: Project,
    servers: Sequence[Server] = (),
    group: ServerGroup | None = None,
    revision: str = "",
    branch: str = "",
    kind: str = Kind.DEPLOY,
    trigger: str = Trigger.MANUAL,
    user: User | None = None,
    full: bool = False,
    skip_build: bool = False,
    skip_cache: bool = False,
    config_only: bool = False,
    rollback_release: str = "",
    rollback_of: Deployment | None = None,
    retry_of: Deployment | None = None,
    promoted_from: Deployment | None = None,
    artefact: Artefact | None = None,
    strategy: str = "",
    freeze_override_reason: str = "",
    gates_override_reason: str = "",
    commit: str = "",
    now: datetime | None = None,
) -> Deployment:
    """Record a deployment and queue it once the transaction commits.

    The environments' gates (builds.gates, docs/gates.md) are checked for a deployment of
    kind deploy, at ``commit`` (the revision's SHA; read with `git ls-remote` when a gate
    needs it and none is given), which is then what it deploys. A failed gate refuses a
    webhook or schedule (DeploymentGated), and a person's deployment unless a project admin
    gives ``gates_override_reason`` (else DeploymentGated; GateOverrideForbidden for a
    non-admin), which the audit log keeps. A pending gate (CI running, approvals to come)
    records the deployment held (status gated, no message to a worker) until
    deployment_gates_reevaluate releases or refuses it, or the policy's wait runs out.

    The stack lock refuses anything but a rollback (DeploymentLocked). During a freeze
    window (projects.freeze, at ``now``, default the current time) a webhook or schedule is
    refused (DeploymentFrozen); a person's deployment needs ``freeze_override_reason`` (else
    DeploymentFrozen) from a project admin (else FreezeOverrideForbidden), and the reason
    goes to the audit log. Both are checked under the project's lock, so a lock taken while
    the deployment is being recorded is never missed.

    A newer queued deployment supersedes an older queued one on the same server: the older
    target is cancelled with the reason, so a burst of pushes leaves one queued deployment
    per server, at the newest head. With a group and ``servers`` both, the deployment goes to
    those servers (in that order) with the group's strategy: undoing a group's deployment.

    Runs in its own transaction, retried on a deadlock or a lost connection (deployer.db),
    or in the caller's, whose owner then retries. Raises DeploymentRefused naming the field.
    """
    # A server named twice (``to: "prod1,prod1"``) is deployed once, at its first place.
    targets = list(
        {
            server.pk: server
            for server in servers or (group.ordered_servers() if group is not None else ())
        }.values()
    )
    if not targets:
        raise DeploymentRefused("servers", "Choose at least one server or a group")
    for server in targets:
        if server.project_id != project.pk:
            raise DeploymentRefused(
                "servers", f"Server {server.pk} is not part of project {project.slug}"
            )
    # A blue-green deployment or switch back also runs the switch on the group's router.
    router = group.router if group is not None and group.is_blue_green else None
    deploy_rights_check(
        project=project, user=user, servers=[*targets, *([router] if router else [])]
    )
    for server in targets:
        if not server.enabled and kind != Kind.PREVIEW:
            raise DeploymentRefused("servers", f"Server {server.name} is disabled")
        if not server.trusted and kind != Kind.PREVIEW:
            raise DeploymentRefused(
                "servers",
                f"Server {server.name}: {server.untrusted_hop} is not trusted yet. Test the "
                "connection, compare the fingerprint with the server's, then trust it.",
            )
    # A promotion passes the gates of the environment it goes to, as a deployment does
    # (docs/promote.md): its commit is the artefact's revision.
    policies = (
        gates.policies_for(project, targets, group) if kind in (Kind.DEPLOY, Kind.PROMOTE) else []
    )
    if policies and gates.needs_commit(policies) and not commit:
        # Before any lock: a network round trip.
        asked = gates.deployment_revision(project, revision, targets, group)
        commit = gates.commit_of(project, asked) or ""
        if commit and not revision:
            revision, branch = commit, branch or asked
        elif commit and revision != commit:
            branch = branch or (revision if not _looks_like_sha(revision) else "")
            revision = commit
    gates.statuses_fetch_if_missing(project, commit, policies)
    with transaction.atomic():
        # The lock order (deployer.db): the project, its servers by pk, then deployments.
        # The servers stay locked while older queued targets are superseded and the new
        # ones inserted.
        project_lock(project.pk)
        list(
            Server.objects.select_for_update().filter(pk__in=[s.pk for s in targets]).order_by("pk")
        )
        overridden = _check_gates(
            project=project,
            servers=targets,
            group=group,
            kind=kind,
            trigger=trigger,
            user=user,
            freeze_override_reason=freeze_override_reason.strip()[:MAX_REASON_LENGTH],
            now=now or timezone.now(),
        )
        checklist = (
            gates.gates_evaluate(
                project=project,
                servers=targets,
                group=group,
                sha=commit,
                automatic=trigger in AUTOMATIC_TRIGGERS,
                requester=user if user is not None and user.is_authenticated else None,
                policies=policies,
            )
            if policies
            else None
        )
        gates_override = _gates_decision(
            project=project,
            checklist=checklist,
            trigger=trigger,
            user=user,
            reason=gates_override_reason.strip()[:MAX_REASON_LENGTH],
        )
        held = checklist is not None and not checklist.passed and gates_override is None
        deployment = Deployment.objects.create(
            project=project,
            kind=kind,
            status=Status.GATED if held else Status.QUEUED,
            gates={
                **checklist.as_dict(),
                **({"override": gates_override} if gates_override else {}),
            }
            if checklist is not None
            else {},
            gates_until=(now or timezone.now()) + timedelta(minutes=checklist.max_wait_minutes)
            if held and checklist is not None
            else None,
            group=group,
            revision=revision,
            # The branch the revision belongs to, when known (a push, or a branch name asked for).
            branch=branch or (revision if revision and not _looks_like_sha(revision) else ""),
            trigger=trigger,
            triggered_by=user if user is not None and user.is_authenticated else None,
            full=full,
            skip_build=skip_build,
            skip_cache=skip_cache,
            config_only=config_only,
            rollback_release=rollback_release,
            rollback_of=rollback_of,
            retry_of=retry_of,
            promoted_from=promoted_from,
            artefact=artefact,
            strategy=strategy,
        )
        if kind not in (Kind.PREVIEW, Kind.SWITCH):
            _supersede_queued(targets, by=deployment)
        DeploymentTarget.objects.bulk_create(
            DeploymentTarget(
                deployment=deployment,
                server=server,
                position=position,
                status=TargetStatus.SKIPPED if kind == Kind.PREVIEW else TargetStatus.QUEUED,
            )
            for position, server in enumerate(targets)
        )
        if overridden is not None:
            audit_record(
                project=project,
                actor=user,
                action="deployment.freeze_overridden",
                target=f"deployment #{deployment.pk}",
                reason=freeze_override_reason.strip()[:MAX_REASON_LENGTH],
                window=overridden.window.name,
                until=overridden.until.isoformat(),
            )
        if gates_override is not None:
            audit_record(
                project=project,
                actor=user,
                action="deployment.gates_overridden",
                target=f"deployment #{deployment.pk}",
                reason=gates_override["reason"],
                gates=gates_override["gates"],
            )
        if held and checklist is not None:
            system_line(
                deployment,
                "Waiting for gates: "
                + checklist.describe(checklist.pending)
                + f". Refused if they have not passed by {_when(deployment.gates_until or timezone.now())}.",
            )
        else:
            _dispatch(deployment.pk, kind)
    return deployment


def _gates_decision(
    *,
    project: Project,
    checklist: gates.Checklist | None,
    trigger: str,
    user: User | None,
    reason: str,
) -> dict[str, Any] | None:
    """Refuse a deployment whose gates failed (DeploymentGated, GateOverrideForbidden), or
    return the override an admin gave ({"by", "reason", "gates"}: every gate not passed),
    or None (every gate passed, or some are pending: the deployment is held)."""
    if checklist is None or checklist.passed:
        return None
    failed = checklist.failed
    if trigger in AUTOMATIC_TRIGGERS:
        if failed:
            raise DeploymentGated(
                "gates",
                f"Gates failed: {checklist.describe(failed)}. Automatic deployments "
                f"({trigger}) do not run past a failed gate.",
            )
        return None
    if not reason:
        if failed:
            raise DeploymentGated(
                "gates_override_reason",
                f"Gates failed: {checklist.describe(failed)}. A project admin may deploy "
                "anyway by giving a reason, which the audit log keeps.",
            )
        return None
    if not _is_admin(project, user):
        raise GateOverrideForbidden(
            "gates_override_reason", "Only a project admin may deploy past the gates."
        )
    assert user is not None
    return {
        "by": user.get_username(),
        "reason": reason,
        "gates": [
            f"{check.environment}:{check.gate}"
            for check in checklist.checks
            if check.state != gates.PASSED
        ],
    }


def _is_admin(project: Project, user: User | None) -> bool:
    return (
        user is not None
        and user.is_authenticated
        and Membership.objects.filter(project=project, user=user, role=Role.ADMIN).exists()
    )


def _supersede_queued(servers: Iterable[Server], *, by: Deployment) -> None:
    older = DeploymentTarget.objects.filter(
        server__in=list(servers),
        status=TargetStatus.QUEUED,
        deployment__kind__in=[Kind.DEPLOY, Kind.ROLLBACK, Kind.PROMOTE],
    )
    # The lock order: the older deployments' rows (by pk) before their targets.
    list(
        Deployment.objects.select_for_update()
        .filter(pk__in=older.values("deployment_id"))
        .order_by("pk")
    )
    touched: set[int] = set()
    for target in older.select_related("deployment", "server").order_by("pk"):
        target.status = TargetStatus.CANCELLED
        target.reason = f"Superseded by deployment #{by.pk}"
        target.finished_at = timezone.now()
        target.save(update_fields=["status", "reason", "finished_at"])
        touched.add(target.deployment_id)
    waiting = (Status.QUEUED, Status.GATED)
    for deployment in Deployment.objects.filter(pk__in=touched, status__in=waiting).order_by("pk"):
        if not deployment.targets.filter(status=TargetStatus.QUEUED).exists():
            Deployment.objects.filter(pk=deployment.pk, status__in=waiting).update(
                status=Status.CANCELLED,
                error=f"Superseded by deployment #{by.pk}",
                finished_at=timezone.now(),
            )
            system_line(deployment, f"Superseded by deployment #{by.pk}")


def deployment_claim(
    deployment_id: int, *, task_id: str = "", worker: str = ""
) -> Deployment | None:
    """Move a queued deployment to running, or return None.

    None when another worker claimed it already (a redelivered message), when it is no longer
    queued, or when one of its servers is busy with another running deployment; in that last
    case it stays queued and is dispatched again when that one finishes. A deadlock or a lost
    connection is retried (deployer.db), never raised.
    """
    try:
        claimed = _claim(deployment_id, task_id=task_id, worker=worker)
    except IntegrityError:
        # Two claims raced for one server; the unique constraint let only one through.
        return None
    if not claimed:
        return None
    deployment = Deployment.objects.get(pk=deployment_id)
    deployment_broadcast_status(deployment)
    if deployment.kind != Kind.PREVIEW:
        notifications.deployment_event(deployment, "started")
    return deployment


@retrying
def _claim(deployment_id: int, *, task_id: str, worker: str) -> bool:
    row = Deployment.objects.filter(pk=deployment_id).values("project_id", "status", "kind").first()
    if row is None or row["status"] != Status.QUEUED:
        return False
    # The lock order (deployer.db): the project, its servers by pk, then the deployment.
    project_lock(row["project_id"])
    server_ids = list(
        DeploymentTarget.objects.filter(
            deployment_id=deployment_id, status=TargetStatus.QUEUED
        ).values_list("server_id", flat=True)
    )
    if row["kind"] != Kind.PREVIEW:
        list(Server.objects.select_for_update().filter(pk__in=server_ids).order_by("pk"))
        busy = DeploymentTarget.objects.filter(
            server_id__in=server_ids,
            status__in=[TargetStatus.RUNNING, TargetStatus.WAITING],
        ).exists()
        if busy:
            return False
    now = timezone.now()
    # Conditional: of two workers holding this deployment's message, only one changes the row.
    claimed = Deployment.objects.filter(pk=deployment_id, status=Status.QUEUED).update(
        status=Status.RUNNING,
        started_at=now,
        heartbeat_at=now,
        task_id=task_id,
        worker=worker,
    )
    if claimed != 1:
        return False
    DeploymentTarget.objects.filter(deployment_id=deployment_id, status=TargetStatus.QUEUED).update(
        status=TargetStatus.RUNNING
    )
    return True


def deployment_broadcast_status(deployment: Deployment) -> None:
    broadcast(deployment.pk, {"type": "deployment.status", "status": deployment_status(deployment)})


#: The reason of a server that a failed deployment never reached (its error says why).
NOT_REACHED = "Not deployed: the deployment failed before it reached this server."


def deployment_finish(
    deployment: Deployment, *, status: str, error: str = "", error_code: str = ""
) -> None:
    """Record the end of an active deployment (its servers still active end failed or
    cancelled), then tell its viewers, record its notifications and start what waited for
    its servers. A deadlock or a lost connection is retried (deployer.db), never raised."""
    finished = _finish(deployment, status=status, error=error, error_code=error_code)
    deployment.refresh_from_db()
    deployment_broadcast_status(deployment)
    if finished and deployment.kind != Kind.PREVIEW:
        _notify_finished(deployment)
    dispatch_ready(server_ids=list(deployment.targets.values_list("server_id", flat=True)))
    if finished and deployment.status == Status.SUCCEEDED:
        # A held deployment may have waited for this one ("verified on staging").
        gates_reevaluate_project(deployment.project_id)


@retrying
def _finish(deployment: Deployment, *, status: str, error: str, error_code: str) -> bool:
    project_lock(deployment.project_id)
    request = (
        Deployment.objects.filter(pk=deployment.pk)
        .values("kind", "abort_requested_at", "abort_requested_by")
        .get()
    )
    aborted = request["abort_requested_at"] is not None and request["kind"] == Kind.DEPLOY
    if aborted:
        # The lock order (deployer.db): the servers by pk before the deployment rows, as the
        # abort's rollback (deployment_create) takes them below.
        list(
            Server.objects.select_for_update()
            .filter(
                pk__in=DeploymentTarget.objects.filter(deployment_id=deployment.pk).values(
                    "server_id"
                )
            )
            .order_by("pk")
        )
        if status == Status.CANCELLED:
            error_code = "aborted"
    now = timezone.now()
    finished = Deployment.objects.filter(pk=deployment.pk, status__in=ACTIVE).update(
        status=status, error=error, error_code=error_code, finished_at=now, stage=""
    )
    # The error is the deployment's, shown once above its servers: a server it never reached
    # says only that (a failed build's paragraph, repeated per server, hid the servers).
    reason = error[:2000] if status == Status.CANCELLED else NOT_REACHED if error else ""
    DeploymentTarget.objects.filter(deployment_id=deployment.pk, status__in=TARGET_ACTIVE).update(
        status=TargetStatus.CANCELLED if status == Status.CANCELLED else TargetStatus.FAILED,
        finished_at=now,
        reason=reason,
    )
    if finished and aborted:
        # Recorded with the end of the deployment, in one transaction: an abort's rollback
        # is never lost between the two (a worker dying in between, a deadlock retried).
        requester = User.objects.filter(pk=request["abort_requested_by"]).first()
        _record_abort_rollback(deployment, user=requester)
    return bool(finished)


def _record_abort_rollback(deployment: Deployment, *, user: User | None) -> Deployment | None:
    """Queue the rollback of every server an aborted deployment had switched (its release
    live there now) to the release it had before, recorded like any rollback (kind
    rollback, ``rollback_of``, audited); the log of both says which servers. A server with
    no release before this one, or disabled, or whose host key is no longer trusted, is
    left on the new release and named. None when nothing had switched."""
    live_here = set(
        Release.objects.filter(deployment_id=deployment.pk, live=True).values_list(
            "server_id", flat=True
        )
    )
    switched = [
        target
        for target in deployment.targets.select_related("server").order_by("position")
        if target.server_id in live_here
    ]
    if not switched:
        system_line(deployment, "Aborted before any server switched: nothing to roll back")
        return None
    servers: list[Server] = []
    left: list[str] = []
    for target in switched:
        server = target.server
        if not target.previous_release:
            left.append(f"{server.name} (no release before this one)")
        elif not server.enabled:
            left.append(f"{server.name} (disabled)")
        elif not server.trusted:
            left.append(f"{server.name} ({server.untrusted_hop} is not trusted)")
        else:
            servers.append(server)
    kept = f"; left on this release: {', '.join(left)}" if left else ""
    if not servers:
        system_line(deployment, f"Aborted: nothing can be rolled back{kept}")
        return None
    group = deployment.group
    strategy = deployment.strategy or (group.strategy if group is not None else "")
    rollback = deployment_create(
        project=deployment.project,
        servers=servers,
        group=group,
        kind=Kind.ROLLBACK,
        trigger=Trigger.MANUAL,
        user=user,
        rollback_of=deployment,
        # The way the deployment went (its batches and checks), but no canary waiting for a
        # second Promote: an abort wants every switched server back.
        strategy=Strategy.PARALLEL if strategy == Strategy.CANARY else deployment.strategy,
    )
    names = ", ".join(server.name for server in servers)
    audit_record(
        project=deployment.project,
        actor=user,
        action="rollback.created",
        target=f"deployment #{rollback.pk}",
        rollback_of=deployment.pk,
        servers=[server.pk for server in servers],
        aborted=True,
    )
    system_line(
        deployment,
        f"Aborted: rolling back {names} to the release each had before, in deployment "
        f"#{rollback.pk}{kept}",
    )
    system_line(
        rollback,
        f"Rolling back {names}: switched by deployment #{deployment.pk} before it was aborted",
    )
    return rollback


def _notify_finished(deployment: Deployment) -> None:
    """Record the notifications of a finished deployment (sending never delays it)."""
    if deployment.status == Status.SUCCEEDED:
        notifications.deployment_event(
            deployment, "rolled_back" if deployment.kind == Kind.ROLLBACK else "succeeded"
        )
    elif deployment.status == Status.FAILED:
        notifications.deployment_event(deployment, "failed")
        if deployment.targets.filter(status=TargetStatus.ROLLED_BACK).exists():
            notifications.deployment_event(deployment, "rolled_back")
    elif deployment.targets.filter(status=TargetStatus.ROLLED_BACK).exists():
        # An aborted canary: the servers it had switched were rolled back.
        notifications.deployment_event(deployment, "rolled_back")
    if deployment.status == Status.CANCELLED:
        # Only integrations take it: a Git host must not show the start as pending for ever.
        notifications.deployment_event(deployment, "cancelled")


def dispatch_ready(*, server_ids: Sequence[int] | None = None) -> int:
    """Queue the start message of each queued deployment (of the given servers, or all) that
    could start now: none of its servers busy, and no message of its own still waiting for a
    worker. Return how many were queued.

    A worker that finds a server busy leaves the deployment queued (deployment_claim); the
    deployment that held the server calls this when it finishes. So a waiting deployment
    gets one message when it can start, never one every few seconds.
    """
    queued = Deployment.objects.filter(status=Status.QUEUED)
    if server_ids is not None:
        queued = queued.filter(targets__server_id__in=server_ids)
    candidates = list(queued.order_by("created_at", "id").values_list("pk", flat=True).distinct())
    return sum(_dispatch_if_ready(deployment_id) for deployment_id in candidates)


@retrying
def _dispatch_if_ready(deployment_id: int) -> bool:
    # Under the project's lock, so that two finishing deployments (or the reaper) never
    # both queue a message for one waiting deployment, and a claim sees the same servers.
    row = Deployment.objects.filter(pk=deployment_id).values("project_id", "status", "kind").first()
    if row is None or row["status"] != Status.QUEUED:
        return False
    project_lock(row["project_id"])
    deployment = Deployment.objects.filter(pk=deployment_id, status=Status.QUEUED).first()
    if deployment is None:
        return False
    if deployment.kind != Kind.PREVIEW:
        waiting_on = DeploymentTarget.objects.filter(
            deployment_id=deployment_id, status=TargetStatus.QUEUED
        ).values("server_id")
        busy = DeploymentTarget.objects.filter(
            server_id__in=waiting_on, status__in=[TargetStatus.RUNNING, TargetStatus.WAITING]
        ).exists()
        if busy:
            return False
    if outbox.unconsumed(dispatch_key(deployment_id)) is not None:
        return False
    _dispatch(deployment_id, deployment.kind)
    return True


# --------------------------------------------------------------------------- gates


def deployment_gates_reevaluate(deployment_id: int, *, now: datetime | None = None) -> str:
    """Check a held deployment's gates again (builds.gates): "released" (every gate passed:
    queued, and sent to a worker when its servers are free), "refused" (a gate failed, or
    the policy's wait ran out at ``now``: failed with error_code ``gates``), "held" (still
    waiting), or "" (it is no longer held). Called when a commit status arrives, an approval
    is given, a deployment finishes, and by the periodic tick (builds.tasks.tick_gates)."""
    outcome, error = _gates_reevaluate(deployment_id, now=now or timezone.now())
    if outcome == "refused":
        deployment = Deployment.objects.get(pk=deployment_id)
        deployment_finish(deployment, status=Status.FAILED, error=error, error_code="gates")
    elif outcome == "released":
        deployment = Deployment.objects.get(pk=deployment_id)
        deployment_broadcast_status(deployment)
    return outcome


@retrying
def _gates_reevaluate(deployment_id: int, *, now: datetime) -> tuple[str, str]:
    row = Deployment.objects.filter(pk=deployment_id).values("project_id", "status").first()
    if row is None or row["status"] != Status.GATED:
        return "", ""
    project_lock(row["project_id"])
    deployment = (
        Deployment.objects.select_related("project", "group", "triggered_by")
        .filter(pk=deployment_id, status=Status.GATED)
        .first()
    )
    if deployment is None:
        return "", ""
    servers = [
        target.server
        for target in deployment.targets.select_related("server").filter(status=TargetStatus.QUEUED)
    ]
    checklist = gates.gates_evaluate(
        project=deployment.project,
        servers=servers,
        group=deployment.group,
        sha=str(deployment.gates.get("sha", "")),
        automatic=deployment.trigger in AUTOMATIC_TRIGGERS,
        requester=deployment.triggered_by,
        deployment=deployment,
    )
    recorded = {**deployment.gates, **checklist.as_dict()}
    if checklist.failed:
        Deployment.objects.filter(pk=deployment.pk).update(gates=recorded)
        return "refused", f"Refused by its gates: {checklist.describe(checklist.failed)}."
    if not checklist.passed:
        if deployment.gates_until is not None and now >= deployment.gates_until:
            Deployment.objects.filter(pk=deployment.pk).update(gates=recorded)
            return "refused", (
                f"Refused: its gates had not passed by {_when(deployment.gates_until)} "
                f"({checklist.describe(checklist.pending)})."
            )
        if recorded != deployment.gates:
            Deployment.objects.filter(pk=deployment.pk).update(gates=recorded)
        return "held", ""
    Deployment.objects.filter(pk=deployment.pk, status=Status.GATED).update(
        status=Status.QUEUED, gates=recorded
    )
    system_line(deployment, "Gates passed: " + checklist.describe(checklist.checks))
    _dispatch_if_ready(deployment.pk)
    return "released", ""


def gates_reevaluate_project(project_id: int, *, now: datetime | None = None) -> int:
    """Check every held deployment of a project again (deployment_gates_reevaluate);
    return how many were released or refused."""
    held = Deployment.objects.filter(project_id=project_id, status=Status.GATED).order_by("pk")
    return sum(
        deployment_gates_reevaluate(pk, now=now) in ("released", "refused")
        for pk in held.values_list("pk", flat=True)
    )


def gates_tick(*, now: datetime | None = None) -> int:
    """The periodic pass over held deployments (beat's tick-gates, or the embedded loop):
    read the CI statuses of those waiting on CI from the Git hosts' APIs, then check each
    one again (expired ones are refused). Returns how many were released or refused."""
    decided = 0
    held = Deployment.objects.filter(status=Status.GATED).select_related("project").order_by("pk")
    for deployment in held:
        checklist = gates.checklist_of(deployment)
        waiting_on_ci = checklist is not None and any(
            check.gate == "ci" and check.state == gates.PENDING for check in checklist.checks
        )
        if waiting_on_ci and checklist is not None and checklist.sha:
            gates.commit_statuses_fetch(deployment.project, checklist.sha)
        decided += deployment_gates_reevaluate(deployment.pk, now=now) in ("released", "refused")
    return decided


def gates_preview(
    *,
    project: Project,
    user: User | None,
    servers: Sequence[Server] = (),
    group: ServerGroup | None = None,
    revision: str = "",
) -> gates.Checklist:
    """The checklist a manual deployment of ``revision`` to ``servers`` (or ``group``) would
    meet now (the deploy dialog's, the API's gates/check), without recording anything but
    the commit statuses read from the Git host's API for a CI gate with none stored."""
    targets = list(servers or (group.ordered_servers() if group is not None else ()))
    policies = gates.policies_for(project, targets, group)
    if not policies:
        return gates.Checklist(sha="", checks=(), max_wait_minutes=0)
    asked = gates.deployment_revision(
        project, revision.strip() or (group.branch if group is not None else ""), targets, group
    )
    commit = (gates.commit_of(project, asked) or "") if gates.needs_commit(policies) else ""
    gates.statuses_fetch_if_missing(project, commit, policies)
    return gates.gates_evaluate(
        project=project,
        servers=targets,
        group=group,
        sha=commit,
        automatic=False,
        requester=user if user is not None and user.is_authenticated else None,
        policies=policies,
    )


_POLICY_FIELDS = (
    "environment",
    "require_ci",
    "ci_contexts",
    "verified_on",
    "approvals_required",
    "approver_role",
    "require_rollback_target",
    "require_health_checks",
    "require_notifications",
    "max_wait_minutes",
)


def _policy_detail(policy: GatePolicy) -> dict[str, Any]:
    return {name: getattr(policy, name) for name in _POLICY_FIELDS}


def gate_policy_create(*, project: Project, actor: User | None, **fields: Any) -> GatePolicy:
    """Record the gates of one environment (builds.gates.gate_policy_clean checks the
    fields; InvalidInput naming the field, also for an environment that has one already);
    audited as ``gate_policy.created``."""
    fields = {name: value for name, value in fields.items() if name in _POLICY_FIELDS}
    gates.gate_policy_clean(fields)
    environment = fields.get("environment", "")
    if GatePolicy.objects.filter(project=project, environment=environment).exists():
        raise InvalidInput(
            "environment", f"Environment {environment or '(none)'} has its gates already."
        )
    with transaction.atomic():
        policy = GatePolicy.objects.create(project=project, **fields)
        audit_record(
            project=project,
            actor=actor,
            action="gate_policy.created",
            target=f"gates of {environment or '(no environment)'}",
            **_policy_detail(policy),
        )
    return policy


def gate_policy_update(*, policy: GatePolicy, actor: User | None, **fields: Any) -> GatePolicy:
    """Change a policy's fields (as gate_policy_create); audited as ``gate_policy.updated``.
    Deployments held now are checked again under the new policy by the next tick."""
    fields = {name: value for name, value in fields.items() if name in _POLICY_FIELDS}
    merged = {**_policy_detail(policy), **fields}
    gates.gate_policy_clean(merged)
    if (
        merged["environment"] != policy.environment
        and GatePolicy.objects.filter(project=policy.project, environment=merged["environment"])
        .exclude(pk=policy.pk)
        .exists()
    ):
        raise InvalidInput("environment", "That environment has its gates already.")
    with transaction.atomic():
        for name in _POLICY_FIELDS:
            setattr(policy, name, merged[name])
        policy.save()
        audit_record(
            project=policy.project,
            actor=actor,
            action="gate_policy.updated",
            target=str(policy),
            **_policy_detail(policy),
        )
    return policy


def gate_policy_delete(*, policy: GatePolicy, actor: User | None) -> None:
    with transaction.atomic():
        audit_record(
            project=policy.project,
            actor=actor,
            action="gate_policy.deleted",
            target=str(policy),
            **_policy_detail(policy),
        )
        policy.delete()


class ApprovalRefused(DeploymentRefused):
    """An approval that does not count: the requester's own, or from a role that may not."""

    code = "forbidden"


def deployment_approve(*, deployment: Deployment, user: User) -> Deployment:
    """Record ``user``'s approval of a held deployment (builds.gates' approvals gate), audited,
    then check its gates again (it runs when they all pass). DeploymentWrongState when it is
    not held by an approvals gate; ApprovalRefused (403) for the requester (no self-approval)
    or a member whose role no policy of its environments accepts; approving twice is
    idempotent."""
    if deployment.status != Status.GATED:
        raise DeploymentWrongState(
            f"Deployment #{deployment.pk} is {deployment.get_status_display().lower()}, not "
            "waiting for gates: there is nothing to approve."
        )
    servers = [target.server for target in deployment.targets.select_related("server")]
    policies = [
        policy
        for policy in gates.policies_for(deployment.project, servers, deployment.group)
        if policy.approvals_required
    ]
    if not policies:
        raise DeploymentWrongState(f"Deployment #{deployment.pk} needs no approval.")
    if deployment.triggered_by_id == user.pk:
        raise ApprovalRefused(
            "user", "You asked for this deployment: someone else must approve it."
        )
    membership = Membership.objects.filter(project=deployment.project, user=user).first()
    role = membership.role if membership is not None else ""
    accepted = {Role.ADMIN} | {
        Role.DEPLOYER for policy in policies if policy.approver_role == Role.DEPLOYER
    }
    if role not in accepted:
        raise ApprovalRefused(
            "user",
            f"Only {' or '.join(sorted(accepted))} members may approve deployment "
            f"#{deployment.pk}.",
        )
    with transaction.atomic():
        _, created = Approval.objects.get_or_create(deployment=deployment, user=user)
        if created:
            audit_record(
                project=deployment.project,
                actor=user,
                action="deployment.approved",
                target=f"deployment #{deployment.pk}",
            )
    if created:
        system_line(deployment, f"Approved by {user.get_username()}")
    deployment_gates_reevaluate(deployment.pk)
    deployment.refresh_from_db()
    return deployment


def deployment_gates_override(*, deployment: Deployment, user: User, reason: str) -> Deployment:
    """An admin lets a held deployment past its gates with ``reason`` (audited, as
    ``deployment.gates_overridden``); it is queued at once. GateOverrideForbidden for a
    non-admin, DeploymentRefused naming ``reason`` when it is empty, DeploymentWrongState
    when it is not held."""
    reason = reason.strip()[:MAX_REASON_LENGTH]
    if not reason:
        raise DeploymentRefused(
            "reason", "Say why the gates are overridden: the audit log keeps it."
        )
    if not _is_admin(deployment.project, user):
        raise GateOverrideForbidden("reason", "Only a project admin may deploy past the gates.")
    checklist = gates.checklist_of(deployment)
    override = {
        "by": user.get_username(),
        "reason": reason,
        "gates": [
            f"{check.environment}:{check.gate}"
            for check in (checklist.checks if checklist is not None else ())
            if check.state != gates.PASSED
        ],
    }
    if not _release_overridden(deployment.pk, override):
        raise DeploymentWrongState(f"Deployment #{deployment.pk} is not waiting for gates.")
    audit_record(
        project=deployment.project,
        actor=user,
        action="deployment.gates_overridden",
        target=f"deployment #{deployment.pk}",
        reason=reason,
        gates=override["gates"],
    )
    system_line(deployment, f"Gates overridden by {override['by']}: “{reason}”")
    deployment.refresh_from_db()
    deployment_broadcast_status(deployment)
    return deployment


@retrying
def _release_overridden(deployment_id: int, override: dict[str, Any]) -> bool:
    row = Deployment.objects.filter(pk=deployment_id).values("project_id", "gates").first()
    if row is None:
        return False
    project_lock(row["project_id"])
    if not Deployment.objects.filter(pk=deployment_id, status=Status.GATED).update(
        status=Status.QUEUED, gates={**row["gates"], "override": override}
    ):
        return False
    _dispatch_if_ready(deployment_id)
    return True


def deployment_request_cancel(deployment: Deployment) -> bool:
    """Cancel a queued deployment now, or ask a running one to stop at its next safe point."""
    outcome = _request_cancel(deployment)
    if outcome == "cancelled":
        deployment.refresh_from_db()
        deployment_broadcast_status(deployment)
    return outcome != ""


@retrying
def _request_cancel(deployment: Deployment) -> str:
    """ "cancelled" (it was queued), "requested" (it runs), or "" (nothing changed)."""
    project_lock(deployment.project_id)
    now = timezone.now()
    if Deployment.objects.filter(pk=deployment.pk, status__in=[Status.QUEUED, Status.GATED]).update(
        status=Status.CANCELLED, finished_at=now, error="Cancelled before it started"
    ):
        DeploymentTarget.objects.filter(
            deployment_id=deployment.pk, status=TargetStatus.QUEUED
        ).update(status=TargetStatus.CANCELLED, finished_at=now)
        system_line(deployment, "Cancelled before it started")
        return "cancelled"
    changed = Deployment.objects.filter(
        pk=deployment.pk, status=Status.RUNNING, cancel_requested_at=None
    ).update(cancel_requested_at=now)
    return "requested" if changed else ""


def deployment_promote(deployment: Deployment) -> bool:
    """Let a canary deployment waiting for a person go on to the other servers."""
    return bool(
        Deployment.objects.filter(
            pk=deployment.pk,
            status=Status.RUNNING,
            promote_requested_at=None,
            abort_requested_at=None,
        ).update(promote_requested_at=timezone.now())
    )


def deployment_abort(deployment: Deployment, *, user: User | None = None) -> bool:
    """Ask a running deployment to stop at its next safe point; when it ends, every server
    it had switched is rolled back by a rollback deployment (see _finish), ``user``'s."""
    return bool(
        Deployment.objects.filter(
            pk=deployment.pk, status=Status.RUNNING, abort_requested_at=None
        ).update(
            abort_requested_at=timezone.now(),
            abort_requested_by=user if user is not None and user.is_authenticated else None,
        )
    )


# --------------------------------------------------------------------------- requests from people
# What the API and the dashboard call: check the request, create, and record who asked.


class DeploymentFinished(Exception):
    """The deployment already finished, so it can no longer be changed (cancelled...)."""


@retrying
def deployment_start(
    *,
    project: Project,
    user: User | None,
    servers: Sequence[Server] = (),
    group: ServerGroup | None = None,
    revision: str = "",
    full: bool = False,
    preview: bool = False,
    skip_build: bool = False,
    skip_cache: bool = False,
    trigger: str = Trigger.API,
    freeze_override_reason: str = "",
    gates_override_reason: str = "",
) -> Deployment:
    """Deploy (or preview) ``revision``, by default each server's branch head, or the group's
    branch when the group has one. During a freeze an admin gives ``freeze_override_reason``,
    past a failed gate ``gates_override_reason`` (see deployment_create for what is refused,
    held and raised)."""
    if servers and group is not None:
        raise DeploymentRefused("group", "Give servers or a group, not both")
    if group is not None and group.project_id != project.pk:
        raise DeploymentRefused("group", f"Group {group.pk} is not part of project {project.slug}")
    revision = revision.strip()
    if revision:
        validate_ref(revision, field="revision")
    elif group is not None and group.branch:
        revision = group.branch
    kind = Kind.PREVIEW if preview else Kind.DEPLOY
    with transaction.atomic():
        deployment = deployment_create(
            project=project,
            servers=servers,
            group=group,
            revision=revision,
            kind=kind,
            trigger=trigger,
            user=user,
            full=full,
            skip_build=skip_build,
            skip_cache=skip_cache,
            freeze_override_reason=freeze_override_reason,
            gates_override_reason=gates_override_reason,
        )
        audit_record(
            project=project,
            actor=user,
            action="deployment.created",
            target=f"deployment #{deployment.pk}",
            kind=kind,
            revision=revision,
            servers=list(deployment.targets.values_list("server_id", flat=True)),
        )
    return deployment


@dataclass(frozen=True)
class RollbackPlan:
    """Where one server goes in a rollback, said before anything happens."""

    server: Server
    #: The release that will go live; None when the server has nothing to go back to.
    release: Release | None
    #: The release live now (None: none known).
    live: Release | None

    @property
    def live_until(self) -> datetime | None:
        """When the target stopped being live: when the live one went live."""
        if self.live is None:
            return None
        return self.live.went_live_at or self.live.created_at

    def describe(self) -> str:
        """ "web1: current → releases/NAME (abc1234)", or why there is no target."""
        if self.release is None:
            return f"{self.server.name}: no earlier release to go back to"
        return (
            f"{self.server.name}: current → releases/{self.release.name} "
            f"({self.release.revision[:7]})"
        )


def rollback_plan_server(server: Server) -> RollbackPlan:
    """The plan of a plain rollback of ``server`` (see rollback_target)."""
    return RollbackPlan(server=server, release=rollback_target(server), live=server.live_release())


def rollback_plan_deployment(deployment: Deployment) -> list[RollbackPlan]:
    """Where rolling back ``deployment`` takes each server it succeeded on (see
    rollback_release_of), in the deployment's order."""
    return [
        RollbackPlan(
            server=target.server,
            release=rollback_release_of(deployment, target.server),
            live=target.server.live_release(),
        )
        for target in deployment.targets.filter(status=TargetStatus.SUCCEEDED)
        .select_related("server")
        .order_by("position")
    ]


def rollback_release_of(deployment: Deployment, server: Server) -> Release | None:
    """The release undoing ``deployment`` puts live on ``server``: the one the server had
    before it (DeploymentTarget.previous_release) if still kept, else rollback_target."""
    target = DeploymentTarget.objects.filter(deployment=deployment, server=server).first()
    if target is not None and target.previous_release:
        kept = server.releases.filter(removed_at__isnull=True, name=target.previous_release)
        release = kept.first()
        if release is not None:
            return release
    return rollback_target(server)


def rollback_release_for(rollback: Deployment, server: Server) -> Release | None:
    """The kept release a rollback deployment switches ``server`` to: the one it names, else
    the one before what ``rollback.rollback_of`` made live, else the plain rollback target."""
    if rollback.rollback_release:
        return server.releases.filter(
            removed_at__isnull=True, name=rollback.rollback_release
        ).first()
    if rollback.rollback_of is not None:
        return rollback_release_of(rollback.rollback_of, server)
    return rollback_target(server)


@retrying
def deployment_rollback_server(
    *,
    server: Server,
    user: User | None,
    release: str = "",
    trigger: str = Trigger.API,
    lock_reason: str = "",
) -> Deployment:
    """Switch ``server`` back to a kept release (by default the one before the live one).
    With ``lock_reason``, the server is locked too (stack_lock), in the same transaction, so
    that nothing deploys the bad release again until someone unlocks it."""
    deploy_rights_check(project=server.project, user=user, servers=[server])
    if release:
        target = server.releases.filter(removed_at__isnull=True, name=release).first()
        if target is None:
            raise DeploymentRefused(
                "release", f"{release!r} is not a release kept on server {server.name}"
            )
        if target.live:
            raise DeploymentRefused("release", f"{release} is already live on {server.name}")
    else:
        target = rollback_target(server)
        if target is None:
            raise DeploymentRefused(
                "release", f"Server {server.name} keeps no earlier release to roll back to"
            )
    with transaction.atomic():
        deployment = deployment_create(
            project=server.project,
            servers=[server],
            kind=Kind.ROLLBACK,
            trigger=trigger,
            user=user,
            rollback_release=target.name,
        )
        audit_record(
            project=server.project,
            actor=user,
            action="rollback.created",
            target=f"deployment #{deployment.pk}",
            server=server.pk,
            release=target.name,
        )
        if lock_reason.strip():
            _lock_if_unlocked(project=server.project, server=server, user=user, reason=lock_reason)
    return deployment


@retrying
def deployment_rollback(
    *,
    deployment: Deployment,
    user: User | None,
    trigger: str = Trigger.API,
    lock_reason: str = "",
) -> Deployment:
    """Undo ``deployment`` on each server where it succeeded, with the strategy it ran with
    (its group's, or its own override): each server goes to rollback_release_of. With
    ``lock_reason``, the project is locked too (stack_lock), in the same transaction."""
    deploy_rights_check(project=deployment.project, user=user, servers=_its_servers(deployment))
    if deployment.status in ACTIVE:
        raise DeploymentRefused(
            "deployment",
            f"Deployment #{deployment.pk} is still {deployment.status}; wait until it "
            "finishes or cancel it",
        )
    servers = [
        target.server
        for target in deployment.targets.filter(status=TargetStatus.SUCCEEDED)
        .select_related("server")
        .order_by("position")
    ]
    if deployment.kind == Kind.SWITCH:
        raise DeploymentRefused(
            "deployment",
            f"Deployment #{deployment.pk} only switched the router: Switch back again instead",
        )
    if deployment.kind == Kind.PREVIEW or not servers:
        raise DeploymentRefused(
            "servers",
            f"Deployment #{deployment.pk} changed no server, so there is nothing to roll back",
        )
    with transaction.atomic():
        rollback = deployment_create(
            project=deployment.project,
            servers=servers,
            kind=Kind.ROLLBACK,
            trigger=trigger,
            user=user,
            rollback_of=deployment,
            # The servers go back the way they came: the group's batches, canaries, checks.
            group=deployment.group,
            strategy=deployment.strategy,
        )
        audit_record(
            project=deployment.project,
            actor=user,
            action="rollback.created",
            target=f"deployment #{rollback.pk}",
            rollback_of=deployment.pk,
            servers=[server.pk for server in servers],
        )
        if lock_reason.strip():
            _lock_if_unlocked(project=deployment.project, user=user, reason=lock_reason)
    return rollback


def retry_statuses(deployment: Deployment) -> tuple[str, ...]:
    """The target statuses a retry of ``deployment`` deploys again: TARGET_NOT_DEPLOYED, but
    for a blue-green deployment not ``skipped`` (the live colour, left as it was for Switch
    back on purpose)."""
    group = deployment.group
    strategy = deployment.strategy or (group.strategy if group is not None else "")
    if strategy == Strategy.BLUE_GREEN:
        return tuple(status for status in TARGET_NOT_DEPLOYED if status != TargetStatus.SKIPPED)
    return tuple(TARGET_NOT_DEPLOYED)


def retry_superseded(deployment: Deployment, servers: Sequence[Server]) -> str:
    """Why retrying ``deployment`` on ``servers`` would undo later work, or "": it was
    aborted or rolled back since, or a later deployment made a release on one of
    ``servers`` or switched one back (a rollback, a switch back). Retrying
    then would take a server back to an older revision than what came after."""
    undone = (
        Deployment.objects.filter(rollback_of=deployment)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    if deployment.abort_requested_at is not None:
        return "it was aborted, and its servers rolled back; deploy again instead"
    if undone:
        return f"it was rolled back by #{undone[0]}; deploy again instead"
    # A later deployment changed a server when it made a release there (live since, or not)
    # or switched it back to a kept one (a rollback, a switch back); one that failed before
    # it reached the server changed nothing.
    made = (
        Release.objects.filter(server__in=list(servers), deployment__pk__gt=deployment.pk)
        .select_related("deployment", "server")
        .order_by("deployment__pk")
        .first()
    )
    switched = (
        DeploymentTarget.objects.filter(
            server__in=list(servers),
            deployment__pk__gt=deployment.pk,
            deployment__kind__in=(Kind.ROLLBACK, Kind.SWITCH),
            status=TargetStatus.SUCCEEDED,
        )
        .select_related("deployment", "server")
        .order_by("deployment__pk")
        .first()
    )
    found = [
        (row.deployment, row.server)
        for row in (made, switched)
        if row is not None and row.deployment is not None
    ]
    if found:
        newer, server = min(found, key=lambda pair: pair[0].pk)
        return (
            f"{server.name} was deployed since (#{newer.pk}, {newer.kind}); a retry would "
            "take it back to an older revision. Deploy again instead"
        )
    return ""


@retrying
def deployment_retry(
    *,
    deployment: Deployment,
    user: User | None,
    trigger: str = Trigger.API,
    freeze_override_reason: str = "",
) -> Deployment:
    """Retry failed servers: deploy the revision ``deployment`` deployed (its resolved SHA,
    with its branch and options, group and strategy) again to its servers that did not take
    it (TARGET_NOT_DEPLOYED: failed, rolled back, cancelled, never reached); the servers it
    succeeded on are left alone. A manual deployment like any other: the stack lock and the
    freeze windows apply (deployment_create). Refused (DeploymentWrongState) while it is
    active, when every server succeeded, or when it would undo later work
    (retry_superseded), and (DeploymentRefused naming ``servers``) when a server to retry is
    disabled or when none is left in the project. A blue-green deployment's skipped live
    colour is never retried (retry_statuses)."""
    label = f"Deployment #{deployment.pk}"
    if deployment.kind != Kind.DEPLOY:
        raise DeploymentWrongState(f"{label} is a {deployment.kind}: only a deployment is retried")
    if deployment.status in ACTIVE:
        raise DeploymentWrongState(
            f"{label} is still {deployment.status}; wait until it finishes (or cancel it)"
        )
    targets = list(
        deployment.targets.filter(status__in=retry_statuses(deployment))
        .select_related("server")
        .order_by("position")
    )
    if not targets:
        if deployment.status == Status.SUCCEEDED:
            raise DeploymentWrongState(f"{label} succeeded on every server: nothing to retry")
        # Targets go with their servers: the failed ones were deleted since.
        raise DeploymentRefused(
            "servers",
            f"The servers {label.lower()} failed on are no longer part of project "
            f"{deployment.project.slug}: nothing to retry",
        )
    disabled = [target.server.name for target in targets if not target.server.enabled]
    if disabled:
        raise DeploymentRefused(
            "servers",
            f"{label} cannot be retried: {', '.join(disabled)} "
            f"{'is' if len(disabled) == 1 else 'are'} disabled. Enable "
            f"{'it' if len(disabled) == 1 else 'them'}, or deploy to the other servers.",
        )
    servers = [target.server for target in targets]
    superseded = retry_superseded(deployment, servers)
    if superseded:
        raise DeploymentWrongState(f"{label} cannot be retried: {superseded}")
    revision = deployment.end_revision or deployment.revision
    # What the deployment ran as %branch%: the one it was given, else (a deployment of the
    # head) the branch its servers follow, as the runner chose it.
    branch = deployment.branch or (
        "" if deployment.revision else sorted({s.effective_branch for s in servers})[0]
    )
    with transaction.atomic():
        retry = deployment_create(
            project=deployment.project,
            servers=servers,
            # With a group and servers both, the servers go with the group's strategy.
            group=deployment.group,
            revision=revision,
            branch=branch,
            kind=Kind.DEPLOY,
            trigger=trigger,
            user=user,
            full=deployment.full,
            skip_build=deployment.skip_build,
            skip_cache=deployment.skip_cache,
            config_only=deployment.config_only,
            retry_of=deployment,
            strategy=deployment.strategy,
            freeze_override_reason=freeze_override_reason,
        )
        audit_record(
            project=deployment.project,
            actor=user,
            action="deployment.retried",
            target=f"deployment #{retry.pk}",
            retry_of=deployment.pk,
            revision=revision,
            servers=[server.pk for server in servers],
        )
        succeeded = list(
            deployment.targets.filter(status=TargetStatus.SUCCEEDED)
            .order_by("position")
            .values_list("server__name", flat=True)
        )
        system_line(
            retry,
            f"Retrying deployment #{deployment.pk} on "
            f"{', '.join(server.name for server in servers)}"
            + (f"; left alone: {', '.join(succeeded)}" if succeeded else ""),
        )
    return retry


def promotion_servers(*, project: Project, to: str) -> list[Server]:
    """The servers ``to`` names in ``project``: an environment (every enabled server labelled
    with it), else server names separated by commas. DeploymentRefused naming ``to`` when it
    names nothing."""
    wanted = to.strip()
    if not wanted:
        raise DeploymentRefused("to", "Name an environment or servers to promote to")
    # A blue-green group's router switches traffic: the application never goes there.
    routers = ServerGroup.objects.filter(
        project=project, strategy=Strategy.BLUE_GREEN, router__isnull=False
    ).values("router_id")
    in_environment = list(
        Server.objects.filter(project=project, environment=wanted, enabled=True)
        .exclude(pk__in=routers)
        .order_by("name", "pk")
    )
    if in_environment:
        return in_environment
    names = [name.strip() for name in wanted.split(",") if name.strip()]
    found = {s.name: s for s in Server.objects.filter(project=project, name__in=names)}
    missing = [name for name in names if name not in found]
    if missing:
        raise DeploymentRefused(
            "to",
            f"{', '.join(missing)}: neither an environment with enabled servers nor a server "
            f"of project {project.slug}",
        )
    return [found[name] for name in names]


def _promotion_group(project: Project, servers: Sequence[Server]) -> ServerGroup | None:
    """The group a promotion goes through, so that its strategy applies (a blue-green group
    deploys its idle colour and switches the router, as a push does): the one group whose
    servers are exactly those promoted to. A blue-green group's router is never deployed to,
    and a blue-green group's servers are never promoted to apart from their group (that would
    replace the live colour in place): DeploymentRefused naming ``to``."""
    wanted = {server.pk for server in servers}
    for group in project.groups.prefetch_related("members").select_related("router"):
        members = {member.server_id for member in group.members.all()}
        router = group.router
        if group.is_blue_green and router is not None and router.pk in wanted:
            raise DeploymentRefused(
                "to",
                f"{router.name} is the router of blue-green group {group.name}: the "
                "application is never deployed to it",
            )
        if members and members == wanted:
            return group
        if group.is_blue_green and members & wanted:
            raise DeploymentRefused(
                "to",
                f"{', '.join(sorted(s.name for s in servers if s.pk in members))} belong to "
                f"blue-green group {group.name}: promote to all of its servers (and no other), "
                "so that the idle colour takes the build and the router switches",
            )
    return None


def artefact_promote(
    *,
    source: Deployment,
    servers: Sequence[Server],
    user: User | None,
    trigger: str = Trigger.MANUAL,
    freeze_override_reason: str = "",
    gates_override_reason: str = "",
) -> Deployment:
    """Build once, promote (docs/promote.md): a deployment that sends the build output
    ``source`` kept (or sent, for a promotion) to ``servers``, with no fetch and no build;
    it records ``promoted_from`` and the artefact. Refused (DeploymentWrongState) unless
    ``source`` is a deploy or a promotion that succeeded, and (DeploymentRefused naming
    ``deployment``) when its output was not kept or retention removed it; then as
    deployment_create refuses or holds any deployment (deploy rights, stack lock, freeze
    windows, the target environment's gates with an admin's ``gates_override_reason``,
    disabled or untrusted servers)."""
    label = f"Deployment #{source.pk}"
    if source.kind not in (Kind.DEPLOY, Kind.PROMOTE):
        raise DeploymentWrongState(f"{label} is a {source.kind}: only a deployment is promoted")
    if source.status != Status.SUCCEEDED:
        raise DeploymentWrongState(
            f"{label} is {source.status}: only a deployment that succeeded is promoted"
        )
    artefact = source.artefact
    if artefact is None:
        raise DeploymentRefused(
            "deployment",
            f"{label} kept no build output (it ran before outputs were kept, or keeping it "
            "failed: its log says why); deploy its revision instead",
        )
    if artefact.removed_at is not None:
        raise DeploymentRefused(
            "deployment",
            f"{label}'s build output ({artefact.digest[:12]}) was removed by the project's "
            f"artefact retention on {_when(artefact.removed_at)}; deploy its revision instead",
        )
    group = _promotion_group(source.project, servers)
    with transaction.atomic():
        promotion = deployment_create(
            project=source.project,
            servers=group.ordered_servers() if group is not None else servers,
            group=group,
            revision=artefact.revision,
            branch=source.branch,
            kind=Kind.PROMOTE,
            trigger=trigger,
            user=user,
            promoted_from=source,
            artefact=artefact,
            freeze_override_reason=freeze_override_reason,
            gates_override_reason=gates_override_reason,
        )
        audit_record(
            project=source.project,
            actor=user,
            action="deployment.promoted",
            target=f"deployment #{promotion.pk}",
            promoted_from=source.pk,
            artefact=artefact.digest,
            revision=artefact.revision,
            servers=[server.pk for server in servers],
        )
        system_line(
            promotion,
            f"Promoting the build output of deployment #{source.pk} (revision "
            f"{artefact.revision[:12]}, artefact {artefact.digest[:12]}) to "
            f"{', '.join(server.name for server in servers)}",
        )
    return promotion


@retrying
def group_switch_back(
    *, group: ServerGroup, user: User | None, trigger: str = Trigger.API
) -> Deployment:
    """Send a blue-green group's traffic back to the other colour, as it was left: a
    deployment of kind ``switch`` that changes no server, only the router
    (builds.runner). Refused (DeploymentRefused) unless the group is blue-green with a live
    colour, the other colour's servers have a live release, and nothing is queued or running
    on the group's servers (a deployment there could switch the router meanwhile)."""
    deploy_rights_check(
        project=group.project,
        user=user,
        servers=[*group.ordered_servers(), *([group.router] if group.router else [])],
    )
    if not group.is_blue_green:
        raise DeploymentRefused("group", f"Group {group.name} is not blue-green")
    if not group.live_colour:
        raise DeploymentRefused(
            "group", f"Group {group.name} has no live colour yet: nothing to switch back from"
        )
    colour = group.idle_colour
    members = group.members_of(colour)
    never = [m.server.name for m in members if m.server.live_release() is None]
    if not members or never:
        raise DeploymentRefused(
            "group",
            f"The {colour} servers of {group.name} have no release to send traffic to"
            + (f" ({', '.join(never)})" if never else ""),
        )
    servers = group.ordered_servers()
    with transaction.atomic():
        project_lock(group.project_id)
        busy = (
            DeploymentTarget.objects.filter(server__in=servers, status__in=TARGET_ACTIVE)
            .order_by("deployment_id")
            .values_list("deployment_id", flat=True)
            .first()
        )
        if busy is not None:
            raise DeploymentWrongState(
                f"Deployment #{busy} is queued or running on {group.name}'s servers: switch "
                "back once it has finished (or cancel or abort it first)"
            )
        deployment = deployment_create(
            project=group.project,
            servers=servers,
            group=group,
            kind=Kind.SWITCH,
            trigger=trigger,
            user=user,
        )
        audit_record(
            project=group.project,
            actor=user,
            action="group.switched_back",
            target=f"group {group.name}",
            deployment=deployment.pk,
            colour=colour,
        )
    return deployment


# --------------------------------------------------------------------------- stack locks
# shipit's lock: a person stops every deployment of a project (or of one server) but
# rollbacks, with a reason everyone sees, until someone unlocks it.


class LockStateError(Exception):
    """Locking what is locked already, or unlocking what is not (409 in the API)."""


def _lock_target(project: Project, server: Server | None) -> tuple[Any, str]:
    if server is not None:
        if server.project_id != project.pk:
            raise DeploymentRefused(
                "server", f"Server {server.pk} is not part of project {project.slug}"
            )
        return Server.objects.filter(pk=server.pk), f"server {server.name}"
    return Project.objects.filter(pk=project.pk), f"project {project.slug}"


@retrying
def stack_lock(
    *, project: Project, user: User | None, reason: str, server: Server | None = None
) -> None:
    """Lock ``project`` (or only ``server``): deployments are refused, rollbacks are not.

    ``reason`` is required (stripped, at most MAX_REASON_LENGTH characters), shown wherever
    the lock is and kept in the audit log. Raises DeploymentRefused naming ``reason`` when it
    is empty, LockStateError when it is locked already (its reason is not replaced), and
    DeployRightsForbidden when the user's deploy rights leave out the server (or, for the
    project's lock, any of its servers)."""
    deploy_rights_check(project=project, user=user, servers=_lock_scope(project, server))
    reason = reason.strip()
    if not reason:
        raise DeploymentRefused("reason", "Say why it is locked: everyone sees the reason.")
    if len(reason) > MAX_REASON_LENGTH:
        raise DeploymentRefused("reason", f"Keep the reason under {MAX_REASON_LENGTH} characters.")
    rows, label = _lock_target(project, server)
    with transaction.atomic():
        project_lock(project.pk)
        changed = rows.filter(locked_at__isnull=True).update(
            locked_at=timezone.now(),
            locked_by=user if user is not None and user.is_authenticated else None,
            lock_reason=reason,
        )
        if not changed:
            raise LockStateError(f"{label[0].upper()}{label[1:]} is locked already.")
        audit_record(
            project=project,
            actor=user,
            action="server.locked" if server is not None else "project.locked",
            target=label,
            reason=reason,
        )


def _lock_if_unlocked(
    *, project: Project, user: User | None, reason: str, server: Server | None = None
) -> None:
    # A rollback that offers to lock what is locked already keeps the lock that is there.
    with contextlib.suppress(LockStateError):
        stack_lock(project=project, user=user, reason=reason, server=server)


@retrying
def stack_unlock(*, project: Project, user: User | None, server: Server | None = None) -> None:
    """Lift the lock of ``project`` (or of ``server``), recording who did and the reason it
    had; LockStateError when it was not locked."""
    deploy_rights_check(project=project, user=user, servers=_lock_scope(project, server))
    rows, label = _lock_target(project, server)
    with transaction.atomic():
        project_lock(project.pk)
        held = rows.filter(locked_at__isnull=False).values("lock_reason", "locked_by__username")
        previous = held.first()
        if previous is None or not rows.filter(locked_at__isnull=False).update(
            locked_at=None, locked_by=None, lock_reason=""
        ):
            raise LockStateError(f"{label[0].upper()}{label[1:]} is not locked.")
        audit_record(
            project=project,
            actor=user,
            action="server.unlocked" if server is not None else "project.unlocked",
            target=label,
            reason=previous["lock_reason"],
            locked_by=previous["locked_by__username"] or "",
        )


@retrying
def _lock_scope(project: Project, server: Server | None) -> list[Server]:
    """The servers a lock stops: the one server, or every server of the project."""
    return [server] if server is not None else list(project.servers.all())


def _its_servers(deployment: Deployment) -> list[Server]:
    """The servers a deployment works on: its targets', and a blue-green group's router."""
    servers = list(Server.objects.filter(targets__deployment=deployment).distinct())
    group = deployment.group
    if group is not None and group.is_blue_green and group.router is not None:
        servers.append(group.router)
    return servers


def deployment_cancel(*, deployment: Deployment, user: User | None) -> Deployment:
    """Cancel a queued deployment, or ask a running one to stop; DeploymentFinished if it
    is over already."""
    deploy_rights_check(project=deployment.project, user=user, servers=_its_servers(deployment))
    if deployment.status in FINAL:
        raise DeploymentFinished(f"Deployment #{deployment.pk} already {deployment.status}")
    changed = deployment_request_cancel(deployment)
    deployment.refresh_from_db()
    if not changed and deployment.status in FINAL:
        raise DeploymentFinished(f"Deployment #{deployment.pk} already {deployment.status}")
    if changed:
        audit_record(
            project=deployment.project,
            actor=user,
            action="deployment.cancelled",
            target=f"deployment #{deployment.pk}",
        )
    return deployment


LOG_PAGE_SIZE = 1000


@dataclass(frozen=True)
class LogPage:
    lines: list[LogLine]
    #: The deployment is over and no stored line comes after these.
    complete: bool
    status: str


def deployment_log_page(
    deployment: Deployment, *, after: int = 0, limit: int = LOG_PAGE_SIZE
) -> LogPage:
    # The status is read before the lines: a deployment seen final has flushed every line.
    status = Deployment.objects.values_list("status", flat=True).get(pk=deployment.pk)
    lines, more = stored_lines_after(deployment.pk, after, max(1, min(limit, LOG_PAGE_SIZE)))
    return LogPage(lines=lines, complete=status in FINAL and not more, status=status)


# --------------------------------------------------------------------------- strategies
# A deployment's strategy override, and the decisions a person takes on a running one.


class DeploymentWrongState(Exception):
    """The deployment is not in the state the request needs (promote: a waiting canary)."""


@retrying
def deployment_start_with_strategy(*, strategy: str, **options: Any) -> Deployment:
    """``deployment_start`` with the group's strategy overridden for this deployment
    (``strategy=""`` keeps the group's, or parallel without a group)."""
    if strategy == Strategy.BLUE_GREEN:
        raise DeploymentRefused(
            "strategy",
            "blue_green is a group's strategy (its colours and router): set it on the group",
        )
    if strategy and strategy not in Strategy.values:
        raise DeploymentRefused(
            "strategy", f"{strategy!r} must be one of {', '.join(Strategy.values)}"
        )
    with transaction.atomic():
        deployment = deployment_start(**options)
        if strategy:
            # Inside the transaction: the worker is sent the deployment only once it commits.
            Deployment.objects.filter(pk=deployment.pk).update(strategy=strategy)
            deployment.strategy = strategy
    return deployment


@retrying
def deployment_request_promotion(*, deployment: Deployment, user: User | None) -> Deployment:
    """Let a canary deployment waiting for a person go on to its other servers;
    DeploymentWrongState unless it is running and waiting."""
    deploy_rights_check(project=deployment.project, user=user, servers=_its_servers(deployment))
    with transaction.atomic():
        waiting = (
            deployment.status == Status.RUNNING
            and deployment.targets.filter(status=TargetStatus.WAITING).exists()
        )
        if not waiting or not deployment_promote(deployment):
            deployment.refresh_from_db()
            raise DeploymentWrongState(_not_waiting(deployment))
        audit_record(
            project=deployment.project,
            actor=user,
            action="deployment.promoted",
            target=f"deployment #{deployment.pk}",
        )
    deployment.refresh_from_db()
    return deployment


def _not_waiting(deployment: Deployment) -> str:
    if deployment.status != Status.RUNNING:
        return f"Deployment #{deployment.pk} is {deployment.status}, not waiting for promotion"
    if deployment.abort_requested_at is not None:
        return f"Deployment #{deployment.pk} is being aborted"
    if deployment.promote_requested_at is not None:
        return f"Deployment #{deployment.pk} was promoted already"
    return f"Deployment #{deployment.pk} has no server waiting for promotion"


@retrying
def deployment_request_abort(*, deployment: Deployment, user: User | None) -> Deployment:
    """Abort and roll back: stop a running deployment, then roll back every server it had
    switched (a rollback deployment, recorded when it ends). DeploymentWrongState unless it
    is a running deployment (a queued one, or a rollback, is cancelled instead)."""
    deploy_rights_check(project=deployment.project, user=user, servers=_its_servers(deployment))
    with transaction.atomic():
        if deployment.kind != Kind.DEPLOY:
            raise DeploymentWrongState(
                f"Deployment #{deployment.pk} is a {deployment.kind}: cancel it instead "
                "(an abort rolls back what a deployment switched)"
            )
        if not deployment_abort(deployment, user=user):
            deployment.refresh_from_db()
            if deployment.status == Status.QUEUED:
                message = f"Deployment #{deployment.pk} has not started; cancel it instead"
            elif deployment.status != Status.RUNNING:
                message = f"Deployment #{deployment.pk} already {deployment.status}"
            else:
                message = f"Deployment #{deployment.pk} is being aborted already"
            raise DeploymentWrongState(message)
        audit_record(
            project=deployment.project,
            actor=user,
            action="deployment.aborted",
            target=f"deployment #{deployment.pk}",
        )
    deployment.refresh_from_db()
    return deployment
