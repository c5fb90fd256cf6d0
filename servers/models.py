"""Servers a project deploys to, groups of them, and the releases kept on each."""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.db import models
from django.utils import timezone

from builds.engine.git import redact_url
from deployer.crypto import EncryptedTextField


class Protocol(models.TextChoices):
    SSH = "ssh", "SSH (atomic releases)"
    SFTP = "sftp", "SFTP only (files uploaded in place)"
    FTP = "ftp", "FTP (files uploaded in place; the password crosses in clear text)"
    FTPS = "ftps", "FTPS, explicit TLS (files uploaded in place)"
    S3 = "s3", "S3-compatible storage (files uploaded as objects of a bucket)"


#: The protocols whose files go over FTP (builds.engine.ftp), not SSH.
FTP_PROTOCOLS = (Protocol.FTP, Protocol.FTPS)


class AuthMethod(models.TextChoices):
    PROJECT_KEY = "project_key", "The project's SSH key"
    PRIVATE_KEY = "private_key", "A private key of its own"
    PASSWORD = "password", "A password"


class JumpAuthMethod(models.TextChoices):
    PROJECT_KEY = "project_key", "The project's SSH key"
    PRIVATE_KEY = "private_key", "A private key of its own"


class EncodedJSON:
    """A value serialised to JSON text already (``text``), for a JSONField whose encoder is
    ``PreEncodedJSONEncoder``: stored as it is instead of being parsed and serialised again
    (a release's manifest: megabytes at 100,000 files, once per server)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


class PreEncodedJSONEncoder(json.JSONEncoder):
    """json.JSONEncoder that passes an ``EncodedJSON`` through as its text. Django's JSONField
    serialises with ``json.dumps(value, cls=encoder)``, which calls ``encode`` (SQLite and
    PostgreSQL alike); the text must be valid JSON, as ``Manifest.to_json`` makes it."""

    def encode(self, o: Any) -> str:
        if isinstance(o, EncodedJSON):
            return o.text
        return super().encode(o)


class ReleaseCopy(models.TextChoices):
    """How a new release starts from the live one (builds.engine.specs.RELEASE_COPIES)."""

    AUTO = "auto", "Hard links, unless commands run on the server"
    HARD_LINKS = "hard_links", "Hard links"
    COPY = "copy", "A full copy"


class Server(models.Model):
    project = models.ForeignKey(
        "projects.Project", on_delete=models.CASCADE, related_name="servers"
    )
    name = models.CharField(max_length=100)
    protocol = models.CharField(max_length=10, choices=Protocol.choices, default=Protocol.SSH)
    hostname = models.CharField(max_length=255)
    port = models.PositiveIntegerField(default=22)
    username = models.CharField(max_length=100)
    auth_method = models.CharField(
        max_length=20, choices=AuthMethod.choices, default=AuthMethod.PROJECT_KEY
    )
    password = EncryptedTextField(blank=True)
    private_key = EncryptedTextField(blank=True)
    deploy_path = models.CharField(max_length=500)
    atomic = models.BooleanField(default=True)
    keep_releases = models.PositiveIntegerField(
        default=3,
        help_text="Releases left on the server after each deployment, the live one included "
        "(at least 2: the live one and the one a rollback returns to).",
    )
    release_copy = models.CharField(
        max_length=20,
        choices=ReleaseCopy.choices,
        default=ReleaseCopy.AUTO,
        help_text="How each new release starts from the live one: hard links to its files "
        "(fast; a file written in place afterwards changes in every release sharing it) or "
        "a full copy. Auto: hard links unless the deployment runs commands on this server.",
    )
    # Deploy this branch instead of the project's default branch.
    branch = models.CharField(max_length=255, blank=True)
    environment = models.CharField(max_length=50, blank=True)
    auto_deploy = models.BooleanField(default=True)
    enabled = models.BooleanField(default=True)
    # The pinned host key ("SHA256:..." as ssh-keygen -l prints it); empty means not trusted yet.
    host_key_fingerprint = models.CharField(max_length=100, blank=True)
    # Permissions applied explicitly after upload (octal strings such as "644"), empty: as in Git.
    file_mode = models.CharField(max_length=4, blank=True)
    directory_mode = models.CharField(max_length=4, blank=True)
    # A jump host (bastion) every connection to the server is tunnelled through; empty
    # jump_hostname: connect directly. It logs in with a key and has its own pinned host key.
    jump_hostname = models.CharField(max_length=255, blank=True)
    jump_port = models.PositiveIntegerField(default=22)
    jump_username = models.CharField(max_length=100, blank=True)
    jump_auth_method = models.CharField(
        max_length=20, choices=JumpAuthMethod.choices, default=JumpAuthMethod.PROJECT_KEY
    )
    jump_private_key = EncryptedTextField(blank=True)
    jump_host_key_fingerprint = models.CharField(max_length=100, blank=True)
    # FTPS: the pinned SHA-256 of the server's certificate ("SHA256:AB:CD:..."); empty: the
    # certificate must verify against the system's certificate authorities instead.
    certificate_fingerprint = models.CharField(max_length=110, blank=True)
    # FTP and FTPS: transfers in flight at once, each on a connection of its own.
    ftp_connections = models.PositiveSmallIntegerField(default=4)
    # S3: the bucket, where it is (an S3-compatible endpoint; empty: AWS in s3_region), the
    # key prefix the files go under, and the keys (encrypted; never shown: the id masked).
    # hostname, port and username follow the endpoint and bucket (servers.services).
    s3_endpoint_url = models.CharField(max_length=500, blank=True)
    s3_region = models.CharField(max_length=50, blank=True, default="us-east-1")
    s3_bucket = models.CharField(max_length=63, blank=True)
    s3_prefix = models.CharField(max_length=500, blank=True)
    s3_path_style = models.BooleanField(default=False)
    s3_access_key_id = EncryptedTextField(blank=True)
    s3_secret_access_key = EncryptedTextField(blank=True)
    # One rule a line: "<pattern> acl=... storage_class=... cache_control=..." (docs/s3.md).
    s3_object_rules = models.TextField(blank=True)
    # Requests in flight at once (multipart parts included).
    s3_parallel_uploads = models.PositiveSmallIntegerField(default=8)
    # The stack lock of this server alone (see Project.locked_at): only rollbacks go through.
    locked_at = models.DateTimeField(null=True, blank=True)
    locked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    lock_reason = models.TextField(blank=True)
    position = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["position", "name"]
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="unique_server_name")
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def is_ftp(self) -> bool:
        return self.protocol in FTP_PROTOCOLS

    @property
    def is_s3(self) -> bool:
        return self.protocol == Protocol.S3

    @property
    def without_ssh(self) -> bool:
        """FTP servers and S3 buckets: no SSH, no host key, no release to switch back to."""
        return self.is_ftp or self.is_s3

    @property
    def effective_branch(self) -> str:
        return self.branch or self.project.branch

    @property
    def address(self) -> str:
        if self.is_s3:
            return f"s3://{self.s3_bucket}/{self.s3_prefix} at {self.s3_url}"
        return f"{self.username}@{self.hostname}:{self.port}"

    @property
    def s3_url(self) -> str:
        """The S3 endpoint requests go to (AWS's regional one when none is set)."""
        return self.s3_endpoint_url or f"https://s3.{self.s3_region}.amazonaws.com"

    @property
    def trusted(self) -> bool:
        """May be deployed to. An SSH or SFTP server once both hops' host keys are pinned (the
        server's, and its jump host's if it has one). FTP has nothing to pin; an FTPS
        server's certificate is checked at each connection (pinned, or verified by the
        system's CAs; builds.engine.ftp refuses any other). An S3 bucket is reached over
        HTTPS verified by the system's CAs (or the http:// endpoint its owner chose)."""
        if self.without_ssh:
            return True
        return bool(self.host_key_fingerprint) and (
            not self.jump_hostname or bool(self.jump_host_key_fingerprint)
        )

    @property
    def untrusted_hop(self) -> str:
        """Whose host key is still to be trusted ("its host key", "its jump host's host
        key"), "" when both are (or for FTP and S3, which have none)."""
        if self.without_ssh:
            return ""
        if not self.host_key_fingerprint:
            return "its host key"
        if self.jump_hostname and not self.jump_host_key_fingerprint:
            return f"its jump host's host key ({self.jump_address})"
        return ""

    @property
    def jump_address(self) -> str:
        """``host:port`` of the jump host, "" when the server is reached directly."""
        if not self.jump_hostname:
            return ""
        host = f"[{self.jump_hostname}]" if ":" in self.jump_hostname else self.jump_hostname
        return f"{host}:{self.jump_port}"

    def live_release(self) -> Release | None:
        return self.releases.filter(live=True).first()


class Strategy(models.TextChoices):
    PARALLEL = "parallel", "All servers at once"
    PREPARE_THEN_SWITCH = "prepare_then_switch", "Prepare every server, then switch together"
    ROLLING = "rolling", "Rolling, in batches"
    CANARY = "canary", "Canary first, then the rest"
    BLUE_GREEN = "blue_green", "Blue-green: the idle colour, then the router switches"


class Colour(models.TextChoices):
    """The two halves of a blue-green group (builds.engine.specs.COLOURS)."""

    BLUE = "blue", "Blue"
    GREEN = "green", "Green"


class RouterKind(models.TextChoices):
    """How a blue-green group's router switches the traffic (builds.engine.router)."""

    NGINX = "nginx", "nginx: an upstream include file, tested and reloaded"
    COMMAND = "command", "A switch command (HAProxy, a load balancer's CLI...)"


class Promotion(models.TextChoices):
    AUTO = "auto", "Automatically after the window"
    MANUAL = "manual", "When someone presses Promote"


class ServerGroup(models.Model):
    project = models.ForeignKey("projects.Project", on_delete=models.CASCADE, related_name="groups")
    name = models.CharField(max_length=100)
    branch = models.CharField(max_length=255, blank=True)
    environment = models.CharField(max_length=50, blank=True)
    auto_deploy = models.BooleanField(default=True)
    strategy = models.CharField(max_length=30, choices=Strategy.choices, default=Strategy.PARALLEL)
    max_parallel = models.PositiveIntegerField(default=5)
    # Rolling: servers per batch, "2" or a percentage such as "25%".
    batch_size = models.CharField(max_length=10, default="1")
    canary_count = models.PositiveIntegerField(default=1)
    canary_window_seconds = models.PositiveIntegerField(default=0)
    promotion = models.CharField(max_length=10, choices=Promotion.choices, default=Promotion.AUTO)
    pause_seconds = models.PositiveIntegerField(default=0)
    # Blue-green (docs/blue-green.md): the colour the router sends the traffic to, recorded
    # only once the router took the switch ("" before the first one), and since when.
    live_colour = models.CharField(max_length=10, choices=Colour.choices, blank=True)
    live_colour_since = models.DateTimeField(null=True, blank=True)
    # The server of the project that switches the traffic, and how.
    router = models.ForeignKey(
        Server, null=True, blank=True, on_delete=models.SET_NULL, related_name="routed_groups"
    )
    router_kind = models.CharField(
        max_length=10, choices=RouterKind.choices, default=RouterKind.NGINX
    )
    # nginx: the include file Slipway rewrites (empty: the default, see include_path) and
    # how the router's login user runs nginx ("sudo -n nginx"...).
    router_include_path = models.CharField(max_length=500, blank=True)
    router_nginx_command = models.CharField(max_length=500, default="nginx")
    # command: run on the router with %colour% and %hosts% (quoted shell words).
    router_switch_command = models.TextField(blank=True)
    # The port of a member's address in the upstream when the member names none.
    upstream_port = models.PositiveIntegerField(default=80)
    servers = models.ManyToManyField(Server, through="GroupMember", related_name="groups")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["project", "name"], name="unique_group_name")
        ]

    def __str__(self) -> str:
        return self.name

    def ordered_servers(self) -> list[Server]:
        return [
            member.server for member in self.members.select_related("server").order_by("position")
        ]

    @property
    def is_blue_green(self) -> bool:
        return self.strategy == Strategy.BLUE_GREEN

    @property
    def upstream_name(self) -> str:
        """The nginx upstream the include file defines (``proxy_pass http://<it>;``)."""
        return f"slipway_group_{self.pk}"

    @property
    def default_include_path(self) -> str:
        return f"/etc/nginx/conf.d/slipway-group-{self.pk}.conf"

    @property
    def include_path(self) -> str:
        return self.router_include_path or self.default_include_path

    @property
    def idle_colour(self) -> str:
        """Where the next deployment goes: the colour not live (blue before any switch)."""
        return Colour.GREEN if self.live_colour == Colour.BLUE else Colour.BLUE

    @property
    def colours(self) -> dict[str, str]:
        """Server id (as text, a JSON key) -> its colour, for the members that have one."""
        return {str(m.server_id): m.colour for m in self.members.all() if m.colour}

    @property
    def upstreams(self) -> dict[str, str]:
        """Server id (as text) -> the address the router sends to, for those that name one."""
        return {str(m.server_id): m.upstream for m in self.members.all() if m.upstream}

    def members_of(self, colour: str) -> list[GroupMember]:
        return [
            member
            for member in self.members.select_related("server").order_by("position")
            if member.colour == colour
        ]


class GroupMember(models.Model):
    group = models.ForeignKey(ServerGroup, on_delete=models.CASCADE, related_name="members")
    server = models.ForeignKey(Server, on_delete=models.CASCADE, related_name="+")
    position = models.PositiveIntegerField(default=0)
    # Blue-green groups: the member's colour, and the address ("host:port") the router sends
    # its share of the traffic to (empty: the server's host name on the group's upstream_port).
    colour = models.CharField(max_length=10, choices=Colour.choices, blank=True)
    upstream = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["position"]
        constraints = [
            models.UniqueConstraint(fields=["group", "server"], name="unique_group_member")
        ]

    def __str__(self) -> str:
        return f"{self.server_id} in {self.group_id}"

    def upstream_address(self, port: int) -> str:
        """Where the router sends this member's traffic: its upstream, else host:port."""
        if self.upstream:
            return self.upstream
        host = self.server.hostname
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ReleaseManager(models.Manager["Release"]):
    """Every query of releases leaves ``manifest`` out unless asked for: at 100,000 files it
    is about 10 MB of JSON and 40 MB once parsed, which pages, badges, the API and the
    scheduler never show. Reading ``release.manifest`` loads it then (one query), and
    ``.values_list("manifest", flat=True)`` reads it alone."""

    def get_queryset(self) -> models.QuerySet[Release]:
        return super().get_queryset().defer("manifest")


class Release(models.Model):
    """A release directory Slipway made on a server, with the manifest of what it holds."""

    server = models.ForeignKey(Server, on_delete=models.CASCADE, related_name="releases")
    name = models.CharField(max_length=100)
    revision = models.CharField(max_length=40)
    branch = models.CharField(max_length=255, blank=True)
    deployment = models.ForeignKey(
        "builds.Deployment",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="releases",
    )
    # {"path": [size, mode, digest, kind]}: basis of incremental transfer and drift checks.
    manifest = models.JSONField(default=dict, blank=True, encoder=PreEncodedJSONEncoder)
    live = models.BooleanField(default=False)
    # The server's history of live switches, as a stack: a deployment that makes this
    # release live points it at the release that was live before; a plain rollback goes
    # back along these links (builds.services.rollback_target). Null: the first release,
    # or one made before the history was kept (then the by-date rule applies).
    previous = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # When it last went live (a deployment or a rollback switched current to it).
    went_live_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    removed_at = models.DateTimeField(null=True, blank=True)

    objects = ReleaseManager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["server", "name"], name="unique_release_name"),
            # One live release per server: the database refuses a second.
            models.UniqueConstraint(
                fields=["server"], condition=models.Q(live=True), name="one_live_release"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class HealthCheckKind(models.TextChoices):
    HTTP = "http", "HTTP request from the worker"
    COMMAND = "command", "Command over SSH"


class HealthCheckWhen(models.TextChoices):
    BEFORE_SWITCH = "before_switch", "Before the switch (against the prepared release)"
    AFTER_SWITCH = "after_switch", "After the switch"


class HealthCheck(models.Model):
    """Is a server healthy on a release? Failing after the switch rolls the server back."""

    project = models.ForeignKey(
        "projects.Project", on_delete=models.CASCADE, related_name="health_checks"
    )
    kind = models.CharField(max_length=10, choices=HealthCheckKind.choices)
    when = models.CharField(
        max_length=20, choices=HealthCheckWhen.choices, default=HealthCheckWhen.AFTER_SWITCH
    )
    # HTTP: a URL with %variables% (e.g. http://%hostname%/health), the status and text expected.
    url = models.CharField(max_length=500, blank=True)
    expected_status = models.PositiveIntegerField(default=200)
    body_contains = models.CharField(max_length=255, blank=True)
    # Command: exit code 0 is healthy; it runs in the release directory.
    command = models.TextField(blank=True)
    timeout_seconds = models.PositiveIntegerField(default=5)
    retries = models.PositiveIntegerField(default=3)
    interval_seconds = models.PositiveIntegerField(default=5)
    # Empty means every server of the project.
    servers = models.ManyToManyField(Server, blank=True, related_name="health_checks")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return self.shown_url or self.command

    @property
    def shown_url(self) -> str:
        """``url`` as pages and API answers show it: a password (and an https user, often a
        token) replaced by ``***`` (builds.engine.git.redact_url); an edit that sends this
        back keeps the stored one (servers.services.health_check_update)."""
        return redact_url(self.url) if self.url else self.url


def rollback_target(server: Server) -> Release | None:
    """Where a plain rollback of ``server`` goes: the release that was live before the live one.

    The server's live switches are a stack (Release.previous): each deployment pushes the
    release it made live onto the one live before it, and a plain rollback pops, so deploy A,
    deploy B, roll back, deploy B again, roll back ends on A. Releases removed from the server
    are skipped (the walk goes further back). A live release older than this history (no
    ``previous`` link) falls back to the newest kept release created before it. None when
    there is nothing to go back to.
    """
    kept = server.releases.filter(removed_at__isnull=True)
    live = server.live_release()
    if live is not None and live.previous_id is not None:
        seen = {live.pk}
        candidate = live.previous
        while candidate is not None and candidate.pk not in seen:
            if candidate.removed_at is None and candidate.server_id == server.pk:
                return candidate
            seen.add(candidate.pk)
            candidate = candidate.previous
        return None
    older = kept.filter(live=False)
    if live is not None:
        older = older.filter(created_at__lt=live.created_at)
    return older.order_by("-created_at", "-id").first()
