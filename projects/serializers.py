"""The API's shapes for projects, their members and their settings.

Input serializers check types and sizes; the rules (a valid ref, a relative path...) are the
services' (projects.services), so the dashboard's forms get the same answers. Secrets are
write-only: a repository token or a secret variable's value is never in an answer, and the
webhook secret and config files' bodies are shown to the project's admins only.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from builds.engine.git import redact_url
from builds.engine.ssh import public_key_fingerprint
from deployer.api import api_url
from deployer.links import deployment_page, project_page
from projects.freeze import project_freeze, window_end
from projects.models import (
    CONFIGURE_ROLES,
    ApiToken,
    BuildCommand,
    Command,
    CommitDeploys,
    ConfigFile,
    EnvironmentVariable,
    ExcludedFile,
    FreezeWindow,
    Integration,
    Membership,
    Notification,
    NotificationDelivery,
    NotificationEvent,
    OnDrift,
    Project,
    Role,
    TokenScope,
)
from projects.services import (
    MAX_ARTEFACTS_KEEP,
    MAX_ARTEFACTS_KEEP_DAYS,
    MAX_DRIFT_CHECK_HOURS,
    MAX_POSITION,
    MAX_TIMEOUT_SECONDS,
    MAX_TOKEN_DAYS,
)
from servers.models import Server

MAX_PATHS = 100


class LockSerializer(serializers.Serializer[Any]):
    locked_at = serializers.DateTimeField()
    locked_by = serializers.CharField(allow_null=True, help_text="The username; null if gone.")
    reason = serializers.CharField()


def lock_data(locked: Any) -> dict[str, Any] | None:
    """The stack lock of a project or a server for an answer, or None when it is unlocked."""
    if locked.locked_at is None:
        return None
    return {
        "locked_at": locked.locked_at,
        "locked_by": locked.locked_by.username if locked.locked_by_id else None,
        "reason": locked.lock_reason,
    }


class FreezeSerializer(serializers.Serializer[Any]):
    window = serializers.CharField(help_text="The freeze window's name.")
    environment = serializers.CharField(help_text="'' when it covers every server.")
    until = serializers.DateTimeField(help_text="When it ends.")
    description = serializers.CharField()


class ProjectSerializer(serializers.ModelSerializer[Project]):
    """A project as its members see it; ``context["roles"]`` maps project ids to the
    caller's role."""

    repository_url = serializers.SerializerMethodField()
    role = serializers.SerializerMethodField()
    webhook_url = serializers.SerializerMethodField(
        help_text="The URL Git hosts post pushes to; it is a credential (custom JSON pushes are "
        "authenticated by it alone), so it is shown to admins only."
    )
    webhook_secret = serializers.SerializerMethodField(
        help_text="What to paste into the repository's webhook settings; shown to admins only."
    )
    has_repository_token = serializers.SerializerMethodField()
    badge_url = serializers.SerializerMethodField(
        help_text="The project's status badge (SVG) for a README: anyone with the URL sees "
        "the last deployment's state and short revision. POST badge/rotate/ to change it."
    )
    repository_host_key_fingerprint = serializers.SerializerMethodField(
        help_text="The trusted host key of an ssh repository (SHA256:...); '' when none is "
        "trusted yet (an ssh repository is then not fetched: see repository/check/)."
    )
    url = serializers.SerializerMethodField()
    html_url = serializers.SerializerMethodField()
    servers_url = serializers.SerializerMethodField()
    deployments_url = serializers.SerializerMethodField()
    lock = serializers.SerializerMethodField(
        help_text="The stack lock: null, or who locked the project, when and why. While it "
        "is locked only rollbacks run (POST/DELETE deploy-lock/)."
    )
    freeze = serializers.SerializerMethodField(
        help_text="The freeze window in force now (on any environment), or null."
    )

    class Meta:
        model = Project
        fields = [
            "slug",
            "name",
            "repository_url",
            "branch",
            "subdirectory",
            "shared_paths",
            "cache_paths",
            "generated_paths",
            "build_network",
            "export_ignore",
            "submodules",
            "on_drift",
            "drift_check_hours",
            "settings_from_repository",
            "artefacts_keep",
            "artefacts_keep_days",
            "commit_deploys",
            "public_key",
            "webhook_url",
            "webhook_secret",
            "has_repository_token",
            "badge_url",
            "repository_host_key_fingerprint",
            "role",
            "created_at",
            "updated_at",
            "url",
            "html_url",
            "servers_url",
            "deployments_url",
            "lock",
            "freeze",
        ]
        read_only_fields = fields

    def _role(self, project: Project) -> str:
        roles: dict[int, str] = self.context["roles"]
        return roles[project.pk]

    def get_repository_url(self, project: Project) -> str:
        # A token typed into the URL (https://user:token@host/...) is a secret too.
        return redact_url(project.repository_url)

    @extend_schema_field(LockSerializer(allow_null=True))
    def get_lock(self, project: Project) -> dict[str, Any] | None:
        return lock_data(project)

    @extend_schema_field(FreezeSerializer(allow_null=True))
    def get_freeze(self, project: Project) -> dict[str, Any] | None:
        freeze = project_freeze(project.pk, timezone.now())
        if freeze is None:
            return None
        return {
            "window": freeze.window.name,
            "environment": freeze.window.environment,
            "until": freeze.until,
            "description": freeze.describe(),
        }

    @extend_schema_field(serializers.ChoiceField(choices=Role.choices))
    def get_role(self, project: Project) -> str:
        return self._role(project)

    def get_badge_url(self, project: Project) -> str:
        return project.badge_url

    def get_webhook_url(self, project: Project) -> str | None:
        return project.webhook_url if self._role(project) in CONFIGURE_ROLES else None

    def get_webhook_secret(self, project: Project) -> str | None:
        return project.webhook_secret if self._role(project) in CONFIGURE_ROLES else None

    def get_has_repository_token(self, project: Project) -> bool:
        return bool(project.repository_token)

    def get_repository_host_key_fingerprint(self, project: Project) -> str:
        return public_key_fingerprint(project.repository_host_key)

    def get_url(self, project: Project) -> str:
        return api_url("api-project", slug=project.slug)

    def get_html_url(self, project: Project) -> str:
        return project_page(project.slug)

    def get_servers_url(self, project: Project) -> str:
        return api_url("api-servers", slug=project.slug)

    def get_deployments_url(self, project: Project) -> str:
        return api_url("api-project-deployments", slug=project.slug)


def _paths_field(help_text: str) -> serializers.ListField:
    return serializers.ListField(
        child=serializers.CharField(max_length=500),
        max_length=MAX_PATHS,
        required=False,
        help_text=help_text,
    )


class RepositoryCheckSerializer(serializers.Serializer[Any]):
    ssh = serializers.BooleanField(help_text="The repository is fetched over ssh.")
    address = serializers.CharField(help_text="host:port of the repository's ssh host.")
    host_key_fingerprint = serializers.CharField(allow_null=True)
    host_key_type = serializers.CharField(allow_null=True)
    trusted = serializers.BooleanField(help_text="The offered key is the trusted one.")
    pinned_fingerprint = serializers.CharField(help_text="The trusted key; '' when none.")
    error = serializers.CharField(help_text="What is wrong, for a person; '' when trusted.")


class ProjectInputSerializer(serializers.Serializer[dict[str, Any]]):
    name = serializers.CharField(max_length=100)
    repository_url = serializers.CharField(
        max_length=500, help_text="https://, ssh://, git:// or git@host:path"
    )
    branch = serializers.CharField(max_length=255, default="main")
    subdirectory = serializers.CharField(max_length=255, required=False, allow_blank=True)
    shared_paths = _paths_field("Linked from shared/ into every release; end folders with '/'.")
    cache_paths = _paths_field("Kept between builds on the worker (node_modules, vendor...).")
    generated_paths = _paths_field(
        "Globs of what the deployment's own commands write on the server (staticfiles/, "
        "**/__pycache__/): never uploaded, restored nor deleted."
    )
    build_network = serializers.BooleanField(
        required=False,
        help_text="Build commands may reach the internet (never the worker's own services); "
        "false cuts the build sandbox's network entirely.",
    )
    export_ignore = serializers.BooleanField(
        required=False,
        help_text="Leave out the paths the repository's .gitattributes marks export-ignore "
        "(as git archive does); false deploys them too.",
    )
    submodules = serializers.BooleanField(
        required=False,
        help_text="Check out the repository's submodules (recursively, with the project's key "
        "and the repository's URL rules); false leaves their folders empty.",
    )
    on_drift = serializers.ChoiceField(
        choices=OnDrift.choices,
        required=False,
        help_text="What a deployment does with files changed on a server since the last "
        "deployment: restore them (the default) or refuse, failing before the switch with "
        "the list (docs/drift.md).",
    )
    drift_check_hours = serializers.IntegerField(
        required=False,
        min_value=0,
        max_value=MAX_DRIFT_CHECK_HOURS,
        help_text="Hours between scheduled drift checks of each server; 0: none. A drift "
        "found that was not found before notifies (event `drift`).",
    )
    settings_from_repository = serializers.BooleanField(
        required=False,
        help_text="Settings as code: each deployment reads .slipway.yml at its revision and "
        "the keys it holds replace the project's own settings for that deployment "
        "(docs/settings-as-code.md).",
    )
    artefacts_keep = serializers.IntegerField(
        required=False,
        min_value=0,
        max_value=MAX_ARTEFACTS_KEEP,
        help_text="Build once, promote (docs/promote.md): how many kept build outputs "
        "retention leaves, newest first; 0: no limit by count.",
    )
    artefacts_keep_days = serializers.IntegerField(
        required=False,
        min_value=0,
        max_value=MAX_ARTEFACTS_KEEP_DAYS,
        help_text="How many days a kept build output may be promoted; 0: no limit by age.",
    )
    commit_deploys = serializers.ChoiceField(
        choices=CommitDeploys.choices,
        required=False,
        help_text="Whose [deploy: name] commit-message command a push honours: a member's "
        "(matched by the pusher's email) always within their deploy rights; 'anyone' also "
        "honours pushers who are not members, 'members' refuses them "
        "(docs/webhooks.md#commit-message-commands).",
    )
    repository_token = serializers.CharField(
        max_length=2000,
        required=False,
        allow_blank=True,
        write_only=True,
        trim_whitespace=False,
        help_text="An access token for an https repository; write-only, '' removes it.",
    )


class ProjectCreateSerializer(ProjectInputSerializer):
    template = serializers.CharField(
        max_length=100,
        required=False,
        allow_blank=True,
        help_text="Start from a template: a built-in's slug (laravel, django, rails, node, "
        "static) or a saved template's id, as GET /api/v1/templates/ lists them. Its settings "
        "are copied into the project; fields given here win over its paths and switches.",
    )


# --------------------------------------------------------------------------- templates


class TemplateSerializer(serializers.Serializer[Any]):
    """A template as projects.services.TemplateSource holds it (template_data)."""

    id = serializers.CharField(
        help_text="What POST /api/v1/projects/ takes as `template`: a built-in's slug, or a "
        "saved template's id."
    )
    name = serializers.CharField()
    description = serializers.CharField()
    builtin = serializers.BooleanField(help_text="Shipped with Slipway (it cannot be deleted).")
    source_project = serializers.CharField(
        help_text="The slug of the project it was saved from; '' for a built-in."
    )
    created_by = serializers.CharField(
        allow_null=True, help_text="Who saved it; null for a built-in or a deleted user."
    )
    created_at = serializers.DateTimeField(allow_null=True)
    contents = serializers.DictField(
        child=serializers.JSONField(),
        help_text="The settings it copies into a new project (docs/templates.md): paths and "
        "switches, build_commands, commands, excluded_files, config_files, "
        "environment_variables, health_checks. Never a secret value.",
    )
    url = serializers.CharField()


class TemplateSaveSerializer(serializers.Serializer[dict[str, Any]]):
    project = serializers.SlugField(
        max_length=100, help_text="The slug of the project to save; you must be its admin."
    )
    name = serializers.CharField(max_length=100)
    description = serializers.CharField(max_length=255, required=False, allow_blank=True)


class MemberSerializer(serializers.ModelSerializer[Membership]):
    username = serializers.CharField(source="user.username", read_only=True)
    url = serializers.SerializerMethodField()
    html_url = serializers.SerializerMethodField()

    deploy_servers = serializers.SerializerMethodField(
        help_text="Deploy rights: ids of the servers this deployer may deploy to, besides "
        "those of deploy_environments; both empty: every server (docs/users.md)."
    )

    class Meta:
        model = Membership
        fields = [
            "username",
            "role",
            "deploy_limited",
            "deploy_environments",
            "deploy_servers",
            "created_at",
            "url",
            "html_url",
        ]
        read_only_fields = fields
        extra_kwargs = {
            "deploy_limited": {
                "help_text": "Whether deploy rights limit this deployer: then only the servers "
                "of deploy_environments and deploy_servers (none left: nowhere)."
            },
            "deploy_environments": {
                "help_text": "Deploy rights: the environments this deployer may deploy to; "
                "with deploy_servers empty too, every server. Admins are never limited."
            },
        }

    def get_deploy_servers(self, membership: Membership) -> list[int]:
        return sorted(membership.deploy_servers.values_list("pk", flat=True))

    def get_url(self, membership: Membership) -> str:
        return api_url(
            "api-member", slug=membership.project.slug, username=membership.user.get_username()
        )

    def get_html_url(self, membership: Membership) -> str:
        return project_page(membership.project.slug)


class MemberCreateSerializer(serializers.Serializer[dict[str, Any]]):
    username = serializers.CharField(max_length=150)
    role = serializers.ChoiceField(choices=Role.choices, default=Role.VIEWER)


class MemberUpdateSerializer(serializers.Serializer[dict[str, Any]]):
    role = serializers.ChoiceField(choices=Role.choices, required=False)
    deploy_environments = serializers.ListField(
        child=serializers.CharField(max_length=50), required=False, max_length=50
    )
    deploy_servers = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=2**63 - 1),
        required=False,
        max_length=1000,
    )


# --------------------------------------------------------------------------- settings


@extend_schema_field(OpenApiTypes.INT)
class ProjectServerField(serializers.PrimaryKeyRelatedField[Server]):
    """A server's id, among the servers of ``context["project"]`` only."""

    def get_queryset(self) -> QuerySet[Server]:
        return Server.objects.filter(project=self.context.get("project"))


class SettingSerializer(serializers.ModelSerializer[Any]):
    """Base of the project settings' serializers: links and the caller's role
    (``context["project"]`` and ``context["role"]``)."""

    url = serializers.SerializerMethodField()
    html_url = serializers.SerializerMethodField()
    #: The API view name of one object, e.g. "api-command".
    view_name = ""

    @property
    def is_admin(self) -> bool:
        return self.context.get("role") in CONFIGURE_ROLES

    def get_url(self, instance: Any) -> str:
        return api_url(self.view_name, slug=instance.project.slug, pk=instance.pk)

    def get_html_url(self, instance: Any) -> str:
        return project_page(instance.project.slug)


def _servers_field() -> Any:  # a ManyRelatedField at run time
    return ProjectServerField(
        many=True, required=False, help_text="Server ids; empty means every server of the project."
    )


class CommandSerializer(SettingSerializer):
    view_name = "api-command"
    servers = _servers_field()
    timeout_seconds = serializers.IntegerField(
        min_value=1, max_value=MAX_TIMEOUT_SECONDS, allow_null=True, required=False
    )
    position = serializers.IntegerField(min_value=0, max_value=MAX_POSITION, required=False)

    class Meta:
        model = Command
        fields = [
            "id",
            "command",
            "description",
            "stage",
            "run_on",
            "run_once",
            "halt_on_error",
            "timeout_seconds",
            "servers",
            "position",
            "url",
            "html_url",
        ]
        extra_kwargs = {
            "stage": {
                "help_text": "When it runs: before_transfer, before_switch, after_switch (in "
                "deployments and rollbacks), after_rollback (in rollbacks only, right after "
                "the switch back, before the after-switch commands)."
            },
            "run_once": {
                "help_text": "Run on one server of each deployment only (database "
                "migrations): the first server in the deployment's order that reaches it; "
                "the others skip it."
            },
        }


class BuildCommandSerializer(SettingSerializer):
    view_name = "api-build-command"
    timeout_seconds = serializers.IntegerField(
        min_value=1, max_value=MAX_TIMEOUT_SECONDS, allow_null=True, required=False
    )
    position = serializers.IntegerField(min_value=0, max_value=MAX_POSITION, required=False)
    watch_globs = serializers.ListField(
        child=serializers.CharField(max_length=500),
        max_length=MAX_PATHS,
        required=False,
        help_text="When set, the command runs only if a changed file matches one of these.",
    )

    class Meta:
        model = BuildCommand
        fields = [
            "id",
            "command",
            "description",
            "timeout_seconds",
            "halt_on_error",
            "watch_globs",
            "position",
            "url",
            "html_url",
        ]


class ConfigFileSerializer(SettingSerializer):
    view_name = "api-config-file"
    servers = _servers_field()
    body = serializers.CharField(
        allow_blank=True,
        allow_null=True,
        required=False,
        trim_whitespace=False,
        max_length=1_000_000,
        help_text="Config files often hold secrets: the body is shown to admins only "
        "(null for others).",
    )

    class Meta:
        model = ConfigFile
        fields = [
            "id",
            "path",
            "body",
            "description",
            "mode",
            "group",
            "servers",
            "url",
            "html_url",
        ]
        extra_kwargs = {
            "mode": {
                "help_text": "Octal, such as 600 or 0640; '' writes it 600 (640 with a group)."
            },
            "group": {"help_text": "A group name or number given the file (chgrp); '' for none."},
        }

    def validate_body(self, value: str | None) -> str:
        return value or ""

    def to_representation(self, instance: ConfigFile) -> dict[str, Any]:
        data = super().to_representation(instance)
        if not self.is_admin:
            data["body"] = None
        return data


class ExcludedFileSerializer(SettingSerializer):
    view_name = "api-excluded-file"

    class Meta:
        model = ExcludedFile
        fields = ["id", "pattern", "url", "html_url"]


class EnvironmentVariableSerializer(SettingSerializer):
    view_name = "api-environment-variable"
    name = serializers.CharField(max_length=255, help_text="A shell variable name.")
    value = serializers.CharField(
        allow_blank=True,
        allow_null=True,
        required=False,
        trim_whitespace=False,
        max_length=100_000,
        help_text="Write-only when the variable is secret (then null in answers).",
    )

    class Meta:
        model = EnvironmentVariable
        fields = ["id", "name", "value", "secret", "build", "servers", "url", "html_url"]
        extra_kwargs = {
            "build": {"help_text": "Available to build commands on the worker."},
            "servers": {"help_text": "Available to commands run on the servers."},
        }

    def validate_value(self, value: str | None) -> str:
        return value or ""

    def to_representation(self, instance: EnvironmentVariable) -> dict[str, Any]:
        data = super().to_representation(instance)
        if instance.secret:
            data["value"] = None
        return data


# --------------------------------------------------------------------------- notifications


class NotificationSerializer(SettingSerializer):
    """A notification. Slack, Discord, Teams and webhook URLs hold a token, so ``url`` is
    write-only like ``secret``: answers show ``destination`` (scheme://host, or the email
    address), and the notification's own address in the API is ``api_url``."""

    view_name = "api-notification"
    # Here `url` is a field of the object; its address in the API is `api_url`.
    url = serializers.CharField(  # type: ignore[assignment]
        max_length=2000,
        required=False,
        allow_blank=True,
        write_only=True,
        help_text="The incoming-webhook URL (every kind but email); write-only.",
    )
    address = serializers.CharField(
        max_length=254, required=False, allow_blank=True, help_text="Email only."
    )
    events = serializers.ListField(
        child=serializers.ChoiceField(choices=NotificationEvent.choices),
        max_length=len(NotificationEvent.values),
        required=False,
        help_text="The events it fires on; all of them by default.",
    )
    servers = _servers_field()
    secret = serializers.CharField(
        max_length=1000,
        required=False,
        allow_blank=True,
        write_only=True,
        trim_whitespace=False,
        help_text="Webhooks only, at least 16 characters: signs every delivery; write-only.",
    )
    destination = serializers.CharField(
        read_only=True, help_text="Where it goes: the email address, or the URL's scheme://host."
    )
    has_secret = serializers.SerializerMethodField()
    api_url = serializers.SerializerMethodField(help_text="This notification in the API.")
    deliveries_url = serializers.SerializerMethodField()

    class Meta:
        model = Notification
        fields = [
            "id",
            "kind",
            "url",
            "address",
            "destination",
            "events",
            "servers",
            "enabled",
            "secret",
            "has_secret",
            "created_at",
            "api_url",
            "html_url",
            "deliveries_url",
        ]
        read_only_fields = ["created_at"]

    def get_has_secret(self, notification: Notification) -> bool:
        return bool(notification.secret)

    def get_api_url(self, notification: Notification) -> str:
        return super().get_url(notification)

    def get_deliveries_url(self, notification: Notification) -> str:
        return api_url(
            "api-notification-deliveries", slug=notification.project.slug, pk=notification.pk
        )


class IntegrationSerializer(SettingSerializer):
    """An integration (docs/integrations.md). The token is write-only: answers say only
    ``has_token``."""

    view_name = "api-integration"
    base_url = serializers.CharField(
        max_length=500,
        required=False,
        allow_blank=True,
        help_text="The API's root address, https:// only. Blank: https://api.github.com, "
        "https://gitlab.com/api/v4 or https://sentry.io; GitHub Enterprise https://host/api/v3, "
        "Gitea (required) https://host/api/v1.",
    )
    repository = serializers.CharField(
        max_length=255,
        required=False,
        help_text="owner/repository (GitHub, Gitea); a numeric id or group/project (GitLab); "
        "organization/project slugs (Sentry).",
    )
    environment = serializers.CharField(
        max_length=100,
        required=False,
        allow_blank=True,
        help_text="The environment reported; '' for the deployment's servers' environment "
        "(production when they have none or several).",
    )
    token = serializers.CharField(
        max_length=1000,
        required=False,
        write_only=True,
        trim_whitespace=False,
        help_text="The provider's API token; required to create, write-only.",
    )
    servers = _servers_field()
    destination = serializers.CharField(
        read_only=True, help_text="Where reports go: the API's scheme://host[:port]."
    )
    has_token = serializers.SerializerMethodField()
    deliveries_url = serializers.SerializerMethodField()

    class Meta:
        model = Integration
        fields = [
            "id",
            "kind",
            "base_url",
            "repository",
            "environment",
            "token",
            "has_token",
            "servers",
            "enabled",
            "destination",
            "created_at",
            "url",
            "html_url",
            "deliveries_url",
        ]
        read_only_fields = ["created_at"]

    def get_has_token(self, integration: Integration) -> bool:
        return bool(integration.token)

    def get_deliveries_url(self, integration: Integration) -> str:
        return api_url(
            "api-integration-deliveries", slug=integration.project.slug, pk=integration.pk
        )


class DeliverySerializer(serializers.ModelSerializer[NotificationDelivery]):
    deployment_url = serializers.SerializerMethodField()
    html_url = serializers.SerializerMethodField()

    class Meta:
        model = NotificationDelivery
        fields = [
            "id",
            "uuid",
            "event",
            "status",
            "attempts",
            "status_code",
            "error",
            "deployment",
            "created_at",
            "sent_at",
            "next_attempt_at",
            "deployment_url",
            "html_url",
        ]
        read_only_fields = fields
        extra_kwargs = {
            "uuid": {"help_text": "Sent as X-Slipway-Delivery; the same on every attempt."},
            "error": {"help_text": "Why the last attempt failed ('' when it did not)."},
        }

    def get_deployment_url(self, delivery: NotificationDelivery) -> str | None:
        if delivery.deployment_id is None:
            return None
        return api_url("api-deployment", deployment_id=delivery.deployment_id)

    def get_html_url(self, delivery: NotificationDelivery) -> str:
        slug = delivery.receiver.project.slug
        if delivery.deployment_id is None:
            return project_page(slug)
        return deployment_page(slug, delivery.deployment_id)


# --------------------------------------------------------------------------- API tokens


class ApiTokenSerializer(serializers.ModelSerializer[ApiToken]):
    """A token as its owner sees it in a list: never the secret, which is shown once."""

    scope = serializers.ChoiceField(choices=TokenScope.choices)
    expires_at = serializers.DateTimeField(
        allow_null=True, help_text="When the token stops working; null: when it is revoked."
    )

    class Meta:
        model = ApiToken
        fields = [
            "id",
            "name",
            "prefix",
            "scope",
            "expires_at",
            "created_at",
            "last_used_at",
            "revoked_at",
        ]
        read_only_fields = fields


class ApiTokenIssuedSerializer(ApiTokenSerializer):
    token = serializers.CharField(help_text="The secret itself; shown in this answer only.")

    class Meta(ApiTokenSerializer.Meta):
        fields = [*ApiTokenSerializer.Meta.fields, "token"]
        read_only_fields = fields


class ApiTokenCreateSerializer(serializers.Serializer[dict[str, Any]]):
    name = serializers.CharField(max_length=100)
    scope = serializers.ChoiceField(choices=TokenScope.choices)
    expires_at = serializers.DateTimeField(
        required=False, allow_null=True, help_text="A moment in the future (ISO 8601)."
    )
    expires_in_days = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=MAX_TOKEN_DAYS,
        help_text="Or a number of days from now. Neither: the token lasts until revoked.",
    )


@extend_schema_field(
    {
        "type": "string",
        "pattern": r"^([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9])?$",
        "example": "18:00",
        "description": "A wall-clock time of day, HH:MM, in the object's time_zone.",
    }
)
class WallClockTimeField(serializers.TimeField):
    """A time of day without an offset: it is read in the object's own time zone (an
    OpenAPI "time" would demand an offset)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("format", "%H:%M")
        super().__init__(**kwargs)


class FreezeWindowSerializer(SettingSerializer):
    view_name = "api-freeze-window"
    start_time = WallClockTimeField(required=False, allow_null=True)
    end_time = WallClockTimeField(
        required=False,
        allow_null=True,
        help_text="At or before start_time: the window runs past midnight.",
    )
    weekdays = serializers.ListField(
        child=serializers.IntegerField(min_value=0, max_value=6),
        required=False,
        help_text="Weekly: the days, 0 = Monday … 6 = Sunday.",
    )
    time_zone = serializers.CharField(
        max_length=64, required=False, help_text="An IANA name (UTC, Europe/Paris)."
    )
    active_until = serializers.SerializerMethodField(
        help_text="When the window ends, if it is in force now; null otherwise."
    )

    class Meta:
        model = FreezeWindow
        fields = [
            "id",
            "name",
            "kind",
            "environment",
            "weekdays",
            "start_time",
            "end_time",
            "start_date",
            "end_date",
            "time_zone",
            "active_until",
            "created_at",
            "url",
            "html_url",
        ]
        read_only_fields = ["created_at"]

    @extend_schema_field(serializers.DateTimeField(allow_null=True))
    def get_active_until(self, window: FreezeWindow) -> Any:
        return window_end(window, timezone.now())


# --------------------------------------------------------------------------- settings as code


class SettingsExportSerializer(serializers.Serializer[Any]):
    yaml = serializers.CharField(
        help_text="The project's settings as YAML (docs/settings-as-code.md), secrets left "
        "out: what `slipway export` prints and POST settings/import/ takes back."
    )
    document = serializers.JSONField(help_text="The same settings as JSON.")


class SettingsImportSerializer(serializers.Serializer[dict[str, Any]]):
    yaml = serializers.CharField(
        max_length=256 * 1024,
        trim_whitespace=False,
        help_text="Settings as GET settings/ answers them (YAML); keys left out stay as they are.",
    )
    dry_run = serializers.BooleanField(
        default=False, help_text="Only say what would change; nothing is saved."
    )


class SettingsImportResultSerializer(serializers.Serializer[Any]):
    dry_run = serializers.BooleanField()
    changed = serializers.JSONField(
        help_text='Each setting that changes (or would): {key: {"project": before, '
        '"file": after}}, secrets left out.'
    )
