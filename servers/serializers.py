"""The API's shapes for servers, their releases and server groups.

A server's password and private key, and its jump host's private key, are write-only: no
answer ever holds them, only ``auth_method`` and ``jump_auth_method`` say which way they log in.
An S3 bucket's access key id and secret are write-only too: answers hold the key id masked
(``s3_access_key_id_masked``) and whether a secret is set.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from builds.engine.errors import InvalidInput
from builds.engine.ftp import MAX_CONNECTIONS as MAX_FTP_CONNECTIONS
from builds.engine.s3 import MAX_PARALLEL_UPLOADS, masked_key_id
from builds.engine.specs import parse_batch_size
from builds.models import DriftCheck
from builds.services import MAX_REASON_LENGTH, rollback_plan_server
from deployer.api import api_url
from deployer.links import deployment_page, server_page
from projects.serializers import (
    LockSerializer,
    ProjectServerField,
    SettingSerializer,
    lock_data,
)
from projects.services import MAX_POSITION
from servers.health import strategy_clean
from servers.models import (
    AuthMethod,
    Colour,
    HealthCheck,
    JumpAuthMethod,
    Protocol,
    Release,
    ReleaseCopy,
    Server,
    ServerGroup,
)
from servers.services import MAX_KEEP_RELEASES, MIN_KEEP_RELEASES

# The longest batch size the database keeps (ServerGroup.batch_size).
BATCH_SIZE_MAX_LENGTH = 10


class LiveReleaseSerializer(serializers.Serializer[Release]):
    name = serializers.CharField()
    revision = serializers.CharField()
    deployed_at = serializers.DateTimeField(source="created_at")


class RollbackTargetSerializer(serializers.Serializer[Any]):
    """Where a plain rollback of the server goes, before anything happens."""

    name = serializers.CharField(help_text="The release that will go live.")
    revision = serializers.CharField()
    deployed_at = serializers.DateTimeField(help_text="When that release was made.")
    live_from = serializers.DateTimeField(
        allow_null=True, help_text="When it last went live (null: not recorded)."
    )
    live_until = serializers.DateTimeField(
        allow_null=True, help_text="When it stopped being live: when the live one went live."
    )
    replaces = serializers.CharField(
        allow_null=True, help_text="The release live now, which it replaces."
    )


class ServerSerializer(serializers.ModelSerializer[Server]):
    trusted = serializers.SerializerMethodField(
        help_text="May be deployed to: an SSH or SFTP server once its host key is pinned, "
        "and its jump host's too when it has one; FTP and FTPS servers always (an FTPS "
        "certificate is checked at each connection: pinned, or verified by the system's "
        "certificate authorities)."
    )
    jump_trusted = serializers.SerializerMethodField(
        help_text="True once the jump host's key is pinned; false without a jump host."
    )
    live_release = serializers.SerializerMethodField()
    rollback_target = serializers.SerializerMethodField(
        help_text="The release a rollback without a named release would put live: the one "
        "live before the live one. Null when there is none."
    )
    s3_access_key_id_masked = serializers.SerializerMethodField(
        help_text="S3: the access key id's first and last 4 characters (`AKIA…MPLE`); '' "
        "on other servers. The key id and the secret are write-only."
    )
    s3_secret_access_key_set = serializers.SerializerMethodField(
        help_text="S3: a secret access key is stored (encrypted)."
    )
    url = serializers.SerializerMethodField()
    html_url = serializers.SerializerMethodField()
    releases_url = serializers.SerializerMethodField()
    lock = serializers.SerializerMethodField(
        help_text="This server's stack lock: null, or who locked it, when and why (the "
        "project's own lock is on the project)."
    )
    badge_url = serializers.SerializerMethodField(
        help_text="This server's status badge (SVG): anyone with the URL sees its name, the "
        "last deployment's state here and the live revision (the project's badge/rotate/ "
        "changes it)."
    )

    class Meta:
        model = Server
        fields = [
            "id",
            "name",
            "protocol",
            "hostname",
            "port",
            "username",
            "auth_method",
            "deploy_path",
            "atomic",
            "keep_releases",
            "release_copy",
            "branch",
            "environment",
            "auto_deploy",
            "enabled",
            "host_key_fingerprint",
            "trusted",
            "file_mode",
            "directory_mode",
            "jump_hostname",
            "jump_port",
            "jump_username",
            "jump_auth_method",
            "jump_host_key_fingerprint",
            "jump_trusted",
            "certificate_fingerprint",
            "ftp_connections",
            "s3_endpoint_url",
            "s3_region",
            "s3_bucket",
            "s3_prefix",
            "s3_path_style",
            "s3_access_key_id_masked",
            "s3_secret_access_key_set",
            "s3_object_rules",
            "s3_parallel_uploads",
            "position",
            "live_release",
            "rollback_target",
            "lock",
            "badge_url",
            "created_at",
            "url",
            "html_url",
            "releases_url",
        ]
        read_only_fields = fields

    def get_trusted(self, server: Server) -> bool:
        return server.trusted

    def get_badge_url(self, server: Server) -> str:
        return server.project.server_badge_url(server.pk)

    def get_s3_access_key_id_masked(self, server: Server) -> str:
        return masked_key_id(server.s3_access_key_id) if server.s3_access_key_id else ""

    def get_s3_secret_access_key_set(self, server: Server) -> bool:
        return bool(server.s3_secret_access_key)

    @extend_schema_field(LockSerializer(allow_null=True))
    def get_lock(self, server: Server) -> dict[str, Any] | None:
        return lock_data(server)

    def get_jump_trusted(self, server: Server) -> bool:
        return bool(server.jump_hostname and server.jump_host_key_fingerprint)

    @extend_schema_field(LiveReleaseSerializer(allow_null=True))
    def get_live_release(self, server: Server) -> dict[str, Any] | None:
        live = server.live_release()
        return LiveReleaseSerializer(live).data if live is not None else None

    @extend_schema_field(RollbackTargetSerializer(allow_null=True))
    def get_rollback_target(self, server: Server) -> dict[str, Any] | None:
        plan = rollback_plan_server(server)
        if plan.release is None:
            return None
        return dict(
            RollbackTargetSerializer(
                {
                    "name": plan.release.name,
                    "revision": plan.release.revision,
                    "deployed_at": plan.release.created_at,
                    "live_from": plan.release.went_live_at,
                    "live_until": plan.live_until,
                    "replaces": plan.live.name if plan.live is not None else None,
                }
            ).data
        )

    def get_url(self, server: Server) -> str:
        return api_url("api-server", slug=server.project.slug, server_id=server.pk)

    def get_html_url(self, server: Server) -> str:
        return server_page(server.project.slug, server.pk)

    def get_releases_url(self, server: Server) -> str:
        return api_url("api-server-releases", slug=server.project.slug, server_id=server.pk)


class ServerInputSerializer(serializers.Serializer[dict[str, Any]]):
    name = serializers.CharField(max_length=100)
    hostname = serializers.CharField(
        max_length=255,
        required=False,
        help_text="Required but on S3 buckets, whose host follows s3_endpoint_url.",
    )
    port = serializers.IntegerField(
        min_value=1, max_value=65535, required=False, help_text="Default: 22, or 21 for FTP."
    )
    username = serializers.CharField(
        max_length=100, required=False, help_text="Required but on S3 buckets."
    )
    deploy_path = serializers.CharField(
        max_length=500,
        required=False,
        help_text="An absolute path; required but on S3 buckets (`/<bucket>/<prefix>` there).",
    )
    protocol = serializers.ChoiceField(
        choices=Protocol.choices,
        default=Protocol.SSH,
        help_text="ftp sends the password and the files in clear text: prefer ftps, sftp or "
        "ssh (docs/ftp.md). s3: an S3-compatible bucket (docs/s3.md).",
    )
    atomic = serializers.BooleanField(
        required=False,
        help_text="Releases side by side and a symlink switched: default true on SSH "
        "servers; must be false on FTP servers, which cannot make symlinks.",
    )
    keep_releases = serializers.IntegerField(
        min_value=MIN_KEEP_RELEASES,
        max_value=MAX_KEEP_RELEASES,
        default=3,
        help_text="Releases left on the server after each deployment, the live one included "
        "(at least 2: the live one and the one a rollback returns to).",
    )
    release_copy = serializers.ChoiceField(
        choices=ReleaseCopy.choices,
        default=ReleaseCopy.AUTO,
        help_text="How each new release starts from the live one: `hard_links` (a directory "
        "entry per file; a file written in place afterwards changes in every release sharing "
        "it), `copy` (every file copied), or `auto` (hard links unless the deployment runs "
        "commands on this server). See docs/servers.md.",
    )
    branch = serializers.CharField(max_length=255, allow_blank=True, default="")
    environment = serializers.CharField(max_length=50, allow_blank=True, default="")
    auto_deploy = serializers.BooleanField(default=True)
    enabled = serializers.BooleanField(default=True)
    auth_method = serializers.ChoiceField(
        choices=AuthMethod.choices,
        required=False,
        help_text="Set project_key to go back to the project's key; password and "
        "private_key choose the method themselves.",
    )
    # Secrets are kept exactly as typed: a password may well end in a blank.
    password = serializers.CharField(
        max_length=1000,
        required=False,
        allow_blank=True,
        write_only=True,
        trim_whitespace=False,
        help_text="Write-only, stored encrypted. The only way an FTP or FTPS server logs in.",
    )
    private_key = serializers.CharField(
        max_length=20_000,
        required=False,
        allow_blank=True,
        write_only=True,
        trim_whitespace=False,
        help_text="An unencrypted ed25519, ECDSA or RSA key (OpenSSH or PEM).",
    )
    host_key_fingerprint = serializers.CharField(
        max_length=1000,
        required=False,
        allow_blank=True,
        help_text="The host key's SHA256 fingerprint as `ssh-keygen -lf` prints it "
        "(`SHA256:…`, or the whole line `256 SHA256:… root@host (ED25519)`).",
    )
    file_mode = serializers.RegexField(
        r"^[0-7]{3,4}$", max_length=4, required=False, allow_blank=True
    )
    directory_mode = serializers.RegexField(
        r"^[0-7]{3,4}$", max_length=4, required=False, allow_blank=True
    )
    certificate_fingerprint = serializers.CharField(
        max_length=200,
        required=False,
        allow_blank=True,
        help_text="FTPS: the server certificate's SHA-256 to pin, as `openssl x509 -noout "
        "-fingerprint -sha256` prints it; blank: the certificate must verify against the "
        "system's certificate authorities.",
    )
    ftp_connections = serializers.IntegerField(
        min_value=1,
        max_value=MAX_FTP_CONNECTIONS,
        required=False,
        help_text="FTP and FTPS: files in flight at once, each on a connection of its own.",
    )
    s3_endpoint_url = serializers.CharField(
        max_length=500,
        required=False,
        allow_blank=True,
        help_text="S3: the service, `https://host[:port]` (MinIO, Cloudflare R2, Backblaze B2, "
        "Wasabi, DigitalOcean Spaces...); blank: AWS in s3_region. Checked by the servers' "
        "outbound-address policy.",
    )
    s3_region = serializers.CharField(
        max_length=50, required=False, allow_blank=True, help_text="S3: default us-east-1."
    )
    s3_bucket = serializers.CharField(
        max_length=63, required=False, allow_blank=True, help_text="S3: the bucket's name."
    )
    s3_prefix = serializers.CharField(
        max_length=500,
        required=False,
        allow_blank=True,
        help_text="S3: the key prefix the files go under (`site/`); blank: the bucket's root.",
    )
    s3_path_style = serializers.BooleanField(
        required=False,
        help_text="S3: `https://host/bucket/key` instead of `https://bucket.host/key` (MinIO "
        "and most self-hosted services need it).",
    )
    s3_access_key_id = serializers.CharField(
        max_length=200,
        required=False,
        allow_blank=True,
        write_only=True,
        help_text="S3: write-only, stored encrypted; answers show it masked. Blank in an "
        "update: unchanged.",
    )
    s3_secret_access_key = serializers.CharField(
        max_length=500,
        required=False,
        allow_blank=True,
        write_only=True,
        trim_whitespace=False,
        help_text="S3: write-only, stored encrypted, never shown. Blank in an update: unchanged.",
    )
    s3_object_rules = serializers.CharField(
        max_length=20_000,
        required=False,
        allow_blank=True,
        help_text="S3: one rule a line, `<pattern> acl=… storage_class=… cache_control=…`, "
        'e.g. `*.css cache_control="public, max-age=31536000"` (docs/s3.md).',
    )
    s3_parallel_uploads = serializers.IntegerField(
        min_value=1,
        max_value=MAX_PARALLEL_UPLOADS,
        required=False,
        help_text="S3: requests in flight at once, parts of large files included (default 8).",
    )
    position = serializers.IntegerField(min_value=0, max_value=MAX_POSITION, required=False)
    jump_hostname = serializers.CharField(
        max_length=255,
        required=False,
        allow_blank=True,
        help_text="A jump host (bastion) every connection goes through; blank: connect "
        "directly (and clear the other jump_ fields). See docs/bastion.md.",
    )
    jump_port = serializers.IntegerField(min_value=1, max_value=65535, required=False)
    jump_username = serializers.CharField(max_length=100, required=False, allow_blank=True)
    jump_auth_method = serializers.ChoiceField(
        choices=JumpAuthMethod.choices,
        required=False,
        help_text="project_key (the default) or private_key, which giving jump_private_key "
        "chooses by itself.",
    )
    jump_private_key = serializers.CharField(
        max_length=20_000,
        required=False,
        allow_blank=True,
        write_only=True,
        trim_whitespace=False,
        help_text="The jump host's own login key: an unencrypted ed25519, ECDSA or RSA key "
        "(OpenSSH or PEM). Write-only.",
    )
    jump_host_key_fingerprint = serializers.CharField(
        max_length=1000,
        required=False,
        allow_blank=True,
        help_text="The jump host's host key, as `ssh-keygen -lf` prints it; a jump host whose "
        "key is not pinned is never used.",
    )


class ServerCheckSerializer(serializers.Serializer[Any]):
    ok = serializers.BooleanField()
    address = serializers.CharField()
    host_key_fingerprint = serializers.CharField(allow_null=True)
    host_key_type = serializers.CharField(allow_null=True)
    trusted = serializers.BooleanField(
        help_text="The offered key is the pinned one (FTPS: the certificate is pinned, or "
        "verified by the system's certificate authorities; FTP: always)."
    )
    error = serializers.CharField(help_text="What went wrong, for a person; '' when ok.")
    jump_address = serializers.CharField(help_text="The jump host, host:port; '' without one.")
    jump_host_key_fingerprint = serializers.CharField(
        allow_null=True, help_text="The key the jump host offers; null without one."
    )
    jump_host_key_type = serializers.CharField(allow_null=True)
    jump_trusted = serializers.BooleanField(
        help_text="The jump host's offered key is its pinned one."
    )
    certificate_fingerprint = serializers.CharField(
        allow_null=True,
        help_text="FTPS: the SHA-256 of the certificate offered now (`SHA256:AB:CD:…`), to "
        "trust; null otherwise.",
    )
    certificate_verified = serializers.BooleanField(
        help_text="FTPS: the system's certificate authorities vouch for the certificate."
    )


class TrustSerializer(serializers.Serializer[dict[str, Any]]):
    fingerprint = serializers.CharField(
        max_length=1000,
        help_text="The key the server offers now, as `ssh-keygen -lf` prints it (`SHA256:…`, "
        "or the whole line `256 SHA256:… root@host (ED25519)`); on an FTPS server, the "
        "certificate's SHA-256 as the connection test shows it (`SHA256:AB:CD:…`).",
    )


class LockBreakSerializer(serializers.Serializer[dict[str, Any]]):
    force = serializers.BooleanField(
        required=False,
        default=False,
        help_text="Break the lock even when its deployment is still queued or running, or "
        "left a command that may still be running on the server.",
    )


class LockBreakResultSerializer(serializers.Serializer[Any]):
    broken = serializers.BooleanField(help_text="A lock was there and was removed.")
    owner = serializers.CharField(help_text="The lock's owner id ('deployment-12'); '' if none.")
    holder = serializers.CharField(help_text="Who held it, in words.")
    since = serializers.CharField(help_text="When it was taken (UTC, ISO 8601), as written.")
    age_seconds = serializers.IntegerField(
        allow_null=True, help_text="Its age by the server's clock; null without a lock."
    )
    deployment_id = serializers.IntegerField(
        allow_null=True, help_text="The project's deployment that held it, if any."
    )
    message = serializers.CharField()


class ReleaseSerializer(serializers.ModelSerializer[Release]):
    deployed_at = serializers.DateTimeField(source="created_at", read_only=True)
    deployed_by = serializers.SerializerMethodField()
    url = serializers.SerializerMethodField()
    html_url = serializers.SerializerMethodField()

    class Meta:
        model = Release
        fields = [
            "name",
            "revision",
            "branch",
            "live",
            "deployed_at",
            "deployment",
            "deployed_by",
            "url",
            "html_url",
        ]
        read_only_fields = fields

    def get_deployed_by(self, release: Release) -> str | None:
        deployment = release.deployment
        if deployment is None or deployment.triggered_by is None:
            return None
        return deployment.triggered_by.get_username()

    def get_url(self, release: Release) -> str:
        server = release.server
        return api_url(
            "api-server-release",
            slug=server.project.slug,
            server_id=server.pk,
            name=release.name,
        )

    def get_html_url(self, release: Release) -> str:
        server = release.server
        if release.deployment_id is not None:
            return deployment_page(server.project.slug, release.deployment_id)
        return server_page(server.project.slug, server.pk)


class RollbackSerializer(serializers.Serializer[dict[str, Any]]):
    release = serializers.CharField(
        max_length=100,
        required=False,
        allow_blank=True,
        help_text="A kept release's name; by default the one before the live one.",
    )
    lock_reason = serializers.CharField(
        max_length=MAX_REASON_LENGTH,
        required=False,
        allow_blank=True,
        help_text="Also lock the server with this reason (a stack lock): nothing but "
        "rollbacks deploys to it until someone unlocks it.",
    )


STRATEGY_FIELDS = (
    "strategy",
    "max_parallel",
    "batch_size",
    "canary_count",
    "canary_window_seconds",
    "promotion",
    "pause_seconds",
    "router_kind",
    "router_include_path",
    "router_nginx_command",
    "upstream_port",
)


@extend_schema_field(
    {
        "oneOf": [
            {"type": "integer", "minimum": 1},
            {"type": "string", "pattern": r"^[0-9]{1,9}%?$"},
        ],
        "description": 'Servers per batch (rolling): a number, or a percentage such as "25%". '
        "Answered as a string.",
    }
)
class BatchSizeField(serializers.Field):  # type: ignore[type-arg]
    """A number of servers or a percentage, kept (and answered) as a string: "2", "25%"."""

    default_error_messages = {
        "invalid": "must be a number of servers or a percentage such as 25%.",
    }

    def to_internal_value(self, data: Any) -> str:
        if isinstance(data, bool) or not isinstance(data, int | str):
            self.fail("invalid")
        text = str(data).strip()
        if len(text) > BATCH_SIZE_MAX_LENGTH:
            self.fail("invalid")
        try:
            parse_batch_size(text)
        except InvalidInput as exc:
            raise serializers.ValidationError(field_message(exc)) from None
        return text

    def to_representation(self, value: Any) -> str:
        return str(value)


def field_message(exc: InvalidInput) -> str:
    """An InvalidInput's message without the field's name in front."""
    return str(exc).removeprefix(f"{exc.field}: ")


class GroupSerializer(SettingSerializer):
    view_name = "api-group"
    servers = ProjectServerField(
        many=True,
        required=False,
        help_text="Server ids, in the order a deployment goes through them.",
    )
    batch_size = BatchSizeField(required=False)
    router = ProjectServerField(
        required=False,
        allow_null=True,
        help_text="Blue-green: the server (of this project, over SSH) that switches the traffic.",
    )
    colours = serializers.DictField(
        child=serializers.ChoiceField(choices=Colour.choices, allow_blank=True),
        required=False,
        help_text='Blue-green: each server\'s colour, by server id: {"12": "blue", "13": "green"}. '
        "A server left out keeps its colour.",
    )
    upstreams = serializers.DictField(
        child=serializers.CharField(max_length=300, allow_blank=True),
        required=False,
        help_text="Blue-green: the address (host:port) the router sends a server's traffic to, "
        "by server id; a server without one: its host name on upstream_port.",
    )
    router_upstream_name = serializers.CharField(
        source="upstream_name",
        read_only=True,
        help_text="Blue-green, nginx: the upstream the include file defines; the site's "
        "proxy_pass names it (proxy_pass http://<it>;).",
    )
    live_colour = serializers.ChoiceField(
        choices=Colour.choices,
        allow_blank=True,
        read_only=True,
        help_text="Blue-green: the colour the router sends the traffic to, recorded once the "
        'router took the switch; "" before the first one.',
    )
    switch_back_url = serializers.SerializerMethodField(
        help_text="Blue-green: POST here to send the traffic back to the other colour."
    )

    class Meta:
        model = ServerGroup
        fields = [
            "id",
            "name",
            "servers",
            "branch",
            "environment",
            "auto_deploy",
            *STRATEGY_FIELDS,
            "router",
            "router_switch_command",
            "colours",
            "upstreams",
            "router_upstream_name",
            "live_colour",
            "live_colour_since",
            "switch_back_url",
            "created_at",
            "url",
            "html_url",
        ]
        read_only_fields = ["created_at", "live_colour_since"]
        extra_kwargs = {
            "router_kind": {
                "help_text": "Blue-green: nginx (an upstream include file, tested and "
                "reloaded) or command (router_switch_command)."
            },
            "router_include_path": {
                "help_text": "Blue-green, nginx: the include file Slipway rewrites; empty: "
                "/etc/nginx/conf.d/slipway-group-<id>.conf."
            },
            "router_nginx_command": {
                "help_text": "Blue-green, nginx: how the router's login user runs nginx "
                '("nginx", "sudo -n nginx"); Slipway appends -t, then -s reload.'
            },
            "router_switch_command": {
                "help_text": "Blue-green, command: run on the router; %colour% and %hosts% "
                "(the colour's host:port addresses) are put in as quoted shell words."
            },
            "upstream_port": {
                "min_value": 1,
                "max_value": 65535,
                "help_text": "Blue-green: the port of a server's address in the upstream "
                "when upstreams names none.",
            },
            "max_parallel": {"min_value": 1, "help_text": "Parallel: servers at a time."},
            "canary_count": {"min_value": 1, "help_text": "Canary: servers deployed first."},
            "canary_window_seconds": {
                "help_text": "Canary: how long the after-switch checks watch the canaries."
            },
            "promotion": {"help_text": "Canary: go on to the rest by itself, or on Promote."},
            "pause_seconds": {"help_text": "Rolling: pause between batches."},
        }

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        # The strategy's fields are checked together, with the group's current values for
        # the ones a change leaves out (the canary window and the pauses share a limit).
        current = (
            {name: getattr(self.instance, name) for name in STRATEGY_FIELDS}
            if self.instance is not None
            else {}
        )
        given = {name: attrs[name] for name in STRATEGY_FIELDS if name in attrs}
        try:
            strategy_clean({**current, **given})
        except InvalidInput as exc:
            raise serializers.ValidationError({exc.field: [field_message(exc)]}) from None
        return attrs

    def to_representation(self, instance: ServerGroup) -> dict[str, Any]:
        data = super().to_representation(instance)
        data["servers"] = [server.pk for server in instance.ordered_servers()]
        return data

    def get_switch_back_url(self, instance: ServerGroup) -> str:
        return api_url("api-group-switch-back", slug=instance.project.slug, pk=instance.pk)


class HealthCheckSerializer(SettingSerializer):
    """A health check; its ``url`` is the address it checks, so its own address in the API
    is ``api_url``."""

    view_name = "api-health-check"
    # Here `url` is a field of the object; its address in the API is `api_url`.
    url = serializers.CharField(  # type: ignore[assignment]
        max_length=500,
        required=False,
        allow_blank=True,
        help_text="HTTP checks: the address to request, with %variables% "
        "(http://%hostname%/health).",
    )
    servers = ProjectServerField(
        many=True,
        required=False,
        help_text="Server ids; empty means every server of the project.",
    )
    api_url = serializers.SerializerMethodField(help_text="This health check in the API.")

    def to_representation(self, instance: Any) -> dict[str, Any]:
        answer = super().to_representation(instance)
        # A password in the URL is write-only, as every other secret: shown as ***.
        answer["url"] = instance.shown_url
        return dict(answer)

    class Meta:
        model = HealthCheck
        fields = [
            "id",
            "kind",
            "when",
            "url",
            "expected_status",
            "body_contains",
            "command",
            "timeout_seconds",
            "retries",
            "interval_seconds",
            "servers",
            "created_at",
            "api_url",
            "html_url",
        ]
        read_only_fields = ["created_at"]

    def get_api_url(self, check: HealthCheck) -> str:
        return super().get_url(check)


class DriftFileSerializer(serializers.Serializer[Any]):
    path = serializers.CharField(
        help_text="Relative to the release; a byte that is not UTF-8 shown as \\xNN, a "
        "control character as its escape."
    )
    change = serializers.ChoiceField(choices=["added", "changed", "removed"])
    size = serializers.IntegerField(
        help_text="Bytes, as found on the server (removed: as deployed)."
    )
    mtime = serializers.DateTimeField(
        allow_null=True, help_text="Modification time on the server; null when removed."
    )


class DriftCheckSerializer(serializers.ModelSerializer[DriftCheck]):
    release = serializers.CharField(source="release_name", read_only=True)
    requested_by = serializers.SerializerMethodField()
    files = DriftFileSerializer(many=True, read_only=True)
    files_total = serializers.IntegerField(
        read_only=True,
        help_text="Drifted paths in all; `files` holds the first 500 of them.",
    )

    class Meta:
        model = DriftCheck
        fields = [
            "id",
            "status",
            "trigger",
            "release",
            "requested_by",
            "created_at",
            "started_at",
            "finished_at",
            "checked_count",
            "added_count",
            "changed_count",
            "removed_count",
            "files_total",
            "files",
            "notified",
            "error",
            "error_code",
        ]
        read_only_fields = fields

    def get_requested_by(self, check: DriftCheck) -> str | None:
        return check.requested_by.get_username() if check.requested_by else None


class DriftStateSerializer(serializers.Serializer[Any]):
    supported = serializers.BooleanField(
        help_text="Whether this server can be checked (SSH servers deploying releases, S3)."
    )
    reason = serializers.CharField(help_text="Why not, when it cannot; '' otherwise.")
    on_drift = serializers.CharField(help_text="The project's setting: restore or refuse.")
    last_check = DriftCheckSerializer(allow_null=True, help_text="The newest check, or null.")
