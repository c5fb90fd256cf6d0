"""Webhook services: record each delivery, choose what a push deploys, create the deployments.

Record-then-act, in two steps. At the door (``webhook_receive``) the delivery row is inserted
with the parsed pushes and a message for the `webhooks` queue (deployer.outbox, in the same
transaction), and the sender is answered at once. The row claims the provider's delivery id
and the digest of its signed body, so a redelivery, or the same signed body replayed under a
new id, finds it and creates nothing. A worker then processes it (``webhook_process``): finds
the servers, creates and supersedes deployments, reads commit-message commands.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from django.db import DatabaseError, IntegrityError, connection, transaction
from django.utils import timezone

from builds import gates
from builds.models import (
    WEBHOOK_ID_OWNERS,
    Deployment,
    Status,
    Trigger,
    WebhookDelivery,
    WebhookOutcome,
)
from builds.services import DeploymentRefused, deployment_create
from deployer import outbox
from deployer.db import project_lock
from projects.models import CommitDeploys, Membership, Project
from projects.services import audit_record
from servers.models import Server, ServerGroup

if TYPE_CHECKING:
    from builds.webhooks import InboundDelivery

logger = logging.getLogger(__name__)

#: The Celery task that processes a project's waiting deliveries (builds.tasks; routed to
#: `webhooks`). Its argument is the project's id; one message per project waits at a time.
PROCESS_WEBHOOKS_TASK = "builds.tasks.process_webhooks"
#: The Celery task that checks a project's held deployments again after a commit status
#: arrived (builds.tasks; routed to `webhooks`); one message per project waits at a time.
REEVALUATE_GATES_TASK = "builds.tasks.reevaluate_gates"
#: The same for one delivery's id: what deliveries recorded before 2026-12 carry.
PROCESS_WEBHOOK_TASK = "builds.tasks.process_webhook_delivery"
#: The first key of the PostgreSQL advisory lock that orders a project's processing.
_PROCESSING_LOCK_CLASS = 0x5357_4B48  # "SWKH"

# Rejected requests are recorded so a user can see why a delivery failed (a wrong secret),
# but they come from anyone who knows the URL: keep only the newest few per project.
KEEP_REJECTED_PER_PROJECT = 100

_SKIP_DEPLOY = re.compile(r"\[\s*(?:skip[\s_-]*deploy|deploy[\s_-]*skip)\s*\]", re.IGNORECASE)
_SKIP_BUILD = re.compile(r"\[\s*skip[\s_-]*build\s*\]", re.IGNORECASE)
_SKIP_CACHE = re.compile(r"\[\s*skip[\s_-]*cache\s*\]", re.IGNORECASE)
_FROM_SCRATCH = re.compile(r"\[\s*from[\s_-]*scratch\s*\]", re.IGNORECASE)
_CONFIG_ONLY = re.compile(r"\[\s*config[\s_-]*only\s*\]", re.IGNORECASE)
# [deploy: production] or, for a name with spaces, [deploy: "EU Production"].
_DEPLOY_TO = re.compile(r"\[\s*deploy\s*:\s*(?:\"([^\"\]]+)\"|([^\"\]]+?))\s*\]", re.IGNORECASE)


@dataclass(frozen=True)
class RefPush:
    """One ref a push moved, in the same terms whichever provider sent it (builds.webhooks
    parses it; the delivery row stores it as a dict until a worker processes it)."""

    ref: str
    kind: Literal["branch", "tag", "other"]
    name: str
    # The new head's full SHA; "" when the ref was deleted or for custom JSON's "latest".
    head: str
    deleted: bool = False
    # The head commit's whole message: commit-message commands are read from it.
    message: str = ""
    subjects: tuple[str, ...] = ()
    # Who pushed, as the Git host says (GitHub and Gitea: pusher; GitLab: user_email and
    # user_username; Bitbucket: actor, without an email): whose deploy rights a
    # [deploy: name] command is checked against ("" when the host does not say).
    pusher_email: str = ""
    pusher: str = ""

    @classmethod
    def from_stored(cls, stored: dict[str, Any]) -> RefPush:
        """The push from its stored dict (``WebhookDelivery.pushes``)."""
        return cls(
            ref=str(stored.get("ref", "")),
            kind=stored.get("kind", "other"),
            name=str(stored.get("name", "")),
            head=str(stored.get("head", "")),
            deleted=bool(stored.get("deleted", False)),
            message=str(stored.get("message", "")),
            subjects=tuple(stored.get("subjects", ())),
            pusher_email=str(stored.get("pusher_email", "")),
            pusher=str(stored.get("pusher", "")),
        )


@dataclass(frozen=True)
class CommitCommands:
    """What the head commit's message asks for, as DeployHQ reads it."""

    skip: bool = False
    skip_build: bool = False
    skip_cache: bool = False
    full: bool = False
    config_only: bool = False
    deploy_to: tuple[str, ...] = ()


def commit_commands(message: str) -> CommitCommands:
    return CommitCommands(
        skip=bool(_SKIP_DEPLOY.search(message)),
        skip_build=bool(_SKIP_BUILD.search(message)),
        skip_cache=bool(_SKIP_CACHE.search(message)),
        full=bool(_FROM_SCRATCH.search(message)),
        config_only=bool(_CONFIG_ONLY.search(message)),
        deploy_to=tuple((quoted or bare).strip() for quoted, bare in _DEPLOY_TO.findall(message)),
    )


@dataclass
class Targets:
    """What one branch push deploys: whole groups, plus one deployment for the other servers."""

    groups: list[ServerGroup] = field(default_factory=list)
    servers: list[Server] = field(default_factory=list)
    # Why something was not deployed, shown on the delivery.
    notes: list[str] = field(default_factory=list)


def _group_branch(group: ServerGroup) -> str:
    return group.branch or group.project.branch


def _accepts_command_deploys(target: Server | ServerGroup) -> bool:
    """Whether ``[deploy: name]`` may deploy to this server or group.

    DeployHQ asks each server to opt in. Slipway has no such setting yet, so every server and
    group does; a per-server flag belongs here when it is added.
    """
    return True


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _ascii_lower(email: str) -> str:
    return email.strip().translate(_ASCII_LOWER)


def command_deploy_refusal(
    *, project: Project, pusher_email: str, pusher: str, servers: Sequence[Server]
) -> str | None:
    """Why ``[deploy: name]`` may not add ``servers`` for this pusher, or None when it may.

    The command is a person's request, so it is checked against the deploy rights
    (docs/users.md#deploy-rights) of the project's member whose email (case-insensitive) the
    Git host reports as the pusher's: a viewer, or a deployer whose rights do not cover every
    one of ``servers``, is refused. A pusher Slipway cannot match to a member is refused when
    the project takes such commands from members only (``Project.commit_deploys``).
    """
    who = pusher_email or pusher or "an unnamed pusher"
    members = (
        list(
            Membership.objects.filter(project=project, user__email__iexact=pusher_email)
            .select_related("user")
            .prefetch_related("deploy_servers")
        )
        if pusher_email
        else []
    )
    # The database's case-insensitive match folds more than ASCII (PostgreSQL's upper() makes
    # a dotless i (U+0131) an "I", a long s (U+017F) an "S"): a Git host account with a
    # look-alike email must not be taken for a member. Only ASCII letters' case is ignored.
    members = [m for m in members if _ascii_lower(m.user.email) == _ascii_lower(pusher_email)]
    if members:
        if any(all(m.may_deploy_to(server) for server in servers) for m in members):
            return None
        refused = sorted(
            {s.name for s in servers for m in members if not m.may_deploy_to(s)},
            key=str.casefold,
        )
        return (
            f"the pusher ({who}, {members[0].user.get_username()} here) may not deploy to "
            f"{', '.join(refused)}: their deploy rights do not cover it"
        )
    if project.commit_deploys == CommitDeploys.MEMBERS:
        return (
            f"the pusher ({who}) is no member of {project.name}, which takes [deploy: name] "
            "only from members whose deploy rights cover the target"
        )
    return None


def webhook_targets(
    *,
    project: Project,
    branch: str,
    deploy_to: Sequence[str] = (),
    pusher_email: str = "",
    pusher: str = "",
) -> Targets:
    """Choose what a push to ``branch`` deploys.

    Each group with auto-deploy whose branch (or the project's) matches gets a deployment of
    its own; every other enabled server with auto-deploy on that branch shares one. A server
    in a matching group is left to the group, so a group is never deployed by halves.
    ``[deploy: name]`` adds a server or group without auto-deploy, on the same branch only:
    until servers can opt in, a commit on any branch must not reach any server. What it adds
    must be within the pusher's deploy rights (``command_deploy_refusal``).
    """

    def refusal(servers: Sequence[Server]) -> str | None:
        return command_deploy_refusal(
            project=project, pusher_email=pusher_email, pusher=pusher, servers=servers
        )

    targets = Targets()
    groups = list(project.groups.prefetch_related("members"))
    servers = list(project.servers.all())
    wanted = {name.casefold(): name for name in deploy_to}
    found: set[str] = set()

    targets.groups = [g for g in groups if g.auto_deploy and _group_branch(g) == branch]
    for group in groups:
        key = group.name.casefold()
        if key not in wanted:
            continue
        found.add(key)
        if group in targets.groups:
            continue
        if not _accepts_command_deploys(group):
            targets.notes.append(f"[deploy: {group.name}]: the group does not accept it")
        elif _group_branch(group) != branch:
            targets.notes.append(
                f"[deploy: {group.name}]: the group deploys branch {_group_branch(group)}, "
                f"not {branch}"
            )
        elif (
            why := refusal(
                [member.server for member in group.members.all()]
                + ([group.router] if group.is_blue_green and group.router else [])
            )
        ) is not None:
            targets.notes.append(f"[deploy: {group.name}]: {why}")
        else:
            targets.groups.append(group)
    for group in list(targets.groups):
        if not group.members.all():
            targets.groups.remove(group)
            targets.notes.append(f"Group {group.name} has no servers")
    covered = {member.server_id for group in targets.groups for member in group.members.all()}
    # A blue-green group's router switches traffic: a push never deploys the app to it.
    routers = {group.router_id for group in groups if group.is_blue_green and group.router_id}

    chosen = [
        server
        for server in servers
        if server.enabled
        and server.auto_deploy
        and server.effective_branch == branch
        and server.pk not in covered
        and server.pk not in routers
    ]
    for server in servers:
        key = server.name.casefold()
        if key not in wanted:
            continue
        found.add(key)
        if server in chosen or server.pk in covered:
            continue
        blue_green = next(
            (
                g
                for g in groups
                if g.is_blue_green and any(m.server_id == server.pk for m in g.members.all())
            ),
            None,
        )
        if not server.enabled:
            targets.notes.append(f"[deploy: {server.name}]: the server is disabled")
        elif server.pk in routers:
            # As a push never does: the router switches traffic, the application never goes there.
            targets.notes.append(
                f"[deploy: {server.name}]: the server is a blue-green group's router"
            )
        elif blue_green is not None:
            # Alone it would replace the live colour in place: the group deploys it.
            targets.notes.append(
                f"[deploy: {server.name}]: the server belongs to blue-green group "
                f"{blue_green.name}; name the group"
            )
        elif not _accepts_command_deploys(server):
            targets.notes.append(f"[deploy: {server.name}]: the server does not accept it")
        elif server.effective_branch != branch:
            targets.notes.append(
                f"[deploy: {server.name}]: the server deploys branch "
                f"{server.effective_branch}, not {branch}"
            )
        elif (why := refusal([server])) is not None:
            targets.notes.append(f"[deploy: {server.name}]: {why}")
        else:
            chosen.append(server)
    for key, name in wanted.items():
        if key not in found:
            targets.notes.append(f"[deploy: {name}]: no server or group has this name")

    for server in chosen:
        if server.trusted:
            targets.servers.append(server)
        else:
            targets.notes.append(
                f"Server {server.name} skipped: {server.untrusted_hop} is not trusted yet"
            )
    targets.servers.sort(key=lambda server: (server.position, server.name))
    return targets


def webhook_reject(
    *, project: Project, provider: str, event: str, delivery_id: str, reason: str
) -> WebhookDelivery:
    """Record a refused request: who claimed to send it and why it was refused, no body."""
    record = WebhookDelivery.objects.create(
        project=project,
        provider=provider,
        event=event,
        delivery_id=delivery_id,
        outcome=WebhookOutcome.REJECTED,
        reason=reason,
    )
    stale = list(
        WebhookDelivery.objects.filter(project=project, outcome=WebhookOutcome.REJECTED)
        .order_by("-received_at", "-id")
        .values_list("pk", flat=True)[KEEP_REJECTED_PER_PROJECT:]
    )
    if stale:
        WebhookDelivery.objects.filter(pk__in=stale).delete()
    return record


def webhook_receive(*, project: Project, inbound: InboundDelivery) -> WebhookDelivery:
    """Record an authenticated delivery and queue its processing; return the row.

    The row's outcome is "accepted" (a worker processes it: ``webhook_process``), "ignored"
    for an event that deploys nothing (a ping), or "duplicate" when the delivery id or the
    signed body was received before. A few queries, no lookups of servers: the sender is
    answered at once. The processing message is the project's (deployer.outbox, key
    ``webhooks_key``): recorded in the same transaction unless one no worker has started yet
    is waiting already, whose task then processes this delivery too. So an accepted delivery
    is never left without a message, and a burst of pushes costs one message per worker pass,
    not one per delivery.
    """
    if inbound.statuses:
        return _record_statuses(project=project, inbound=inbound)
    # One row per delivery: a Bitbucket push of several refs shows the first that moved.
    first = next((push for push in inbound.pushes if push.head), None) or next(
        iter(inbound.pushes), None
    )
    record = WebhookDelivery(
        project=project,
        provider=inbound.provider,
        event=inbound.event,
        delivery_id=inbound.delivery_id,
        body_digest=inbound.body_digest,
        ref=first.ref[:255] if first else "",
        head=first.head if first else "",
        summary=inbound.summary,
        outcome=WebhookOutcome.IGNORED if inbound.ignored_reason else WebhookOutcome.ACCEPTED,
        reason=inbound.ignored_reason,
        pushes=[] if inbound.ignored_reason else [asdict(push) for push in inbound.pushes],
        processed_at=timezone.now() if inbound.ignored_reason else None,
    )
    try:
        # Two copies of one delivery can arrive at once: the unique constraints on the
        # delivery id and on the body's digest let exactly one of them through. The INSERT
        # comes first in the transaction, so a refused one rolls back nothing else (no
        # savepoint: two round trips less at the door).
        with transaction.atomic():
            record.save()
            if record.outcome == WebhookOutcome.ACCEPTED:
                outbox.enqueue(PROCESS_WEBHOOKS_TASK, project.pk, key=webhooks_key(project.pk))
    except IntegrityError:
        return _record_duplicate(project=project, inbound=inbound, record=record)
    return record


def _record_statuses(*, project: Project, inbound: InboundDelivery) -> WebhookDelivery:
    """A commit status delivery: stored at once for the CI gate (builds.gates), outcome
    "recorded"; when the project has deployments held by their gates, a message checks them
    again (one waits per project, key ``gates:<project>``)."""
    first = inbound.statuses[0]
    record = WebhookDelivery(
        project=project,
        provider=inbound.provider,
        event=inbound.event,
        delivery_id=inbound.delivery_id,
        body_digest=inbound.body_digest,
        head=first.sha,
        outcome=WebhookOutcome.RECORDED,
        reason="; ".join(
            f"Commit status {report.context}: {report.state} on {report.sha[:7]}"
            for report in inbound.statuses
        ),
        processed_at=timezone.now(),
    )
    try:
        with transaction.atomic():
            record.save()
            gates.commit_status_record(
                project=project, reports=inbound.statuses, source=inbound.provider
            )
            if Deployment.objects.filter(project=project, status=Status.GATED).exists():
                outbox.enqueue(REEVALUATE_GATES_TASK, project.pk, key=f"gates:{project.pk}")
    except IntegrityError:
        return _record_duplicate(project=project, inbound=inbound, record=record)
    return record


def webhooks_key(project_id: int) -> str:
    """The outbox key of a project's processing message."""
    return f"webhooks:{project_id}"


#: How many of a project's waiting deliveries one task processes at most (oldest first).
PROCESS_BATCH = 200


def webhook_process(delivery_id: int) -> int:
    """Process the waiting deliveries of the project that ``delivery_id`` belongs to (see
    webhook_process_project); 0 when that delivery was processed already. For messages
    recorded one per delivery, before the project's message (PROCESS_WEBHOOK_TASK)."""
    project_id = (
        WebhookDelivery.objects.filter(pk=delivery_id, outcome=WebhookOutcome.ACCEPTED)
        .values_list("project_id", flat=True)
        .first()
    )
    return 0 if project_id is None else webhook_process_project(project_id)


def webhook_process_project(project_id: int) -> int:
    """Process a project's waiting deliveries: create the deployments their pushes ask for.
    Returns how many deliveries this call processed (0 when another worker did it already).

    Deliveries are processed in the order they were received, under a transaction-scoped
    advisory lock per project (PostgreSQL; SQLite serialises writers anyway), in batches of
    PROCESS_BATCH, until none waits. The task calls deployer.outbox.consumed first, which
    waits for every delivery that counted on this message (webhook_receive), so none is left
    behind. Within a batch, a planned deployment whose servers a newer delivery of the batch
    deploys too is not created (outcome "superseded"): it would have been superseded at once.
    An error of ours in one delivery marks it "failed" (logged) and rolls back only what it
    had created; a database error (DatabaseError) rolls the batch back and is raised, for the
    task to retry.
    """
    project = Project.objects.filter(pk=project_id).first()
    if project is None:
        return 0
    processed = 0
    while True:
        # One transaction per batch: its deployments reach the workers when it commits.
        with transaction.atomic():
            _lock_project_processing(project_id)
            waiting = list(
                WebhookDelivery.objects.filter(
                    project_id=project_id, outcome=WebhookOutcome.ACCEPTED
                ).order_by("pk")[:PROCESS_BATCH]
            )
            processed += _process_batch(project, waiting)
        if len(waiting) < PROCESS_BATCH:
            return processed


#: Seconds an accepted delivery may wait before the sweep looks at it (webhooks_sweep).
SWEEP_AFTER = 120


def webhooks_sweep(*, after: float = SWEEP_AFTER) -> int:
    """Queue processing again for projects whose accepted deliveries were left waiting: their
    task failed for good (a database away longer than its retries) or its worker died while
    processing (the message was consumed, the work rolled back). Returns how many messages
    were queued: one per such project. A project whose message no worker took yet is left
    alone (deployer.outbox's relay looks after that one). Run by the reaper
    (builds.tasks.reap_stale_deployments).
    """
    cutoff = timezone.now() - timedelta(seconds=after)
    projects = (
        WebhookDelivery.objects.filter(outcome=WebhookOutcome.ACCEPTED, received_at__lt=cutoff)
        .values_list("project_id", flat=True)
        .distinct()
    )
    queued = 0
    for project_id in projects:
        with transaction.atomic():
            message = outbox.enqueue(
                PROCESS_WEBHOOKS_TASK, project_id, key=webhooks_key(project_id)
            )
        if message is None:
            continue
        logger.warning(
            "Webhook deliveries of project %s waited over %s s unprocessed; queued again",
            project_id,
            after,
        )
        queued += 1
    return queued


def _lock_project_processing(project_id: int) -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_advisory_xact_lock(%s, %s)", [_PROCESSING_LOCK_CLASS, project_id]
            )
    # Then the project's lock, the first step of the lock order (deployer.db), before any
    # delivery row is touched: deleting the project takes it before deleting the deliveries.
    project_lock(project_id)


@dataclass
class _Plan:
    """One deployment a push asks for, before it is created."""

    group: ServerGroup | None
    servers: list[Server]
    server_ids: frozenset[int]
    push: RefPush
    commands: CommitCommands
    # The newer delivery of the batch that deploys all these servers too, if any.
    superseded_by: int | None = None

    @property
    def label(self) -> str:
        return f"Group {self.group.name}" if self.group is not None else "Servers"


@dataclass
class _Work:
    record: WebhookDelivery
    pushes: list[RefPush]
    plans: list[_Plan] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failed: bool = False


def _process_batch(project: Project, records: Sequence[WebhookDelivery]) -> int:
    # The processing lock is held: no one else claims these rows. One UPDATE claims them all
    # (a task message delivered twice finds nothing left).
    now = timezone.now()
    WebhookDelivery.objects.filter(pk__in=[record.pk for record in records]).update(
        outcome=WebhookOutcome.IGNORED, processed_at=now
    )
    works: list[_Work] = []
    for record in records:
        record.outcome, record.processed_at = WebhookOutcome.IGNORED, now
        pushes = [RefPush.from_stored(stored) for stored in record.pushes]
        works.append(_Work(record=record, pushes=pushes))
    targets_cache: dict[tuple[str, tuple[str, ...], str, str], Targets] = {}
    for work in works:
        try:
            for push in work.pushes:
                plans, notes = _plan_push(project, push, targets_cache)
                work.plans += plans
                work.notes += notes
        except DatabaseError:
            raise
        except Exception:
            logger.exception("Webhook delivery %s could not be processed", work.record.pk)
            work.failed = True
    # Newest first: which servers a newer delivery of the batch deploys, and which delivery.
    deployed_later: dict[int, int] = {}
    for work in reversed(works):
        for plan in work.plans:
            if plan.server_ids and plan.server_ids <= deployed_later.keys():
                plan.superseded_by = max(deployed_later[pk] for pk in plan.server_ids)
        for plan in work.plans:
            deployed_later.update(dict.fromkeys(plan.server_ids, work.record.pk))
    for work in works:
        _deliver_or_fail(project, work)
    return len(works)


def _deliver_or_fail(project: Project, work: _Work) -> None:
    if not work.failed:
        try:
            with transaction.atomic():
                _deliver(project, work)
            return
        except DatabaseError:
            # The connection or the transaction is gone: the task retries the whole batch.
            raise
        except Exception:
            logger.exception("Webhook delivery %s could not be processed", work.record.pk)
    WebhookDelivery.objects.filter(pk=work.record.pk).update(
        outcome=WebhookOutcome.FAILED,
        reason="Internal error while processing the delivery: nothing was deployed. "
        "The worker's log has the details.",
        pushes=_without_messages(work.pushes),
    )


def _deliver(project: Project, work: _Work) -> None:
    record = work.record
    created: list[Deployment] = []
    notes = list(work.notes)
    superseded: list[str] = []
    for plan in work.plans:
        if plan.superseded_by is not None:
            superseded.append(f"{plan.label}: superseded by delivery #{plan.superseded_by}")
            continue
        try:
            created.append(_create(project, plan))
        except DeploymentRefused as refused:
            notes.append(f"{plan.label}: {refused}")
    if created:
        record.outcome = WebhookOutcome.QUEUED
    elif superseded:
        record.outcome = WebhookOutcome.SUPERSEDED
    else:
        record.outcome = WebhookOutcome.IGNORED
        if not notes:
            notes += [
                f"No server or group deploys branch {push.name} automatically"
                for push in work.pushes
            ]
    record.reason = "\n".join(superseded + notes)
    # The commit message (commands) was only needed until now; the summary keeps subjects.
    record.pushes = _without_messages(work.pushes)
    record.save(update_fields=["outcome", "reason", "pushes"])
    if created:
        record.deployments.add(*created)
        audit_record(
            project=project,
            actor=None,
            action="webhook.deployments_created",
            target=f"{record.get_provider_display()} {record.ref}",
            delivery=record.pk,
            delivery_id=record.delivery_id,
            head=record.head,
            deployments=[deployment.pk for deployment in created],
        )


def _without_messages(pushes: Sequence[RefPush]) -> list[dict[str, Any]]:
    return [{**asdict(push), "message": ""} for push in pushes]


def _record_duplicate(
    *, project: Project, inbound: InboundDelivery, record: WebhookDelivery
) -> WebhookDelivery:
    owners = WebhookDelivery.objects.filter(project=project, outcome__in=WEBHOOK_ID_OWNERS)
    same_id = (
        bool(inbound.delivery_id)
        and owners.filter(provider=inbound.provider, delivery_id=inbound.delivery_id).exists()
    )
    if same_id:
        reason = f"Delivery {inbound.delivery_id} was received before: nothing was created"
    else:
        original = owners.filter(body_digest=inbound.body_digest).first()
        reason = (
            "The same signed body was received before"
            + (f" (delivery {original.pk})" if original is not None else "")
            + ": a replay under a new delivery id creates nothing"
        )
    return WebhookDelivery.objects.create(
        project=project,
        provider=inbound.provider,
        event=inbound.event,
        delivery_id=inbound.delivery_id,
        body_digest=inbound.body_digest,
        ref=record.ref,
        head=record.head,
        outcome=WebhookOutcome.DUPLICATE,
        reason=reason,
    )


def _tag_targets(project: Project, push: RefPush) -> Targets:
    """What a tag push deploys: nothing yet.

    No server can ask for tags today. When one can (say a "deploy tags matching v*" setting),
    choose those servers here and the rest of the delivery works unchanged.
    """
    return Targets(notes=[f"Tag {push.name}: no server deploys tags, so nothing was deployed"])


def _plan_push(
    project: Project,
    push: RefPush,
    targets_cache: dict[tuple[str, tuple[str, ...], str, str], Targets],
) -> tuple[list[_Plan], list[str]]:
    """The deployments one push asks for, and notes on what it does not deploy and why.

    ``targets_cache`` keeps webhook_targets' answer per (branch, [deploy: ...] names, pusher) for the
    pushes of one batch, which read the same servers and groups.
    """
    if push.deleted:
        return [], [f"{push.ref} was deleted: nothing to deploy"]
    if push.kind == "other":
        return [], [f"{push.ref} is neither a branch nor a tag: nothing to deploy"]
    commands = commit_commands(push.message)
    if commands.skip:
        return [], [f"{push.name}: the commit message says [skip deploy]"]
    if push.kind == "tag":
        targets = _tag_targets(project, push)
    else:
        key = (push.name, commands.deploy_to, push.pusher_email, push.pusher)
        if key not in targets_cache:
            targets_cache[key] = webhook_targets(
                project=project,
                branch=push.name,
                deploy_to=commands.deploy_to,
                pusher_email=push.pusher_email,
                pusher=push.pusher,
            )
        targets = targets_cache[key]
    plans = [
        _Plan(
            group=group,
            servers=[],
            server_ids=frozenset(member.server_id for member in group.members.all()),
            push=push,
            commands=commands,
        )
        for group in targets.groups
    ]
    if targets.servers:
        plans.append(
            _Plan(
                group=None,
                servers=targets.servers,
                server_ids=frozenset(server.pk for server in targets.servers),
                push=push,
                commands=commands,
            )
        )
    return plans, list(targets.notes)


def _create(project: Project, plan: _Plan) -> Deployment:
    push, commands = plan.push, plan.commands
    return deployment_create(
        project=project,
        group=plan.group,
        servers=plan.servers,
        # Custom JSON's "latest" has no SHA: the branch name resolves to its tip on the worker.
        revision=push.head or push.name,
        branch=push.name,
        trigger=Trigger.WEBHOOK,
        full=commands.full,
        skip_build=commands.skip_build,
        skip_cache=commands.skip_cache,
        config_only=commands.config_only,
    )
