"""The dashboard's forms for servers. The rules are servers.services' (shared with the API)."""

from __future__ import annotations

from typing import Any

from django import forms

from builds.engine.ftp import MAX_CONNECTIONS as MAX_FTP_CONNECTIONS
from builds.engine.s3 import MAX_PARALLEL_UPLOADS, masked_key_id
from projects.forms import MONOSPACE, SettingForm, servers_field, shown_for
from servers.models import (
    FTP_PROTOCOLS,
    AuthMethod,
    HealthCheck,
    HealthCheckKind,
    HealthCheckWhen,
    JumpAuthMethod,
    Protocol,
    ReleaseCopy,
    Server,
)
from servers.services import MAX_KEEP_RELEASES, MIN_KEEP_RELEASES

#: The protocols that reach a host and log in to it (every one but S3).
HOST_PROTOCOLS = (Protocol.SSH, Protocol.SFTP, Protocol.FTP, Protocol.FTPS)
#: What only an S3 bucket has: passed to the services for S3 servers only.
S3_FORM_FIELDS = (
    "s3_endpoint_url",
    "s3_region",
    "s3_bucket",
    "s3_prefix",
    "s3_path_style",
    "s3_access_key_id",
    "s3_secret_access_key",
    "s3_object_rules",
    "s3_parallel_uploads",
)


class ServerForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="Unique in the project; %server% in commands.")
    # Not needed for an S3 bucket (its endpoint says where): the services ask for them on
    # every other kind of server.
    hostname = forms.CharField(
        max_length=255,
        required=False,
        widget=forms.TextInput(attrs=shown_for("protocol", *HOST_PROTOCOLS, **MONOSPACE)),
    )
    port = forms.IntegerField(
        min_value=1,
        max_value=65535,
        initial=22,
        required=False,
        widget=forms.NumberInput(attrs=shown_for("protocol", *HOST_PROTOCOLS)),
    )
    username = forms.CharField(
        max_length=100,
        required=False,
        widget=forms.TextInput(attrs=shown_for("protocol", *HOST_PROTOCOLS, **MONOSPACE)),
    )
    deploy_path = forms.CharField(
        max_length=500,
        required=False,
        widget=forms.TextInput(attrs=shown_for("protocol", *HOST_PROTOCOLS, **MONOSPACE)),
        help_text="An absolute path; releases/, shared/ and current live in it.",
    )
    auth_method = forms.ChoiceField(
        label="Log in with",
        choices=AuthMethod.choices,
        initial=AuthMethod.PROJECT_KEY,
        widget=forms.RadioSelect(attrs=shown_for("protocol", *HOST_PROTOCOLS)),
    )
    password = forms.CharField(
        max_length=1000,
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="Write-only.",
    )
    private_key = forms.CharField(
        max_length=20_000,
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 4, **MONOSPACE}),
        help_text="An unencrypted ed25519, ECDSA or RSA key. Write-only.",
    )
    protocol = forms.ChoiceField(
        choices=Protocol.choices,
        initial=Protocol.SSH,
        help_text="FTP sends the password and every file in clear text: prefer FTPS, SFTP or "
        "SSH. FTP and FTPS servers log in with a password, take files in place (atomic off) "
        "and run no commands. S3: the files become objects of a bucket (docs/s3.md).",
    )
    atomic = forms.BooleanField(
        label="Atomic releases (releases/ and a current symlink)",
        required=False,
        initial=True,
        widget=forms.CheckboxInput(attrs=shown_for("protocol", Protocol.SSH)),
    )
    keep_releases = forms.IntegerField(
        min_value=MIN_KEEP_RELEASES,
        max_value=MAX_KEEP_RELEASES,
        initial=3,
        help_text="Releases left on the server after each deployment, the live one included "
        "(at least 2: the live one and the one a rollback returns to).",
    )
    release_copy = forms.ChoiceField(
        label="New releases start as",
        choices=ReleaseCopy.choices,
        initial=ReleaseCopy.AUTO,
        required=False,
        widget=forms.Select(attrs=shown_for("protocol", Protocol.SSH)),
        help_text="Hard links cost a directory entry per file instead of its bytes; a file "
        "written in place afterwards (by a command or the application) then changes in the "
        "older releases too. Auto: hard links unless the deployment runs commands here.",
    )
    branch = forms.CharField(
        max_length=255,
        required=False,
        widget=forms.TextInput(attrs=MONOSPACE),
        help_text="Blank: the project's branch.",
    )
    environment = forms.CharField(
        max_length=50, required=False, help_text="A label such as production or staging."
    )
    auto_deploy = forms.BooleanField(
        label="Deploy automatically on push", required=False, initial=True
    )
    enabled = forms.BooleanField(required=False, initial=True)
    file_mode = forms.CharField(
        max_length=4,
        required=False,
        widget=forms.TextInput(attrs=MONOSPACE),
        help_text="Octal, e.g. 644; blank: as in Git.",
    )
    directory_mode = forms.CharField(
        max_length=4,
        required=False,
        widget=forms.TextInput(attrs=MONOSPACE),
        help_text="Octal, e.g. 755; blank: as created.",
    )
    host_key_fingerprint = forms.CharField(
        label="Host key fingerprint",
        max_length=1000,
        required=False,
        widget=forms.TextInput(
            attrs=shown_for(
                "protocol", Protocol.SSH, Protocol.SFTP, placeholder="SHA256:…", **MONOSPACE
            )
        ),
        help_text="Optional: paste what ssh-keygen -lf prints on the server, or use "
        "“Test connection” after saving.",
    )
    jump_hostname = forms.CharField(
        label="Jump host",
        max_length=255,
        required=False,
        widget=forms.TextInput(attrs={**MONOSPACE, "placeholder": "bastion.example.com"}),
        help_text="Blank: connect directly. Otherwise every connection goes through this "
        "host's sshd, which reaches the server's hostname on its network.",
    )
    jump_port = forms.IntegerField(
        label="Jump host port", min_value=1, max_value=65535, initial=22, required=False
    )
    jump_username = forms.CharField(
        label="Jump host user",
        max_length=100,
        required=False,
        widget=forms.TextInput(attrs=MONOSPACE),
    )
    jump_auth_method = forms.ChoiceField(
        label="Jump host login",
        choices=JumpAuthMethod.choices,
        initial=JumpAuthMethod.PROJECT_KEY,
        required=False,
        widget=forms.RadioSelect,
    )
    jump_private_key = forms.CharField(
        label="Jump host private key",
        max_length=20_000,
        required=False,
        strip=False,
        widget=forms.Textarea(attrs={"rows": 4, **MONOSPACE}),
        help_text="An unencrypted ed25519, ECDSA or RSA key. Write-only.",
    )
    jump_host_key_fingerprint = forms.CharField(
        label="Jump host key fingerprint",
        max_length=1000,
        required=False,
        widget=forms.TextInput(attrs={**MONOSPACE, "placeholder": "SHA256:…"}),
        help_text="Optional: what ssh-keygen -lf prints on the jump host, or use "
        "“Test connection” after saving. A jump host whose key is not trusted is never used.",
    )

    certificate_fingerprint = forms.CharField(
        label="Certificate fingerprint (FTPS)",
        max_length=200,
        required=False,
        widget=forms.TextInput(
            attrs=shown_for("protocol", Protocol.FTPS, placeholder="SHA256:AB:CD:…", **MONOSPACE)
        ),
        help_text="Optional: what openssl x509 -noout -fingerprint -sha256 prints for the "
        "server's certificate, or use “Test connection” after saving. Blank: the certificate "
        "must be signed by an authority this machine trusts.",
    )
    ftp_connections = forms.IntegerField(
        label="Parallel connections (FTP)",
        min_value=1,
        max_value=MAX_FTP_CONNECTIONS,
        initial=4,
        required=False,
        widget=forms.NumberInput(attrs=shown_for("protocol", Protocol.FTP, Protocol.FTPS)),
        help_text="FTP and FTPS: files in flight at once, each on a connection of its own.",
    )

    s3_endpoint_url = forms.CharField(
        label="Endpoint URL",
        max_length=500,
        required=False,
        widget=forms.TextInput(
            attrs=shown_for(
                "protocol", Protocol.S3, placeholder="https://minio.example.com:9000", **MONOSPACE
            )
        ),
        help_text="Any S3-compatible service (MinIO, Cloudflare R2, Backblaze B2, Wasabi, "
        "DigitalOcean Spaces…). Blank: AWS S3 in the region below.",
    )
    s3_region = forms.CharField(
        label="Region",
        max_length=50,
        required=False,
        initial="us-east-1",
        widget=forms.TextInput(attrs=shown_for("protocol", Protocol.S3, **MONOSPACE)),
    )
    s3_bucket = forms.CharField(
        label="Bucket",
        max_length=63,
        required=False,
        widget=forms.TextInput(attrs=shown_for("protocol", Protocol.S3, **MONOSPACE)),
    )
    s3_prefix = forms.CharField(
        label="Key prefix",
        max_length=500,
        required=False,
        widget=forms.TextInput(
            attrs=shown_for("protocol", Protocol.S3, placeholder="site/", **MONOSPACE)
        ),
        help_text="The folder of the bucket the files go into; blank: its root.",
    )
    s3_path_style = forms.BooleanField(
        label="Path-style addressing (https://host/bucket/key)",
        required=False,
        widget=forms.CheckboxInput(attrs=shown_for("protocol", Protocol.S3)),
        help_text="MinIO and most self-hosted services need it; AWS does not.",
    )
    s3_access_key_id = forms.CharField(
        label="Access key id",
        max_length=200,
        required=False,
        widget=forms.PasswordInput(
            render_value=False,
            attrs=shown_for("protocol", Protocol.S3, autocomplete="off", **MONOSPACE),
        ),
        help_text="Write-only, stored encrypted.",
    )
    s3_secret_access_key = forms.CharField(
        label="Secret access key",
        max_length=500,
        required=False,
        strip=False,
        widget=forms.PasswordInput(
            render_value=False,
            attrs=shown_for("protocol", Protocol.S3, autocomplete="new-password"),
        ),
        help_text="Write-only, stored encrypted.",
    )
    s3_object_rules = forms.CharField(
        label="Object rules",
        required=False,
        widget=forms.Textarea(
            attrs=shown_for(
                "protocol",
                Protocol.S3,
                rows=3,
                placeholder='*.css cache_control="public, max-age=31536000"\n'
                "*.html cache_control=no-cache acl=public-read",
                **MONOSPACE,
            )
        ),
        help_text="One a line: a pattern, then acl=, storage_class= or cache_control= "
        "(docs/s3.md).",
    )
    s3_parallel_uploads = forms.IntegerField(
        label="Parallel uploads",
        min_value=1,
        max_value=MAX_PARALLEL_UPLOADS,
        initial=8,
        required=False,
        widget=forms.NumberInput(attrs=shown_for("protocol", Protocol.S3)),
        help_text="Requests in flight at once, parts of large files included.",
    )

    def __init__(self, *args: Any, server: Server | None = None, **kwargs: Any) -> None:
        self.server = server
        if server is not None and "initial" not in kwargs:
            kwargs["initial"] = {
                name: getattr(server, name)
                for name in self.base_fields
                if name
                not in (
                    "password",
                    "private_key",
                    "jump_private_key",
                    "s3_access_key_id",
                    "s3_secret_access_key",
                )
            }
        super().__init__(*args, **kwargs)
        if server is not None:
            # The pinned keys change through "Test connection" and "Trust this key" only.
            del self.fields["host_key_fingerprint"]
            del self.fields["jump_host_key_fingerprint"]
            if server.jump_private_key:
                self.fields["jump_private_key"].help_text = "Stored and hidden. Blank keeps it."
            del self.fields["certificate_fingerprint"]
            if server.password:
                self.fields["password"].help_text = "Stored and hidden. Blank keeps it."
            if server.private_key:
                self.fields["private_key"].help_text = "Stored and hidden. Blank keeps it."
            if server.s3_access_key_id:
                self.fields[
                    "s3_access_key_id"
                ].help_text = f"Stored: {masked_key_id(server.s3_access_key_id)}. Blank keeps it."
            if server.s3_secret_access_key:
                self.fields["s3_secret_access_key"].help_text = "Stored and hidden. Blank keeps it."

    def service_data(self) -> dict[str, Any]:
        data = dict(self.cleaned_data)
        if data.get("protocol") == Protocol.S3:
            # The endpoint and bucket say where; nothing logs in with a password or key.
            for unused in ("hostname", "port", "username", "deploy_path", "password"):
                data.pop(unused, None)
            data.pop("private_key", None)
            data["auth_method"] = AuthMethod.PROJECT_KEY
            data["atomic"] = False
            for secret in ("s3_access_key_id", "s3_secret_access_key"):
                if not data.get(secret):
                    data.pop(secret, None)
            if data.get("s3_parallel_uploads") is None:
                data.pop("s3_parallel_uploads", None)
        else:
            for unused in S3_FORM_FIELDS:
                data.pop(unused, None)
            if data.get("port") is None:
                data.pop("port", None)
        # Only the secret of the chosen method is passed, and only when typed: on a new
        # server the service then asks for it, on an existing one the stored one stays.
        method = data["auth_method"]
        for secret, needed_by in (
            ("password", AuthMethod.PASSWORD),
            ("private_key", AuthMethod.PRIVATE_KEY),
        ):
            if method != needed_by or not data.get(secret):
                data.pop(secret, None)
        if not data.get("host_key_fingerprint"):
            data.pop("host_key_fingerprint", None)
        # Not shown for FTP: the server keeps what it has (auto on a new one).
        if not data.get("release_copy"):
            data.pop("release_copy", None)
        data["jump_port"] = data.get("jump_port") or 22
        data["jump_auth_method"] = data.get("jump_auth_method") or JumpAuthMethod.PROJECT_KEY
        if data["jump_auth_method"] != JumpAuthMethod.PRIVATE_KEY or not data.get(
            "jump_private_key"
        ):
            data.pop("jump_private_key", None)
        if not data.get("jump_host_key_fingerprint"):
            data.pop("jump_host_key_fingerprint", None)
        if data.get("ftp_connections") is None:
            data.pop("ftp_connections", None)
        for pinned in ("host_key_fingerprint", "certificate_fingerprint"):
            if not data.get(pinned):
                data.pop(pinned, None)
        if data.get("protocol") in FTP_PROTOCOLS:
            # The checkbox means nothing on FTP (files go in place): the service refuses it
            # only when asked for through the API.
            data["atomic"] = False
        return data


class TrustForm(forms.Form):
    fingerprint = forms.CharField(max_length=1000)


class RollbackForm(forms.Form):
    release = forms.CharField(max_length=100)


class HealthCheckForm(SettingForm):
    """A project's health check; servers.health.health_check_clean (through the services)
    has the rules, the time limit among them."""

    model = HealthCheck

    def initial_for(self, instance: Any) -> dict[str, Any]:
        # The stored password never goes into the page; sent back masked, it is kept.
        return {**super().initial_for(instance), "url": instance.shown_url}

    kind = forms.ChoiceField(choices=HealthCheckKind.choices, initial=HealthCheckKind.HTTP)
    when = forms.ChoiceField(
        choices=HealthCheckWhen.choices,
        initial=HealthCheckWhen.AFTER_SWITCH,
        help_text="Failing after the switch rolls the server back by itself; failing before "
        "it, the server is not switched. HTTP checks run after the switch.",
    )
    url = forms.CharField(
        label="URL",
        max_length=500,
        required=False,
        widget=forms.TextInput(
            attrs=shown_for(
                "kind",
                HealthCheckKind.HTTP,
                placeholder="http://%hostname%/health",
                **MONOSPACE,
            )
        ),
        help_text="Requested from the worker; %variables% such as %hostname% are replaced.",
    )
    expected_status = forms.IntegerField(
        label="Expected status",
        initial=200,
        widget=forms.NumberInput(attrs=shown_for("kind", HealthCheckKind.HTTP)),
    )
    body_contains = forms.CharField(
        label="Body contains",
        max_length=255,
        required=False,
        widget=forms.TextInput(attrs=shown_for("kind", HealthCheckKind.HTTP)),
    )
    command = forms.CharField(
        required=False,
        strip=False,
        widget=forms.Textarea(
            attrs=shown_for("kind", HealthCheckKind.COMMAND, rows=3, **MONOSPACE)
        ),
        help_text="Run over SSH in the release directory; exit code 0 is healthy.",
    )
    timeout_seconds = forms.IntegerField(label="Timeout (seconds)", initial=5)
    retries = forms.IntegerField(label="Attempts", initial=3)
    interval_seconds = forms.IntegerField(label="Between attempts (seconds)", initial=5)
    servers = servers_field()
