"""Projects: a Git repository, its servers' configuration, members and API tokens."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import datetime
from typing import TYPE_CHECKING

from django.conf import settings
from django.contrib.auth.models import User
from django.db import models
from django.db.models.functions import Lower
from django.utils import timezone
from django.utils.crypto import salted_hmac

from builds.outbound import origin_of
from deployer.crypto import EncryptedTextField

if TYPE_CHECKING:
    from servers.models import Server


class Role(models.TextChoices):
    ADMIN = "admin", "Admin"
    DEPLOYER = "deployer", "Deployer"
    VIEWER = "viewer", "Viewer"


class CommitDeploys(models.TextChoices):
    """Whose ``[deploy: name]`` commit-message command a push honours (docs/webhooks.md)."""

    ANYONE = "anyone", "Anyone who can push (a member's deploy rights still apply to them)"
    MEMBERS = "members", "Members only, within their deploy rights"


# Who may do what, in one place: views, the API and templates all ask these.
DEPLOY_ROLES = (Role.ADMIN, Role.DEPLOYER)
CONFIGURE_ROLES = (Role.ADMIN,)


def _webhook_token() -> str:
    return secrets.token_urlsafe(24)


def _webhook_secret() -> str:
    return secrets.token_hex(32)


def server_badge_signature(project_badge_token: str, server_id: int) -> str:
    """The unguessable part of a server's badge URL: 32 hex characters of an HMAC-SHA256
    (Django's salted_hmac, keyed by SECRET_KEY) of the project's badge token and the server's
    id. Rotating the project's token changes every server's."""
    return salted_hmac(
        "slipway.server-badge", f"{project_badge_token}/{server_id}", algorithm="sha256"
    ).hexdigest()[:32]


def badge_token() -> str:
    """A new unguessable part of a project's badge URLs: 32 URL-safe characters (192 bits)."""
    return secrets.token_urlsafe(24)


class ProjectQuerySet(models.QuerySet["Project"]):
    def for_user(self, user: User) -> ProjectQuerySet:
        return self.filter(memberships__user=user)


class OnDrift(models.TextChoices):
    """builds.engine.specs.ON_DRIFT_CHOICES."""

    RESTORE = "restore", "Restore the build's files"
    REFUSE = "refuse", "Refuse to deploy, and list the files"


class Project(models.Model):
    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=100, unique=True)
    repository_url = models.CharField(max_length=500)
    branch = models.CharField(max_length=255, default="main")
    # Deploy only this subdirectory of the repository (relative, "" for the root).
    subdirectory = models.CharField(max_length=255, blank=True)
    # For HTTPS repository URLs that need authentication (a personal access token).
    repository_token = EncryptedTextField(blank=True)
    private_key = EncryptedTextField()
    public_key = models.TextField()
    # The trusted host key of an ssh:// or git@host:path repository, "<type> <base64>" as in a
    # known_hosts line; empty: not trusted yet, so nothing is fetched (builds/engine/git.py).
    repository_host_key = models.TextField(blank=True)
    # The unguessable part of the webhook URL, and the secret that signs deliveries.
    webhook_token = models.CharField(max_length=64, unique=True, default=_webhook_token)
    webhook_secret = EncryptedTextField(default=_webhook_secret)
    # The unguessable part of the status badges' URLs (docs/badges.md); an admin rotates it.
    badge_token = models.CharField(max_length=64, unique=True, default=badge_token)
    # Paths linked from shared/ into every release (e.g. "storage/", ".env").
    shared_paths = models.JSONField(default=list, blank=True)
    # Paths kept between builds on the worker (e.g. "node_modules", "vendor").
    cache_paths = models.JSONField(default=list, blank=True)
    # Globs (exclude-rule syntax) of what the deployment's own commands write on the server
    # (bytecode, collected static files, caches): never uploaded, never restored or removed
    # as drift (builds/engine/rollout.py, with_drift).
    generated_paths = models.JSONField(default=list, blank=True)
    # Build commands reach the internet (package registries) through the sandbox's own
    # user-mode network; off: no network at all inside the sandbox.
    build_network = models.BooleanField(default=True)
    # Leave out what the repository's .gitattributes marks export-ignore, as git archive
    # (and so Capistrano) does; off: deploy those paths too.
    export_ignore = models.BooleanField(default=True)
    # Check out the repository's submodules (recursively, with the project's key and the
    # repository's URL rules); off: their folders stay empty.
    submodules = models.BooleanField(default=True)
    # What a deployment does with drift it finds on a server (builds.engine.drift,
    # docs/drift.md): restore the build's files, or fail before the switch listing them.
    on_drift = models.CharField(max_length=10, choices=OnDrift.choices, default=OnDrift.RESTORE)
    # Hours between scheduled drift checks of each server (0: none; docs/drift.md).
    drift_check_hours = models.PositiveIntegerField(default=0)
    # Settings as code (docs/settings-as-code.md): a deployment reads .slipway.yml at its
    # revision, and the keys it holds replace the project's own settings for that deployment.
    settings_from_repository = models.BooleanField(default=False)
    # Build once, promote (docs/promote.md): how many kept build outputs ("artefacts") the
    # retention job leaves, newest first, and how old they may grow; 0 = no limit of that kind.
    artefacts_keep = models.PositiveIntegerField(default=10)
    artefacts_keep_days = models.PositiveIntegerField(default=30)
    # Whose [deploy: name] command a push honours: a member's is always checked against
    # their deploy rights; a pusher Slipway cannot match to a member by email is honoured
    # only with "anyone" (builds.webhook_services.command_deploy_refusal).
    commit_deploys = models.CharField(
        max_length=20, choices=CommitDeploys.choices, default=CommitDeploys.ANYONE
    )
    # The stack lock (shipit): while locked_at is set, every deployment of the project is
    # refused except a rollback (builds.services.deployment_create), whoever asks.
    locked_at = models.DateTimeField(null=True, blank=True)
    locked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    lock_reason = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ProjectQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def webhook_path(self) -> str:
        return f"/hooks/{self.webhook_token}/"

    @property
    def webhook_url(self) -> str:
        return settings.BASE_URL + self.webhook_path

    @property
    def badge_url(self) -> str:
        """The project's status badge (SVG), for a README: anyone with the URL sees it."""
        return f"{settings.BASE_URL}/badges/{self.badge_token}.svg"

    def server_badge_url(self, server_id: int) -> str:
        """The status badge of one of the project's servers. Its URL holds the server's id
        and a signature of it made with the project's badge token (server_badge_signature):
        one server's URL reveals neither the project's badge nor another server's."""
        return settings.BASE_URL + self.server_badge_path(server_id)

    def server_badge_path(self, server_id: int) -> str:
        """``server_badge_url`` without the site's address (for the dashboard's own pages)."""
        signature = server_badge_signature(self.badge_token, server_id)
        return f"/badges/servers/{server_id}-{signature}.svg"

    def role_of(self, user: User) -> str | None:
        membership = self.memberships.filter(user=user).first()
        return membership.role if membership else None


class Membership(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.VIEWER)
    # A deployer's deploy rights (docs/users.md#deploy-rights): the environments and the
    # servers they may deploy to, roll back and stop deployments on. Both empty: every server
    # of the project. Admins are never limited; viewers never deploy.
    deploy_environments = models.JSONField(default=list, blank=True)
    # Set when an admin gave limits: it stays when the servers named are deleted since, so
    # a deployer whose last allowed server is gone may deploy nowhere, not everywhere.
    deploy_limited = models.BooleanField(default=False)
    deploy_servers = models.ManyToManyField(
        "servers.Server", blank=True, related_name="deployer_memberships"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "user"], name="unique_membership")
        ]

    def __str__(self) -> str:
        return f"{self.user} as {self.role} of {self.project}"

    @property
    def can_deploy(self) -> bool:
        return self.role in DEPLOY_ROLES

    @property
    def can_configure(self) -> bool:
        return self.role in CONFIGURE_ROLES

    @property
    def is_limited(self) -> bool:
        """Whether deploy rights narrow this member's servers (a deployer with limits)."""
        return self.role == Role.DEPLOYER and self.deploy_limited

    def may_deploy_to(self, server: Server) -> bool:
        """Whether this member may deploy to ``server`` (one of the project's): an admin
        always, a deployer within their environments or servers, a viewer never."""
        if self.role == Role.ADMIN:
            return True
        if self.role != Role.DEPLOYER:
            return False
        if not self.is_limited:
            return True
        return (bool(server.environment) and server.environment in self.deploy_environments) or (
            self.deploy_servers.filter(pk=server.pk).exists()
        )


TOKEN_PREFIX = "slw_"  # noqa: S105 (a prefix, not a secret)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenScope(models.TextChoices):
    """What an API token may do, within what its owner's role on each project allows.

    The scope only narrows: a deploy token of a viewer still only reads that project.
    """

    READ = "read", "Read: look, change nothing"
    DEPLOY = "deploy", "Deploy: read, deploy, roll back, cancel, promote, abort"
    ADMIN = "admin", "Admin: everything your role allows"


class ApiTokenQuerySet(models.QuerySet["ApiToken"]):
    def active(self) -> ApiTokenQuerySet:
        return self.filter(revoked_at__isnull=True)


class ApiToken(models.Model):
    """A bearer token for the API. Only its SHA-256 is stored; the token is shown once."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100)
    token_hash = models.CharField(max_length=64, unique=True)
    # The first characters, so that a person can tell tokens apart in a list.
    prefix = models.CharField(max_length=16)
    # Tokens made before scopes existed acted with all their owner's rights: they keep them.
    scope = models.CharField(max_length=10, choices=TokenScope.choices, default=TokenScope.ADMIN)
    # None: valid until revoked.
    expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or timezone.now())

    @classmethod
    def issue(
        cls,
        *,
        user: User,
        name: str,
        scope: str = TokenScope.ADMIN,
        expires_at: datetime | None = None,
    ) -> tuple[ApiToken, str]:
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        record = cls.objects.create(
            user=user,
            name=name,
            token_hash=hash_token(token),
            prefix=token[:12],
            scope=scope,
            expires_at=expires_at,
        )
        return record, token


class EnvironmentVariable(models.Model):
    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="environment_variables"
    )
    name = models.CharField(max_length=255)
    value = EncryptedTextField(blank=True)
    # A secret value is write-only in the UI and the API, and masked in every log line.
    secret = models.BooleanField(default=False)
    # Available to build commands on the worker, and/or to SSH commands on the servers.
    build = models.BooleanField(default=True)
    servers = models.BooleanField(default=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="unique_environment_name")
        ]

    def __str__(self) -> str:
        return self.name


class ConfigFile(models.Model):
    """A file kept in Slipway (not the repository), written into each release."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="config_files")
    path = models.CharField(max_length=500)
    body = EncryptedTextField(blank=True)
    description = models.CharField(max_length=255, blank=True)
    # Octal ("600", "0640"); empty: 600, or 640 when a group is set (ConfigFileSpec).
    mode = models.CharField(max_length=4, blank=True)
    # Given the file with chgrp on servers with a shell; empty: the login user's group.
    group = models.CharField(max_length=32, blank=True)
    # Empty means every server of the project.
    servers = models.ManyToManyField("servers.Server", blank=True, related_name="config_files")

    class Meta:
        ordering = ["path"]
        constraints = [
            models.UniqueConstraint(fields=["project", "path"], name="unique_config_path")
        ]

    def __str__(self) -> str:
        return self.path


class ExcludedFile(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="excluded_files")
    pattern = models.CharField(max_length=500)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.pattern


class BuildCommand(models.Model):
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="build_commands")
    position = models.PositiveIntegerField(default=0)
    description = models.CharField(max_length=255, blank=True)
    command = models.TextField()
    timeout_seconds = models.PositiveIntegerField(null=True, blank=True)
    halt_on_error = models.BooleanField(default=True)
    # Globs of changed files; when set, the command is skipped if no changed file matches.
    watch_globs = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["position", "id"]

    def __str__(self) -> str:
        return self.description or self.command


class CommandStage(models.TextChoices):
    BEFORE_TRANSFER = "before_transfer", "Before the transfer"
    BEFORE_SWITCH = "before_switch", "After the transfer, before the switch"
    AFTER_SWITCH = "after_switch", "After the switch"
    # Only in rollbacks (never in a deployment), right after the switch back.
    AFTER_ROLLBACK = "after_rollback", "After a rollback's switch"


class CommandRunOn(models.TextChoices):
    ALWAYS = "always", "Every deployment"
    FIRST = "first", "First deployment only"
    NOT_FIRST = "not_first", "All but the first deployment"


class Command(models.Model):
    """A command run over SSH on the servers at one stage of a deployment."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="commands")
    position = models.PositiveIntegerField(default=0)
    description = models.CharField(max_length=255, blank=True)
    command = models.TextField()
    stage = models.CharField(
        max_length=20, choices=CommandStage.choices, default=CommandStage.AFTER_SWITCH
    )
    run_on = models.CharField(
        max_length=20, choices=CommandRunOn.choices, default=CommandRunOn.ALWAYS
    )
    halt_on_error = models.BooleanField(default=True)
    timeout_seconds = models.PositiveIntegerField(null=True, blank=True)
    # On one server of each deployment only (migrations): the first in the deployment's order
    # to reach it (builds.engine.rollout.RunOnce).
    run_once = models.BooleanField(default=False)
    # Empty means every server of the project.
    servers = models.ManyToManyField("servers.Server", blank=True, related_name="commands")

    class Meta:
        # The order they run in: by stage (not by the stage's name, which sorts
        # after_switch first), then by position. A rollback runs its after-rollback commands
        # before the after-switch ones; they are listed last, apart from a deployment's.
        ordering = [
            models.Case(
                models.When(stage=CommandStage.BEFORE_TRANSFER, then=models.Value(0)),
                models.When(stage=CommandStage.BEFORE_SWITCH, then=models.Value(1)),
                models.When(stage=CommandStage.AFTER_ROLLBACK, then=models.Value(3)),
                default=models.Value(2),
            ),
            "position",
            "id",
        ]

    def __str__(self) -> str:
        return self.description or self.command


# --------------------------------------------------------------------------- templates


class ProjectTemplate(models.Model):
    """A project's settings saved under a name, to start other projects from (saved on a
    project's settings page; the built-in ones live in projects/builtin_templates.py).

    ``contents`` is a template document (projects.services.template_document): shared,
    cache and generated paths, build and SSH commands, excluded files, config file
    skeletons, environment variables and health checks, never a secret value. A project
    made from it gets a copy; the two are not linked afterwards.
    """

    name = models.CharField(max_length=100)
    description = models.CharField(max_length=255, blank=True)
    contents = models.JSONField(default=dict)
    # The slug of the project it was saved from, as it was then (the project may be gone).
    source_project = models.CharField(max_length=100, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name", "id"]
        constraints = [
            # One name per site, whatever its case: the picker lists them by name. A backstop:
            # project_template_save compares folded names (template_name_key), which lower()
            # does not do alike on PostgreSQL and SQLite.
            models.UniqueConstraint(Lower("name"), name="unique_template_name"),
        ]

    def __str__(self) -> str:
        return self.name


# --------------------------------------------------------------------------- site settings


def is_site_admin(user: User) -> bool:
    """A site admin manages users and site settings: Django's superuser flag, on an active
    account (a deactivated admin is nobody's admin)."""
    return bool(user.is_authenticated and user.is_active and user.is_superuser)


class FreezeKind(models.TextChoices):
    WEEKLY = "weekly", "Every week: days and hours"
    DATES = "dates", "Dates: from one day to another (holidays)"


#: Monday first, as datetime.weekday() numbers them.
WEEKDAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


class FreezeWindow(models.Model):
    """A time when a project (or one environment of it) takes no automatic deployment.

    Weekly: on ``weekdays`` (0 = Monday) from ``start_time`` to ``end_time`` in ``time_zone``;
    an end at or before the start runs past midnight into the next day. Dates: every day from
    ``start_date`` to ``end_date`` inclusive in ``time_zone``. projects.freeze decides.
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="freeze_windows")
    name = models.CharField(max_length=100)
    kind = models.CharField(max_length=10, choices=FreezeKind.choices, default=FreezeKind.WEEKLY)
    # "" = every server of the project; else only servers (or groups) of this environment.
    environment = models.CharField(max_length=50, blank=True)
    weekdays = models.JSONField(default=list, blank=True)
    start_time = models.TimeField(null=True, blank=True)
    end_time = models.TimeField(null=True, blank=True)
    start_date = models.DateField(null=True, blank=True)
    end_date = models.DateField(null=True, blank=True)
    # An IANA name ("Europe/Paris"); the window follows its daylight saving time.
    time_zone = models.CharField(max_length=64, default="UTC")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name


class ProjectCreators(models.TextChoices):
    ADMINS = "admins", "Site admins only"
    EVERYONE = "everyone", "Every signed-in user"


class SiteSettings(models.Model):
    """The install's own settings, one row (pk 1), changed by site admins on the Users page.

    The defaults are the safe ones for several teams on one install (issue 9): only site
    admins create projects (a project runs its own build commands on the worker), and
    two-factor sign-in is each user's choice until an admin requires it.
    """

    SINGLETON_PK = 1

    project_creators = models.CharField(
        max_length=20, choices=ProjectCreators.choices, default=ProjectCreators.ADMINS
    )
    require_two_factor = models.BooleanField(default=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "site settings"

    def __str__(self) -> str:
        return "site settings"

    @classmethod
    def load(cls) -> SiteSettings:
        """The settings row, created with the defaults on first use."""
        instance, _ = cls.objects.get_or_create(pk=cls.SINGLETON_PK)
        return instance

    def may_create_projects(self, user: User) -> bool:
        if self.project_creators == ProjectCreators.EVERYONE:
            return bool(user.is_authenticated and user.is_active)
        return is_site_admin(user)


class AuditEvent(models.Model):
    """Who did what to a project, and when: deployments, rollbacks, configuration, trust."""

    project = models.ForeignKey(
        Project, null=True, blank=True, on_delete=models.CASCADE, related_name="audit_events"
    )
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # A dotted verb such as "deployment.created", "server.updated", "host_key.trusted".
    action = models.CharField(max_length=50)
    # What the action touched, in words ("server web1"), and details that help later.
    target = models.CharField(max_length=255, blank=True)
    detail = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["project", "-created_at"], name="audit_by_project")]

    def __str__(self) -> str:
        return f"{self.action} {self.target}"


# --------------------------------------------------------------------------- notifications


class NotificationKind(models.TextChoices):
    EMAIL = "email", "Email"
    SLACK = "slack", "Slack"
    DISCORD = "discord", "Discord"
    TEAMS = "teams", "Microsoft Teams"
    WEBHOOK = "webhook", "Webhook (signed JSON)"


# Kinds delivered by an HTTP POST to the notification's URL (the others go by email).
URL_KINDS = (
    NotificationKind.SLACK,
    NotificationKind.DISCORD,
    NotificationKind.TEAMS,
    NotificationKind.WEBHOOK,
)


class NotificationEvent(models.TextChoices):
    STARTED = "started", "Started"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    ROLLED_BACK = "rolled_back", "Rolled back"
    # A server's live release was found changed since its deployment (builds.drift_checks).
    DRIFT = "drift", "Drift found"


class DeliveryEvent(models.TextChoices):
    """What a delivery reports: a notification's events, and ``cancelled``, which only
    integrations take (a Git host's status must not stay "pending" for ever)."""

    STARTED = "started", "Started"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    ROLLED_BACK = "rolled_back", "Rolled back"
    CANCELLED = "cancelled", "Cancelled"
    DRIFT = "drift", "Drift found"


def _all_events() -> list[str]:
    return list(NotificationEvent.values)


class Notification(models.Model):
    """Where to tell people about a project's deployments (see builds.notifications)."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="notifications")
    kind = models.CharField(max_length=20, choices=NotificationKind.choices)
    # Slack, Discord and Teams incoming-webhook URLs carry their token in the path: encrypted,
    # and shown (in errors, the audit log, lists) as scheme://host only.
    url = EncryptedTextField(blank=True)
    address = models.CharField(max_length=254, blank=True)
    # NotificationEvent values this notification fires on.
    events = models.JSONField(default=_all_events)
    # Empty means every server of the project.
    servers = models.ManyToManyField("servers.Server", blank=True, related_name="notifications")
    # Signs `webhook` deliveries (X-Slipway-Signature); write-only in the UI and the API.
    secret = EncryptedTextField(blank=True)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} to {self.destination}"

    @property
    def destination(self) -> str:
        """Where it goes, safe to show: the address, or the URL's scheme://host[:port]."""
        if self.kind == NotificationKind.EMAIL:
            return self.address
        return origin_of(self.url)


class DeliveryStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    # Claimed by a worker; next_attempt_at is then the end of its lease.
    SENDING = "sending", "Sending"
    SENT = "sent", "Sent"
    RETRYING = "retrying", "Retrying"
    FAILED = "failed", "Failed"


# Deliveries someone still has to send once their next_attempt_at is past.
DELIVERY_OPEN = (DeliveryStatus.PENDING, DeliveryStatus.SENDING, DeliveryStatus.RETRYING)
DELIVERY_FINAL = (DeliveryStatus.SENT, DeliveryStatus.FAILED)


class NotificationDeliveryQuerySet(models.QuerySet["NotificationDelivery"]):
    def due(self, now: datetime) -> NotificationDeliveryQuerySet:
        return self.filter(status__in=DELIVERY_OPEN, next_attempt_at__lte=now)


class IntegrationKind(models.TextChoices):
    GITHUB = "github", "GitHub (commit statuses and deployments)"
    GITLAB = "gitlab", "GitLab (deployments)"
    GITEA = "gitea", "Gitea (commit statuses)"
    SENTRY = "sentry", "Sentry (releases and deploys)"


#: Each kind's API address when none is given (docs/integrations.md); Gitea has none.
INTEGRATION_DEFAULT_BASE_URLS: dict[str, str] = {
    IntegrationKind.GITHUB: "https://api.github.com",
    IntegrationKind.GITLAB: "https://gitlab.com/api/v4",
    IntegrationKind.SENTRY: "https://sentry.io",
}


class Integration(models.Model):
    """Where a project's deployments are reported to a Git host or to Sentry, with a token
    (see builds.integrations). Delivered as NotificationDelivery rows, like notifications."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="integrations")
    kind = models.CharField(max_length=20, choices=IntegrationKind.choices)
    # The API's root: https://api.github.com, https://host/api/v3 (GitHub Enterprise),
    # https://gitlab.com/api/v4, https://host/api/v1 (Gitea), https://sentry.io.
    base_url = models.CharField(max_length=500)
    # owner/repo (GitHub, Gitea); a numeric id or namespace/project path (GitLab);
    # organization/project slugs (Sentry).
    repository = models.CharField(max_length=255)
    # The environment reported; "" = the environment of the deployment's servers.
    environment = models.CharField(max_length=100, blank=True)
    # Write-only in the UI and the API, masked in logs (projects.secrets).
    token = EncryptedTextField()
    # Empty means every server of the project.
    servers = models.ManyToManyField("servers.Server", blank=True, related_name="integrations")
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.get_kind_display().split(' (')[0]} {self.repository}"

    @property
    def destination(self) -> str:
        """Where it goes, safe to show: the API's scheme://host[:port]."""
        return origin_of(self.base_url)


class NotificationDelivery(models.Model):
    """One message about one deployment event to one notification or one integration,
    recorded before it is sent (exactly one of ``notification`` and ``integration`` is set).

    The payload is frozen when the event happens, so every attempt sends the same bytes (and
    the same signature) and the receiver can tell a retry by its delivery id.
    """

    notification = models.ForeignKey(
        Notification, null=True, blank=True, on_delete=models.CASCADE, related_name="deliveries"
    )
    integration = models.ForeignKey(
        Integration, null=True, blank=True, on_delete=models.CASCADE, related_name="deliveries"
    )
    # What the provider answered that later deliveries of the same deployment need: the
    # GitHub or GitLab deployment's id, stored as soon as it is created (builds.integrations).
    remote_id = models.CharField(max_length=100, blank=True)
    deployment = models.ForeignKey(
        "builds.Deployment",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="notification_deliveries",
    )
    # Sent as X-Slipway-Delivery; the same on every attempt.
    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    event = models.CharField(max_length=20, choices=DeliveryEvent.choices)
    payload = models.JSONField(default=dict)
    status = models.CharField(
        max_length=20, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING
    )
    attempts = models.PositiveSmallIntegerField(default=0)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    # Why the last attempt failed, never with a secret or a full URL (scheme://host at most).
    error = models.TextField(blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True, default=timezone.now)
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)

    objects = NotificationDeliveryQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            # One message per notification and event of a deployment, even if the event is
            # reported twice (a finish that raced a reaper, a redelivered task).
            models.UniqueConstraint(
                fields=["notification", "deployment", "event"],
                condition=models.Q(deployment__isnull=False),
                name="unique_notification_event",
            ),
            models.UniqueConstraint(
                fields=["integration", "deployment", "event"],
                condition=models.Q(deployment__isnull=False),
                name="unique_integration_event",
            ),
            models.CheckConstraint(
                condition=models.Q(notification__isnull=True, integration__isnull=False)
                | models.Q(notification__isnull=False, integration__isnull=True),
                name="delivery_has_one_receiver",
            ),
        ]
        indexes = [
            # The safety net (resend_due) looks only at open deliveries.
            models.Index(
                fields=["next_attempt_at"],
                condition=models.Q(status__in=["pending", "sending", "retrying"]),
                name="open_delivery_next_attempt",
            ),
            models.Index(fields=["notification", "-created_at"], name="delivery_by_notification"),
            models.Index(fields=["integration", "-created_at"], name="delivery_by_integration"),
        ]

    def __str__(self) -> str:
        receiver = self.notification_id or f"integration {self.integration_id}"
        return f"{self.event} → {receiver} ({self.status})"

    @property
    def receiver(self) -> Notification | Integration:
        """The notification or the integration this delivery goes to."""
        receiver = self.notification or self.integration
        assert receiver is not None  # delivery_has_one_receiver
        return receiver
