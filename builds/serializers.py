"""The API's shapes for deployments, their targets, steps and log."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from builds.dora import DEFAULT_DAYS, MAX_DAYS, WINDOWS, DayFigures, DoraReport
from builds.gates import APPROVER_ROLES, FAILED, GATES, PASSED, PENDING
from builds.logs import LOG_PAGE_CHARS, line_payload
from builds.models import (
    FINAL,
    Deployment,
    DeploymentTarget,
    GatePolicy,
    Kind,
    LogLine,
    Schedule,
    ScheduleRun,
    Status,
    Step,
)
from builds.schedules import describe_rule
from builds.services import LOG_PAGE_SIZE, MAX_REASON_LENGTH, rollback_plan_deployment
from deployer.api import api_url
from deployer.links import deployment_page
from projects.serializers import (
    LockSerializer,
    ProjectServerField,
    SettingSerializer,
    WallClockTimeField,
)
from servers.models import ServerGroup, Strategy


class TargetSerializer(serializers.ModelSerializer[DeploymentTarget]):
    server_name = serializers.CharField(source="server.name", read_only=True)

    class Meta:
        model = DeploymentTarget
        fields = [
            "server",
            "server_name",
            "status",
            "release",
            "previous_release",
            "reason",
            "files_done",
            "files_total",
            "bytes_done",
            "bytes_total",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields


class StepSerializer(serializers.ModelSerializer[Step]):
    class Meta:
        model = Step
        fields = ["name", "server", "status", "started_at", "finished_at"]
        read_only_fields = fields


class ExcludedSerializer(serializers.Serializer[Any]):
    pattern = serializers.CharField(help_text="The exclude pattern, as written.")
    origin = serializers.CharField(
        help_text="Where it comes from: excluded files, .deployignore or generated paths."
    )
    count = serializers.IntegerField(
        help_text="Paths it removed (a folder removed whole counts once)."
    )
    examples = serializers.ListField(
        child=serializers.CharField(), help_text="The first few, folders ending in '/'."
    )


class ChangesSerializer(serializers.Serializer[Any]):
    added = serializers.ListField(child=serializers.CharField())
    modified = serializers.ListField(child=serializers.CharField())
    deleted = serializers.ListField(child=serializers.CharField())
    bytes = serializers.IntegerField(help_text="Bytes to send (after compression).")
    excluded = ExcludedSerializer(
        many=True, help_text="What each exclude pattern removed from the build (previews)."
    )


class CommitSerializer(serializers.Serializer[Any]):
    sha = serializers.CharField()
    author = serializers.CharField()
    date = serializers.CharField()
    subject = serializers.CharField()


class GateCheckSerializer(serializers.Serializer[Any]):
    gate = serializers.ChoiceField(choices=[(gate, gate) for gate in GATES])
    label = serializers.CharField()  # type: ignore[assignment]
    environment = serializers.CharField(help_text='The policy\'s environment ("" = none).')
    state = serializers.ChoiceField(choices=[(s, s) for s in (PASSED, PENDING, FAILED)])
    detail = serializers.CharField()


class GatesSerializer(serializers.Serializer[Any]):
    sha = serializers.CharField(
        allow_blank=True, required=False, help_text="The commit checked (absent: no gate)."
    )
    checks = GateCheckSerializer(many=True, required=False)
    override = serializers.DictField(
        required=False, help_text="An admin's override: {by, reason, gates}."
    )


class GatesCheckAnswerSerializer(GatesSerializer):
    outcome = serializers.ChoiceField(
        choices=[("deploy", "deploy"), ("wait", "wait"), ("refuse", "refuse")],
        help_text="What creating the deployment now would do: deploy at once, wait for "
        "pending gates (held), or refuse on a failed gate (unless an admin overrides).",
    )


class DeploymentSummarySerializer(serializers.ModelSerializer[Deployment]):
    """A deployment in a list: everything but its steps, changes and commits."""

    project: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="slug", read_only=True
    )
    targets = TargetSerializer(many=True, read_only=True)
    triggered_by: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True
    )
    strategy = serializers.SerializerMethodField(
        help_text="The strategy it runs with: its own override, else its group's, else parallel."
    )
    gates = serializers.SerializerMethodField(
        help_text="Its environments' gates (docs/gates.md): the commit checked and each "
        "gate's state; {} when none applies."
    )
    approved_by = serializers.SerializerMethodField(
        help_text="Who approved it (an approvals gate), oldest first."
    )
    artefact: serializers.SlugRelatedField[Any] = serializers.SlugRelatedField(
        slug_field="digest",
        read_only=True,
        allow_null=True,
        help_text="The SHA-256 of the manifest of the build output it kept (a deploy) or sent "
        "(a promote), docs/promote.md; null when none was kept.",
    )
    url = serializers.SerializerMethodField()
    html_url = serializers.SerializerMethodField()
    log_url = serializers.SerializerMethodField()

    class Meta:
        model = Deployment
        fields = [
            "id",
            "project",
            "kind",
            "status",
            "stage",
            "revision",
            "branch",
            "start_revision",
            "end_revision",
            "first_commit_at",
            "group",
            "strategy",
            "full",
            "skip_build",
            "skip_cache",
            "rollback_release",
            "rollback_of",
            "retry_of",
            "promoted_from",
            "artefact",
            "targets",
            "trigger",
            "triggered_by",
            "created_at",
            "started_at",
            "finished_at",
            "error",
            "error_code",
            "gates",
            "gates_until",
            "approved_by",
            "url",
            "html_url",
            "log_url",
        ]
        read_only_fields = fields

    @extend_schema_field(GatesSerializer)
    def get_gates(self, deployment: Deployment) -> dict[str, Any]:
        return dict(deployment.gates or {})

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_approved_by(self, deployment: Deployment) -> list[str]:
        return [approval.user.username for approval in deployment.approvals.all()]

    @extend_schema_field(serializers.ChoiceField(choices=Strategy.choices))
    def get_strategy(self, deployment: Deployment) -> str:
        if deployment.strategy:
            return deployment.strategy
        group = deployment.group
        return group.strategy if group is not None else Strategy.PARALLEL.value

    def get_url(self, deployment: Deployment) -> str:
        return api_url("api-deployment", deployment_id=deployment.pk)

    def get_html_url(self, deployment: Deployment) -> str:
        return deployment_page(deployment.project.slug, deployment.pk)

    def get_log_url(self, deployment: Deployment) -> str:
        return api_url("api-deployment-log", deployment_id=deployment.pk)


class RollbackPlanSerializer(serializers.Serializer[Any]):
    server = serializers.IntegerField()
    server_name = serializers.CharField()
    release = serializers.CharField(
        allow_null=True, help_text="The release that goes live; null: none is kept."
    )
    revision = serializers.CharField(allow_null=True)
    replaces = serializers.CharField(allow_null=True, help_text="The release live now.")


class DeploymentSerializer(DeploymentSummarySerializer):
    steps = StepSerializer(many=True, read_only=True)
    changes = serializers.SerializerMethodField(
        help_text="What the deployment sends (or a preview would send)."
    )
    commits = serializers.SerializerMethodField()
    settings_file = serializers.JSONField(
        read_only=True,
        help_text="Settings as code (docs/settings-as-code.md), for a project that takes "
        "settings from its repository: {revision, found, keys (what .slipway.yml set), "
        "changed: {key: {project, file}} (only values that differ), effective: the settings "
        "the deployment ran with}; {} otherwise or before the revision was fetched.",
    )
    rollback_targets = serializers.SerializerMethodField(
        help_text="Where rolling this deployment back would take each server it succeeded "
        "on, before anything happens; empty for previews and unfinished deployments."
    )
    rollbacks: serializers.PrimaryKeyRelatedField[Any] = serializers.PrimaryKeyRelatedField(
        many=True,
        read_only=True,
        help_text="The rollbacks that undo this deployment (Roll back, or the rollback an "
        "abort records when the deployment ends).",
    )
    retries: serializers.PrimaryKeyRelatedField[Any] = serializers.PrimaryKeyRelatedField(
        many=True, read_only=True, help_text="The deployments that retried its failed servers."
    )
    promotions: serializers.PrimaryKeyRelatedField[Any] = serializers.PrimaryKeyRelatedField(
        many=True,
        read_only=True,
        help_text="The deployments that promoted its build output (docs/promote.md).",
    )

    class Meta(DeploymentSummarySerializer.Meta):
        fields = [
            *DeploymentSummarySerializer.Meta.fields,
            "steps",
            "changes",
            "commits",
            "settings_file",
            "rollback_targets",
            "rollbacks",
            "retries",
            "promotions",
        ]
        read_only_fields = fields

    @extend_schema_field(RollbackPlanSerializer(many=True))
    def get_rollback_targets(self, deployment: Deployment) -> list[dict[str, Any]]:
        if deployment.kind == Kind.PREVIEW or deployment.status not in FINAL:
            return []
        return [
            {
                "server": plan.server.pk,
                "server_name": plan.server.name,
                "release": plan.release.name if plan.release is not None else None,
                "revision": plan.release.revision if plan.release is not None else None,
                "replaces": plan.live.name if plan.live is not None else None,
            }
            for plan in rollback_plan_deployment(deployment)
        ]

    @extend_schema_field(ChangesSerializer)
    def get_changes(self, deployment: Deployment) -> dict[str, Any]:
        changes = deployment.changes or {}
        return {
            "added": changes.get("added", []),
            "modified": changes.get("modified", []),
            "deleted": changes.get("deleted", []),
            "bytes": changes.get("bytes", 0),
            "excluded": changes.get("excluded", []),
        }

    @extend_schema_field(CommitSerializer(many=True))
    def get_commits(self, deployment: Deployment) -> list[dict[str, Any]]:
        return list(deployment.commits or [])


@extend_schema_field(OpenApiTypes.INT)
class ProjectGroupField(serializers.PrimaryKeyRelatedField[ServerGroup]):
    """A server group's id, among the groups of ``context["project"]`` only."""

    def get_queryset(self) -> QuerySet[ServerGroup]:
        return ServerGroup.objects.filter(project=self.context.get("project"))


class DeploymentCreateSerializer(serializers.Serializer[dict[str, Any]]):
    """``context["project"]`` limits ``servers`` and ``group`` to the project's own."""

    servers = ProjectServerField(many=True, required=False, help_text="Server ids.")
    group = ProjectGroupField(
        required=False,
        allow_null=True,
        help_text="A server group's id, instead of servers.",
    )
    revision = serializers.CharField(
        max_length=255,
        required=False,
        allow_blank=True,
        help_text="A branch, tag or commit SHA; by default the head of each server's branch.",
    )
    strategy = serializers.ChoiceField(
        choices=Strategy.choices,
        required=False,
        help_text="Overrides the group's strategy for this deployment (servers without a "
        "group are deployed in parallel by default).",
    )
    full = serializers.BooleanField(default=False, help_text="Send every file, not the changes.")
    preview = serializers.BooleanField(
        default=False, help_text="Only work out what would change; touch no server."
    )
    skip_build = serializers.BooleanField(default=False)
    skip_cache = serializers.BooleanField(default=False)
    freeze_override_reason = serializers.CharField(
        max_length=MAX_REASON_LENGTH,
        required=False,
        allow_blank=True,
        help_text="During a freeze window: why this deployment cannot wait. Only a project "
        "admin may give it; it is kept in the audit log. Without it a frozen project answers "
        "409, and a reason from someone else 403.",
    )
    gates_override_reason = serializers.CharField(
        max_length=MAX_REASON_LENGTH,
        required=False,
        allow_blank=True,
        help_text="Deploy past the environment's gates that did not pass (docs/gates.md): "
        "why. Only a project admin may give it; it is kept in the audit log. Without it a "
        "failed gate answers 409 naming it, and a reason from someone else 403.",
    )


class GatesOverrideSerializer(serializers.Serializer[dict[str, Any]]):
    reason = serializers.CharField(
        max_length=MAX_REASON_LENGTH, help_text="Why it may skip its gates (kept in the audit log)."
    )


class GatePolicySerializer(serializers.ModelSerializer[GatePolicy]):
    ci_contexts = serializers.ListField(
        child=serializers.CharField(max_length=255),
        required=False,
        help_text="Commit status contexts that must be green; [] = every one reported.",
    )
    approver_role = serializers.ChoiceField(
        choices=[(role, role) for role in APPROVER_ROLES], required=False
    )

    class Meta:
        model = GatePolicy
        fields = [
            "id",
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
            "created_at",
        ]
        read_only_fields = ["created_at"]


class RetryOptionsSerializer(serializers.Serializer[dict[str, Any]]):
    freeze_override_reason = serializers.CharField(
        max_length=MAX_REASON_LENGTH,
        required=False,
        allow_blank=True,
        help_text="During a freeze window: why this retry cannot wait (project admins only; "
        "kept in the audit log), as for a new deployment.",
    )


class PromotionRequestSerializer(serializers.Serializer[dict[str, Any]]):
    to = serializers.CharField(
        max_length=1000,
        help_text="Where the build output goes: an environment (every enabled server labelled "
        "with it), or server names separated by commas.",
    )
    freeze_override_reason = serializers.CharField(
        max_length=MAX_REASON_LENGTH,
        required=False,
        allow_blank=True,
        help_text="During a freeze window: why this promotion cannot wait (project admins "
        "only; kept in the audit log), as for a new deployment.",
    )
    gates_override_reason = serializers.CharField(
        max_length=MAX_REASON_LENGTH,
        required=False,
        allow_blank=True,
        help_text="A gate of the target environment failed: why it may be promoted anyway "
        "(project admins only; audited), as for a new deployment (docs/gates.md).",
    )


class RollbackOptionsSerializer(serializers.Serializer[dict[str, Any]]):
    lock_reason = serializers.CharField(
        max_length=MAX_REASON_LENGTH,
        required=False,
        allow_blank=True,
        help_text="Also lock the project (the server, for a server's rollback) with this "
        "reason, so nothing deploys the bad release again until someone unlocks it.",
    )


class LockRequestSerializer(serializers.Serializer[dict[str, Any]]):
    reason = serializers.CharField(
        max_length=MAX_REASON_LENGTH, help_text="Why: everyone sees it where the lock shows."
    )


class LockAnswerSerializer(serializers.Serializer[Any]):
    lock = LockSerializer(allow_null=True, help_text="null once unlocked.")


class ScheduleRunSerializer(serializers.ModelSerializer[ScheduleRun]):
    deployment_url = serializers.SerializerMethodField()

    class Meta:
        model = ScheduleRun
        fields = [
            "id",
            "slot",
            "outcome",
            "reason_code",
            "reason",
            "deployment",
            "deployment_url",
            "claimed_at",
            "finished_at",
        ]
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.URI)
    def get_deployment_url(self, run: ScheduleRun) -> str | None:
        if run.deployment_id is None:
            return None
        return api_url("api-deployment", deployment_id=run.deployment_id)


class NaiveOrAwareDateTimeField(serializers.DateTimeField):
    """An ISO 8601 date and time; without an offset it is a wall-clock time in the
    schedule's time_zone (builds.schedules), not in the server's."""

    def enforce_timezone(self, value: Any) -> Any:
        return value


class ScheduleSerializer(SettingSerializer):
    view_name = "api-schedule"
    servers = ProjectServerField(
        many=True, required=False, help_text="Server ids, in order (or give a group)."
    )
    group = ProjectGroupField(required=False, allow_null=True, help_text="A server group's id.")
    run_at = NaiveOrAwareDateTimeField(
        required=False,
        allow_null=True,
        help_text="Once: when (ISO 8601; without an offset, in time_zone).",
    )
    time_of_day = WallClockTimeField(
        required=False, allow_null=True, help_text="Daily and weekly: when, HH:MM in time_zone."
    )
    weekdays = serializers.ListField(
        child=serializers.IntegerField(min_value=0, max_value=6),
        required=False,
        help_text="Weekly: the days, 0 = Monday … 6 = Sunday.",
    )
    time_zone = serializers.CharField(
        max_length=64, required=False, help_text="An IANA name (UTC, Europe/Paris)."
    )
    rule = serializers.SerializerMethodField(help_text="The rule in words.")
    runs_url = serializers.SerializerMethodField()
    last_run = serializers.SerializerMethodField()

    class Meta:
        model = Schedule
        fields = [
            "id",
            "name",
            "kind",
            "run_at",
            "time_of_day",
            "weekdays",
            "cron",
            "time_zone",
            "group",
            "servers",
            "revision",
            "skip_unchanged",
            "enabled",
            "next_run_at",
            "rule",
            "last_run",
            "created_at",
            "url",
            "runs_url",
            "html_url",
        ]
        read_only_fields = ["next_run_at", "created_at"]

    def get_rule(self, schedule: Schedule) -> str:
        return describe_rule(schedule)

    @extend_schema_field(OpenApiTypes.URI)
    def get_runs_url(self, schedule: Schedule) -> str:
        return api_url("api-schedule-runs", slug=schedule.project.slug, pk=schedule.pk)

    @extend_schema_field(ScheduleRunSerializer(allow_null=True))
    def get_last_run(self, schedule: Schedule) -> dict[str, Any] | None:
        run = schedule.runs.first()
        return dict(ScheduleRunSerializer(run).data) if run is not None else None


class LogQuerySerializer(serializers.Serializer[dict[str, Any]]):
    after = serializers.IntegerField(
        min_value=0,
        max_value=2**31 - 1,
        default=0,
        help_text="Return lines whose seq is greater than this.",
    )
    limit = serializers.IntegerField(
        min_value=1,
        max_value=LOG_PAGE_SIZE,
        default=LOG_PAGE_SIZE,
        help_text=f"Lines at most; a page also stops before {LOG_PAGE_CHARS // 2**20} MiB of text "
        "(it holds at least one line).",
    )


class LogLineSerializer(serializers.Serializer[LogLine]):
    seq = serializers.IntegerField()
    stream = serializers.CharField()
    text = serializers.CharField()
    time = serializers.DateTimeField()
    server = serializers.IntegerField(allow_null=True)

    def to_representation(self, instance: LogLine) -> dict[str, Any]:
        # The same payload the live page receives over its socket.
        return line_payload(instance)


class LogSerializer(serializers.Serializer[Any]):
    lines = LogLineSerializer(many=True)
    complete = serializers.BooleanField(
        help_text="The deployment is over and no line comes after these."
    )
    next_after = serializers.IntegerField(help_text="Pass as ?after= to get the next lines.")
    status = serializers.ChoiceField(choices=Status.choices)


class DeploymentPageSerializer(serializers.Serializer[Any]):
    count = serializers.IntegerField()
    next = serializers.CharField(allow_null=True, help_text="The next page's address.")
    previous = serializers.CharField(allow_null=True)
    results = DeploymentSummarySerializer(many=True)


class ScheduleRunPageSerializer(serializers.Serializer[Any]):
    count = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = ScheduleRunSerializer(many=True)


class DoraQuerySerializer(serializers.Serializer[dict[str, Any]]):
    environment = serializers.CharField(
        max_length=50,
        allow_blank=True,
        default="",
        trim_whitespace=True,
        help_text="A server environment label (production, staging...); empty: every server.",
    )
    days = serializers.IntegerField(
        min_value=1,
        max_value=MAX_DAYS,
        default=DEFAULT_DAYS,
        help_text="The window: this many UTC days, today included (the dashboard offers "
        + ", ".join(str(days) for days in WINDOWS)
        + ").",
    )


class DoraDaySerializer(serializers.Serializer[DayFigures]):
    day = serializers.DateField()
    deployments = serializers.IntegerField(help_text="Deployments attempted that day.")
    live = serializers.IntegerField(help_text="Went live and stayed.")
    live_then_failed = serializers.IntegerField(help_text="Went live, then rolled back or fixed.")
    failed = serializers.IntegerField(help_text="Failed, or reverted by a failed health check.")
    rollbacks = serializers.IntegerField()
    change_failure_rate = serializers.FloatField(allow_null=True)
    lead_time_seconds = serializers.FloatField(allow_null=True, help_text="Median.")
    duration_seconds = serializers.FloatField(allow_null=True, help_text="Median.")


class DoraReportSerializer(serializers.Serializer[DoraReport]):
    environment = serializers.CharField(help_text='"" = every server of the project.')
    days = serializers.IntegerField()
    since = serializers.DateTimeField()
    until = serializers.DateTimeField()
    deployments = serializers.IntegerField(
        help_text="Deployments attempted in the window: went live, failed or reverted."
    )
    successful_deployments = serializers.IntegerField(
        help_text="Deployments that went live (deployment frequency counts these)."
    )
    deployments_per_day = serializers.FloatField()
    deployments_per_week = serializers.FloatField()
    lead_time_seconds = serializers.FloatField(
        allow_null=True, help_text="Median lead time for changes: first commit to live."
    )
    lead_time_unmeasured = serializers.IntegerField(
        help_text="Deployments that went live with no first commit time, left out of the "
        "lead time (first deployments, redeployments, deployments recorded before it was kept)."
    )
    failed_changes = serializers.IntegerField()
    change_failure_rate = serializers.FloatField(
        allow_null=True, help_text="failed_changes / deployments, 0 to 1; null: none."
    )
    time_to_restore_seconds = serializers.FloatField(
        allow_null=True, help_text="Median time from a failed change to the next one live."
    )
    unrestored_failures = serializers.IntegerField()
    fix_window_hours = serializers.IntegerField(
        help_text="A deployment followed by a fix live within this many hours failed (0: off)."
    )
    per_day = DoraDaySerializer(many=True)
    environments = serializers.SerializerMethodField(
        help_text="The environment labels of the project's servers."
    )

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_environments(self, report: DoraReport) -> list[str]:
        return list(self.context.get("environments", []))
