"""Deployments, their per-server targets, steps and log lines.

The state vocabulary is defined here once (Status, TargetStatus with ACTIVE/FINAL tuples) and
reused by queries, templates and the API.
"""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.contrib.auth.models import User
from django.db import models
from django.utils import timezone


class Status(models.TextChoices):
    # Held by the environment's gates (builds.gates): no worker message, its targets queued
    # (so a newer deployment of those servers supersedes it); it is queued when every gate
    # passes, refused when one fails, and expires after the policy's wait (docs/gates.md).
    GATED = "gated", "Waiting for gates"
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


ACTIVE = (Status.GATED, Status.QUEUED, Status.RUNNING)
FINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)


class TargetStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    WAITING = "waiting", "Waiting"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"
    SKIPPED = "skipped", "Skipped"
    ROLLED_BACK = "rolled_back", "Rolled back"


TARGET_ACTIVE = (TargetStatus.QUEUED, TargetStatus.RUNNING, TargetStatus.WAITING)
TARGET_FINAL = (
    TargetStatus.SUCCEEDED,
    TargetStatus.FAILED,
    TargetStatus.CANCELLED,
    TargetStatus.SKIPPED,
    TargetStatus.ROLLED_BACK,
)
#: A finished deployment's servers that did not take its release (failed, rolled back after
#: a failed check, cancelled before the switch, or never reached): what "Retry failed
#: servers" deploys again.
TARGET_NOT_DEPLOYED = (
    TargetStatus.FAILED,
    TargetStatus.CANCELLED,
    TargetStatus.SKIPPED,
    TargetStatus.ROLLED_BACK,
)


class Kind(models.TextChoices):
    DEPLOY = "deploy", "Deploy"
    ROLLBACK = "rollback", "Rollback"
    PREVIEW = "preview", "Preview"
    # A blue-green group's router sent back to the other colour (no server is changed).
    SWITCH = "switch", "Switch back"
    # Another deployment's kept build output sent to other servers: no fetch, no build
    # (docs/promote.md).
    PROMOTE = "promote", "Promote"


class Trigger(models.TextChoices):
    MANUAL = "manual", "Manual"
    WEBHOOK = "webhook", "Webhook"
    API = "api", "API"
    SCHEDULE = "schedule", "Schedule"


class DeploymentQuerySet(models.QuerySet["Deployment"]):
    def active(self) -> DeploymentQuerySet:
        return self.filter(status__in=ACTIVE)

    def finished(self) -> DeploymentQuerySet:
        return self.filter(status__in=FINAL)

    def for_user(self, user: User) -> DeploymentQuerySet:
        return self.filter(project__memberships__user=user)


class Deployment(models.Model):
    project = models.ForeignKey(
        "projects.Project", on_delete=models.CASCADE, related_name="deployments"
    )
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.DEPLOY)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.QUEUED)
    # The step it is at while running (free text such as "transfer"), for the live page.
    stage = models.CharField(max_length=50, blank=True)
    group = models.ForeignKey(
        "servers.ServerGroup",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="deployments",
    )
    # What the user asked for (branch, tag or SHA), and what it resolved to.
    revision = models.CharField(max_length=255, blank=True)
    branch = models.CharField(max_length=255, blank=True)
    start_revision = models.CharField(max_length=40, blank=True)
    end_revision = models.CharField(max_length=40, blank=True)
    trigger = models.CharField(max_length=20, choices=Trigger.choices, default=Trigger.MANUAL)
    triggered_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Options: full upload, skip build commands, ignore the build cache, config files only.
    full = models.BooleanField(default=False)
    skip_build = models.BooleanField(default=False)
    skip_cache = models.BooleanField(default=False)
    config_only = models.BooleanField(default=False)
    # For a rollback: the release name to go back to ("" = the one live before).
    rollback_release = models.CharField(max_length=100, blank=True)
    # Overrides the group's strategy for this deployment ("" = the group's, or parallel).
    strategy = models.CharField(max_length=30, blank=True)
    rollback_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="rollbacks"
    )
    # "Retry failed servers": the finished deployment whose failed servers this one deploys.
    retry_of = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="retries"
    )
    # Build once, promote (docs/promote.md): the build output this deployment kept (a
    # deploy) or sent (a promote), and for a promote the deployment that built it.
    artefact = models.ForeignKey(
        "builds.Artefact",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="deployments",
    )
    promoted_from = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="promotions"
    )
    # Added/modified/deleted paths and bytes, kept for previews and the deployment page.
    changes = models.JSONField(default=dict, blank=True)
    commits = models.JSONField(default=list, blank=True)
    # The earliest author date of the commits it brought (previous live revision..new
    # revision), recorded by the runner: where DORA's lead time for changes starts
    # (builds.dora, docs/metrics.md). Null: a rollback, a first deployment, an empty range,
    # or a deployment recorded before this was kept.
    first_commit_at = models.DateTimeField(null=True, blank=True)
    # Settings as code (docs/settings-as-code.md): what the revision's .slipway.yml set, for
    # a project that takes settings from its repository: {"revision", "found", "keys",
    # "changed": {key: {"project": ..., "file": ...}}, "effective": {key: ...}}; {} otherwise.
    settings_file = models.JSONField(default=dict, blank=True)
    # The gates it passed or waits for (builds.gates, docs/gates.md): {"sha", "checks": [{"gate",
    # "state", "detail"}], "override": {"by", "reason", "gates"}}; {} when no gate applies.
    gates = models.JSONField(default=dict, blank=True)
    # A deployment held by its gates is refused when they have not all passed by then.
    gates_until = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    error_code = models.CharField(max_length=50, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    # A canary deployment waiting for a person: promote it to the other servers, or abort it.
    promote_requested_at = models.DateTimeField(null=True, blank=True)
    abort_requested_at = models.DateTimeField(null=True, blank=True)
    # Who aborted it: the rollback that undoes what it switched is theirs
    # (builds.services: the abort's rollback is recorded when the deployment ends).
    abort_requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    task_id = models.CharField(max_length=255, blank=True)
    worker = models.CharField(max_length=255, blank=True)
    log_seq = models.PositiveIntegerField(default=0)

    objects = DeploymentQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            # The reaper looks only at running deployments.
            models.Index(
                fields=["heartbeat_at"],
                condition=models.Q(status="running"),
                name="running_heartbeat",
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.kind} {self.project_id}"

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE

    @property
    def duration_seconds(self) -> float | None:
        if not self.started_at:
            return None
        end = self.finished_at or timezone.now()
        return (end - self.started_at).total_seconds()


class ArtefactQuerySet(models.QuerySet["Artefact"]):
    def kept(self) -> ArtefactQuerySet:
        return self.filter(removed_at__isnull=True)


class Artefact(models.Model):
    """A deployment's build output kept for promotion (docs/promote.md): its files are in
    the project's store on disk (builds.engine.artefacts, under SLIPWAY_ARTEFACT_DIR), named
    by ``digest``, the SHA-256 of its manifest. ``removed_at``: retention deleted it (the row
    stays, so a promotion of it is refused with a reason)."""

    project = models.ForeignKey(
        "projects.Project", on_delete=models.CASCADE, related_name="artefacts"
    )
    # The deploy that built it (null once retention removed that deployment's row).
    deployment = models.ForeignKey(
        Deployment, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    revision = models.CharField(max_length=40)
    digest = models.CharField(max_length=64)
    files = models.PositiveIntegerField(default=0)
    size = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    removed_at = models.DateTimeField(null=True, blank=True)

    objects = ArtefactQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            # Two deployments that built the same bytes share one artefact.
            models.UniqueConstraint(fields=["project", "digest"], name="unique_artefact_digest"),
        ]

    def __str__(self) -> str:
        return f"artefact {self.digest[:12]} of {self.project_id}"


class DeploymentTarget(models.Model):
    """One server's part in a deployment, with its own status, release and error."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="targets")
    server = models.ForeignKey("servers.Server", on_delete=models.CASCADE, related_name="targets")
    status = models.CharField(
        max_length=20, choices=TargetStatus.choices, default=TargetStatus.QUEUED
    )
    position = models.PositiveIntegerField(default=0)
    release = models.CharField(max_length=100, blank=True)
    previous_release = models.CharField(max_length=100, blank=True)
    start_revision = models.CharField(max_length=40, blank=True)
    reason = models.TextField(blank=True)
    files_total = models.PositiveIntegerField(default=0)
    files_done = models.PositiveIntegerField(default=0)
    bytes_total = models.BigIntegerField(default=0)
    bytes_done = models.BigIntegerField(default=0)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    #: The deployment's worker was lost and the server could not be read then (unreachable):
    #: whether ``current`` switched is unknown, and the reaper reads the server again
    #: (builds.reconcile).
    state_unknown = models.BooleanField(default=False)

    class Meta:
        ordering = ["position", "id"]
        constraints = [
            models.UniqueConstraint(fields=["deployment", "server"], name="unique_target_server"),
            # At most one running and one queued deployment per server; a newer queued one
            # supersedes the older (see builds.services.deployment_create).
            models.UniqueConstraint(
                fields=["server", "status"],
                condition=models.Q(status__in=["queued", "running"]),
                name="one_active_target_per_state",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.deployment_id} → {self.server_id}"


class Step(models.Model):
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="steps")
    server = models.ForeignKey(
        "servers.Server", null=True, blank=True, on_delete=models.CASCADE, related_name="+"
    )
    name = models.CharField(max_length=100)
    status = models.CharField(
        max_length=20, choices=TargetStatus.choices, default=TargetStatus.RUNNING
    )
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["started_at", "id"]

    def __str__(self) -> str:
        return self.name


class Stream(models.TextChoices):
    STDOUT = "stdout", "stdout"
    STDERR = "stderr", "stderr"
    SYSTEM = "system", "system"


class LogLine(models.Model):
    """One line of a deployment's log; seq orders lines within the deployment, from 1."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="log_lines")
    seq = models.PositiveIntegerField()
    stream = models.CharField(max_length=10, choices=Stream.choices, default=Stream.STDOUT)
    server = models.ForeignKey(
        "servers.Server", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    text = models.TextField()
    time = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["seq"]
        constraints = [models.UniqueConstraint(fields=["deployment", "seq"], name="unique_log_seq")]

    def __str__(self) -> str:
        return f"{self.seq}: {self.text}"


class WebhookProvider(models.TextChoices):
    GITHUB = "github", "GitHub"
    GITLAB = "gitlab", "GitLab"
    BITBUCKET = "bitbucket", "Bitbucket Cloud"
    GITEA = "gitea", "Gitea"
    FORGEJO = "forgejo", "Forgejo"
    CUSTOM = "custom", "Custom JSON"


class WebhookOutcome(models.TextChoices):
    # Recorded and answered; a worker has not processed it yet (builds.webhook_services).
    ACCEPTED = "accepted", "Accepted"
    QUEUED = "queued", "Queued"
    IGNORED = "ignored", "Ignored"
    # A newer delivery, processed with it, deploys the same servers: no deployment was created
    # only to be superseded at once (coalescing).
    SUPERSEDED = "superseded", "Superseded"
    # Processing it raised an error of ours (the worker's log has it); nothing was created.
    FAILED = "failed", "Failed"
    DUPLICATE = "duplicate", "Duplicate"
    REJECTED = "rejected", "Rejected"
    # A commit status (GitHub and Gitea "status", GitLab "Pipeline Hook"), stored for the
    # CI gate (builds.gates); it deploys nothing by itself.
    RECORDED = "recorded", "Commit status recorded"


# Only accepted deliveries own their delivery id. A rejected one (a forged or mis-signed
# request) must not, or whoever knows the URL could burn the id of a real delivery in advance.
WEBHOOK_ID_OWNERS = (
    WebhookOutcome.ACCEPTED,
    WebhookOutcome.QUEUED,
    WebhookOutcome.IGNORED,
    WebhookOutcome.SUPERSEDED,
    WebhookOutcome.FAILED,
    WebhookOutcome.RECORDED,
)


class WebhookDeliveryQuerySet(models.QuerySet["WebhookDelivery"]):
    def latest_per_project(self, limit: int = 10) -> WebhookDeliveryQuerySet:
        """The newest ``limit`` deliveries of each project, newest first (for the dashboard)."""
        from django.db.models import F, Window
        from django.db.models.functions import RowNumber

        ranked = self.annotate(
            project_rank=Window(
                RowNumber(),
                partition_by=[F("project_id")],
                order_by=[F("received_at").desc(), F("id").desc()],
            )
        )
        return ranked.filter(project_rank__lte=limit).order_by("project_id", "project_rank")


class WebhookDelivery(models.Model):
    """One request received on a project's webhook URL, and what Slipway did about it.

    The payload itself is never stored (it may hold private data), nor any credential: only
    the ref, the head SHA, a short summary (commit subjects) and, until a worker processed the
    delivery, the parsed pushes it needs (``pushes``).
    """

    project = models.ForeignKey(
        "projects.Project", on_delete=models.CASCADE, related_name="webhook_deliveries"
    )
    provider = models.CharField(max_length=20, choices=WebhookProvider.choices)
    # The provider's event name as sent ("push", "Push Hook", "repo:push", "ping").
    event = models.CharField(max_length=100, blank=True)
    # The provider's id of this delivery, the same on a redelivery; "" when none was sent.
    delivery_id = models.CharField(max_length=255, blank=True)
    # SHA-256 of the raw body of a signed (or Git host's) delivery: the same body under a new
    # delivery id is a replay. "" when the body proves nothing (bearer-token custom JSON).
    body_digest = models.CharField(max_length=64, blank=True)
    ref = models.CharField(max_length=255, blank=True)
    head = models.CharField(max_length=64, blank=True)
    outcome = models.CharField(max_length=20, choices=WebhookOutcome.choices)
    reason = models.TextField(blank=True)
    # Commit subjects of the push, a few and shortened; never the payload.
    summary = models.JSONField(default=list, blank=True)
    deployments = models.ManyToManyField(Deployment, blank=True, related_name="webhook_deliveries")
    # What processing needs, parsed at the door: builds.webhook_services.RefPush as dicts
    # (ref, kind, name, head, deleted, message, subjects). The head commit's message is
    # dropped once the delivery is processed.
    pushes = models.JSONField(default=list, blank=True)
    received_at = models.DateTimeField(default=timezone.now)
    # When a worker processed it (outcome no longer "accepted"); None before.
    processed_at = models.DateTimeField(null=True, blank=True)

    objects = WebhookDeliveryQuerySet.as_manager()

    class Meta:
        ordering = ["-received_at", "-id"]
        constraints = [
            # A redelivery (same provider, same id) is answered "duplicate" and creates nothing;
            # the database decides when two copies arrive at once.
            models.UniqueConstraint(
                fields=["project", "provider", "delivery_id"],
                condition=~models.Q(delivery_id="") & models.Q(outcome__in=WEBHOOK_ID_OWNERS),
                name="unique_webhook_delivery",
            ),
            # A signed body replayed under a new delivery id (or another provider's headers)
            # is a duplicate too: the id is not signed, the body is.
            models.UniqueConstraint(
                fields=["project", "body_digest"],
                condition=~models.Q(body_digest="") & models.Q(outcome__in=WEBHOOK_ID_OWNERS),
                name="unique_webhook_body",
            ),
        ]
        indexes = [
            models.Index(fields=["project", "-received_at"], name="webhook_delivery_by_project"),
            # The worker's scan: a project's deliveries still to process, oldest first.
            models.Index(
                fields=["project", "id"],
                condition=models.Q(outcome="accepted"),
                name="webhook_delivery_pending",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.provider} {self.event} {self.outcome}"


class ScheduleKind(models.TextChoices):
    ONCE = "once", "Once, at a date and time"
    DAILY = "daily", "Every day at a time"
    WEEKLY = "weekly", "Every week, on some days at a time"
    CRON = "cron", "A cron expression"


class ScheduleQuerySet(models.QuerySet["Schedule"]):
    def due(self, now: datetime) -> ScheduleQuerySet:
        """Enabled schedules whose next slot has come (builds.schedules.schedules_tick)."""
        return self.filter(enabled=True, next_run_at__lte=now)


class Schedule(models.Model):
    """A deployment that starts by itself: once, or at each slot of a recurring rule.

    Daily and weekly rules are cron expressions too (builds.schedules.cron_expression), read
    by cronsim in ``time_zone``. ``next_run_at`` is the next slot (UTC); None once a one-off
    schedule ran. Claiming a slot moves it forward with a conditional UPDATE, and each slot
    has at most one ScheduleRun: a slot never deploys twice.
    """

    project = models.ForeignKey(
        "projects.Project", on_delete=models.CASCADE, related_name="schedules"
    )
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=10, choices=ScheduleKind.choices)
    # Once: the instant, stored in UTC (entered as a date and time in ``time_zone``).
    run_at = models.DateTimeField(null=True, blank=True)
    # Daily and weekly: the local time of day; weekly: the days, 0 = Monday.
    time_of_day = models.TimeField(null=True, blank=True)
    weekdays = models.JSONField(default=list, blank=True)
    cron = models.CharField(max_length=100, blank=True)
    # An IANA name ("Europe/Paris"): the rule follows its daylight saving time.
    time_zone = models.CharField(max_length=64, default="UTC")
    # What to deploy: a group, or servers (in this order).
    group = models.ForeignKey(
        "servers.ServerGroup",
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="schedules",
    )
    servers = models.ManyToManyField("servers.Server", blank=True, related_name="schedules")
    # A branch, tag or SHA; "" = each server's branch (or the group's).
    revision = models.CharField(max_length=255, blank=True)
    # Skip a slot when every server already runs the revision's current commit.
    skip_unchanged = models.BooleanField(default=True)
    enabled = models.BooleanField(default=True)
    next_run_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    objects = ScheduleQuerySet.as_manager()

    class Meta:
        ordering = ["name", "id"]
        indexes = [
            # The tick's scan: enabled schedules by their next slot.
            models.Index(
                fields=["next_run_at"],
                condition=models.Q(enabled=True),
                name="schedule_due",
            ),
        ]

    def __str__(self) -> str:
        return self.name


class ScheduleOutcome(models.TextChoices):
    # Claimed; a worker decides what to do with it (builds.schedules.schedule_run).
    PENDING = "pending", "Pending"
    DEPLOYED = "deployed", "Deployed"
    SKIPPED = "skipped", "Skipped"
    FAILED = "failed", "Failed"


class ScheduleRun(models.Model):
    """One slot of a schedule and what came of it: a deployment, or why none."""

    schedule = models.ForeignKey(Schedule, on_delete=models.CASCADE, related_name="runs")
    slot = models.DateTimeField()
    outcome = models.CharField(
        max_length=10, choices=ScheduleOutcome.choices, default=ScheduleOutcome.PENDING
    )
    # Why it skipped ("frozen", "locked", "unchanged"...), a code for filters and the API.
    reason_code = models.CharField(max_length=20, blank=True)
    reason = models.TextField(blank=True)
    deployment = models.ForeignKey(
        Deployment, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    claimed_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-slot", "-id"]
        constraints = [
            # The last word on "never twice for one slot", whatever claimed it.
            models.UniqueConstraint(fields=["schedule", "slot"], name="one_run_per_slot"),
        ]

    def __str__(self) -> str:
        return f"{self.schedule_id} @ {self.slot:%Y-%m-%d %H:%M} {self.outcome}"


class GatePolicy(models.Model):
    """What a deployment to one environment of a project must pass before anything is sent
    (builds.gates, docs/gates.md). ``environment`` is a server's (or group's) environment
    label; "" is the policy of servers without one."""

    project = models.ForeignKey(
        "projects.Project", on_delete=models.CASCADE, related_name="gate_policies"
    )
    environment = models.CharField(max_length=50, blank=True)
    # The revision's commit statuses are all green (Slipway's own "slipway/..." ignored);
    # ``ci_contexts`` names those that must be there ([] = whichever were reported).
    require_ci = models.BooleanField(default=False)
    ci_contexts = models.JSONField(default=list, blank=True)
    # The same commit succeeded on a server of this environment first ("" = no such gate).
    verified_on = models.CharField(max_length=50, blank=True)
    # Distinct members holding ``approver_role`` (or admin), not the requester, approved it.
    approvals_required = models.PositiveSmallIntegerField(default=0)
    approver_role = models.CharField(max_length=20, default="admin")
    require_rollback_target = models.BooleanField(default=False)
    require_health_checks = models.BooleanField(default=False)
    require_notifications = models.BooleanField(default=False)
    # How long a held webhook or schedule deployment waits for its gates, in minutes.
    max_wait_minutes = models.PositiveIntegerField(default=60)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["environment", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "environment"], name="one_gate_policy_per_environment"
            )
        ]

    def __str__(self) -> str:
        return f"gates of {self.environment or '(no environment)'}"


class CommitState(models.TextChoices):
    PENDING = "pending", "Pending"
    SUCCESS = "success", "Success"
    FAILURE = "failure", "Failure"
    ERROR = "error", "Error"


class CommitStatus(models.Model):
    """One CI context's latest state for a commit of a project, from a Git host's webhook
    (GitHub/Gitea ``status``, GitLab ``Pipeline Hook``) or read from its API (builds.gates)."""

    project = models.ForeignKey(
        "projects.Project", on_delete=models.CASCADE, related_name="commit_statuses"
    )
    sha = models.CharField(max_length=64)
    context = models.CharField(max_length=255)
    state = models.CharField(max_length=20, choices=CommitState.choices)
    description = models.CharField(max_length=255, blank=True)
    # "github", "gitlab", "gitea" (a webhook) or "api:<kind>" (read from the host's API).
    source = models.CharField(max_length=30, blank=True)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["context", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "sha", "context"], name="one_commit_status_per_context"
            )
        ]

    def __str__(self) -> str:
        return f"{self.sha[:7]} {self.context}: {self.state}"


class Approval(models.Model):
    """A member's approval of a deployment held by an approvals gate (builds.gates)."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="approvals")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(fields=["deployment", "user"], name="one_approval_per_user")
        ]

    def __str__(self) -> str:
        return f"{self.user_id} approved {self.deployment_id}"


class DriftStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    CLEAN = "clean", "Clean"
    DRIFTED = "drifted", "Drifted"
    FAILED = "failed", "Failed"


DRIFT_ACTIVE = (DriftStatus.QUEUED, DriftStatus.RUNNING)
DRIFT_CONCLUSIVE = (DriftStatus.CLEAN, DriftStatus.DRIFTED)


class DriftTrigger(models.TextChoices):
    MANUAL = "manual", "On request"
    SCHEDULED = "scheduled", "Scheduled"


class DriftCheck(models.Model):
    """One comparison of a server's live release with the manifest Slipway deployed there
    (builds.drift_checks, builds.engine.drift): what it found, or why it could not say.

    ``files`` keeps the first DRIFT_FILES_KEPT drifted paths, each
    ``{"path", "change" (added|changed|removed), "size" (bytes), "mtime" (ISO 8601 or null)}``;
    the counts are of all of them. ``fingerprint`` (SHA-256 of the sorted path/change list)
    tells a drift already reported from a new one: only a new one notifies.
    """

    server = models.ForeignKey(
        "servers.Server", on_delete=models.CASCADE, related_name="drift_checks"
    )
    release = models.ForeignKey(
        "servers.Release", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    release_name = models.CharField(max_length=100, blank=True)
    status = models.CharField(
        max_length=10, choices=DriftStatus.choices, default=DriftStatus.QUEUED
    )
    trigger = models.CharField(
        max_length=10, choices=DriftTrigger.choices, default=DriftTrigger.MANUAL
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    checked_count = models.PositiveIntegerField(default=0)
    added_count = models.PositiveIntegerField(default=0)
    changed_count = models.PositiveIntegerField(default=0)
    removed_count = models.PositiveIntegerField(default=0)
    files = models.JSONField(default=list, blank=True)
    fingerprint = models.CharField(max_length=64, blank=True)
    # Whether finding this drift recorded notifications (a new drift, not one seen before).
    notified = models.BooleanField(default=False)
    error = models.TextField(blank=True)
    error_code = models.CharField(max_length=50, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            # One check at a time per server: a second request, or a scheduled tick racing
            # another, finds the active one instead of starting its own.
            models.UniqueConstraint(
                fields=["server"],
                condition=models.Q(status__in=["queued", "running"]),
                name="one_active_drift_check_per_server",
            ),
        ]
        indexes = [models.Index(fields=["server", "-created_at"], name="drift_check_recent")]

    def __str__(self) -> str:
        return f"drift check {self.pk} of server {self.server_id}: {self.status}"

    @property
    def files_total(self) -> int:
        return self.added_count + self.changed_count + self.removed_count

    @property
    def is_active(self) -> bool:
        return self.status in DRIFT_ACTIVE
