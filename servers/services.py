"""Server services: add, change, test and trust servers. The API and the dashboard's forms
both call these; every error raised names the field it is about (InvalidInput)."""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import logging
import posixpath
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import paramiko
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import transaction

from builds import outbound
from builds.engine import direct, ftp, s3, ssh
from builds.engine.addresses import AddressRefused
from builds.engine.errors import (
    CommandFailed,
    EngineError,
    HostKeyMismatch,
    InvalidInput,
    UnsafeDeployPath,
    UserError,
)
from builds.engine.git import validate_ref
from builds.engine.release import LOCK_DIR, LockInfo, RemoteLayout, validate_deploy_path
from builds.engine.specs import parse_lock_owner
from builds.models import FINAL, TARGET_ACTIVE, Deployment
from builds.runner import endpoint_for, ftp_endpoint_for, jump_endpoint_for, s3_endpoint_for
from projects.models import Project
from projects.services import (
    _project_servers,
    audit_record,
    model_update,
    repository_branch_check,
    save_unique,
)
from servers.health import HEALTH_CHECK_SETTINGS, health_check_clean
from servers.models import (
    FTP_PROTOCOLS,
    AuthMethod,
    HealthCheck,
    JumpAuthMethod,
    Protocol,
    ReleaseCopy,
    Server,
)

logger = logging.getLogger(__name__)

FINGERPRINT = ssh.FINGERPRINT
#: A jump host's settings (docs/bastion.md); an empty jump_hostname clears them all.
JUMP_FIELDS = (
    "jump_hostname",
    "jump_port",
    "jump_username",
    "jump_auth_method",
    "jump_private_key",
    "jump_host_key_fingerprint",
)
#: An S3 bucket's settings (docs/s3.md); the keys are write-only.
S3_FIELDS = (
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
S3_SECRETS = ("s3_access_key_id", "s3_secret_access_key")
_MODE = re.compile(r"[0-7]{3,4}")
# Host and user names end up in error messages and in ssh's view of the world: no blanks,
# no control characters, and nothing that could pass for an option.
_NAME_CHARACTERS = re.compile(r"[^\s\x00-\x1f\x7f-]\S*")
# keep_releases counts every release left on the server, the live one included; the live
# release and the one a rollback returns to are never removed, hence at least 2.
MIN_KEEP_RELEASES = 2
MAX_KEEP_RELEASES = 100
CHECK_COMMAND_TIMEOUT_SECONDS = 30.0

SERVER_FIELDS = frozenset(
    {
        "name",
        "protocol",
        "hostname",
        "port",
        "username",
        "auth_method",
        "password",
        "private_key",
        "deploy_path",
        "atomic",
        "keep_releases",
        "release_copy",
        "branch",
        "environment",
        "auto_deploy",
        "enabled",
        "host_key_fingerprint",
        "file_mode",
        "directory_mode",
        "certificate_fingerprint",
        "ftp_connections",
        "position",
        *JUMP_FIELDS,
        *S3_FIELDS,
    }
)
# Moving a server elsewhere makes its pinned host key (or certificate) meaningless.
_ADDRESS_FIELDS = ("hostname", "port")
_JUMP_ADDRESS_FIELDS = ("jump_hostname", "jump_port")


_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
_MAX_NAME_LENGTH = 253


def _check_host_name(field: str, hostname: str) -> None:
    """An IPv4 or IPv6 address (without brackets or a zone id), or a DNS name that can be
    looked up: at most 253 characters, dot-separated labels of 1 to 63 letters, digits,
    hyphens (not first or last) and underscores, non-ASCII labels IDNA-encoded and "xn--"
    labels valid Punycode (RFC 1035 section 2.3.4, RFC 1123 section 2.1, RFC 3490).
    InvalidInput naming ``field`` otherwise."""

    def refuse(why: str) -> InvalidInput:
        return InvalidInput(field, f"{hostname!r} is not a valid host name: {why}.")

    if hostname.startswith("[") or hostname.endswith("]"):
        raise refuse("write an IPv6 address without brackets, e.g. 2001:db8::1")
    if ":" in hostname:
        try:
            address = ipaddress.IPv6Address(hostname)
        except ValueError:
            raise refuse("it is neither an IPv6 address nor a DNS name") from None
        if address.scope_id:
            raise refuse("zone ids (%...) are not supported; use a routable address")
        return
    name = hostname[:-1] if hostname.endswith(".") else hostname
    try:
        ascii_name = name.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise refuse(f"{exc}; labels hold 1 to 63 characters") from None
    if len(ascii_name) > _MAX_NAME_LENGTH:
        raise refuse(f"longer than {_MAX_NAME_LENGTH} characters")
    for label in ascii_name.split("."):
        if not _LABEL.fullmatch(label):
            raise refuse(
                f"the label {label!r} may hold only letters, digits, '-' and '_' (1 to 63, "
                "not starting or ending with '-')"
            )
        if label.lower().startswith("xn--") and not _valid_punycode(label):
            raise refuse(f"the label {label!r} is not valid Punycode")


def _valid_punycode(label: str) -> bool:
    try:
        decoded = label.encode("ascii").decode("idna")
        return decoded != label and decoded.encode("idna").decode("ascii").lower() == (
            label.lower()
        )
    except UnicodeError:
        return False


def _check_host_policy(hostname: str, port: int) -> None:
    """The SERVERS outbound-address policy at save time; a name that does not resolve here
    is accepted (the workers may resolve it) and checked again before every connection."""
    try:
        outbound.server_host_check(hostname, port)
    except AddressRefused as exc:
        raise InvalidInput("hostname", f"{exc}.") from None


def server_clean(data: dict[str, Any], *, server: Server | None = None) -> dict[str, Any]:
    """Check a server's fields and work out how it logs in; InvalidInput names the bad field.

    ``password`` or ``private_key`` choose that way of logging in (and drop the other secret);
    ``auth_method="project_key"`` goes back to the project's key. Secrets left out of an
    update stay as they are.
    """
    unknown = set(data) - SERVER_FIELDS
    if unknown:
        raise InvalidInput(sorted(unknown)[0], "cannot be set on a server.")
    cleaned = dict(data)
    if "name" in cleaned:
        cleaned["name"] = str(cleaned["name"]).strip()
        if not cleaned["name"]:
            raise InvalidInput("name", "is empty.")
    for field in ("hostname", "username"):
        if field in cleaned:
            cleaned[field] = str(cleaned[field]).strip()
            if not _NAME_CHARACTERS.fullmatch(cleaned[field]):
                raise InvalidInput(
                    field,
                    "must not be empty, hold blanks or control characters, or start with '-'.",
                )
    if "hostname" in cleaned:
        _check_host_name("hostname", cleaned["hostname"])
    if "port" in cleaned and not 1 <= int(cleaned["port"]) <= 65535:
        raise InvalidInput("port", f"{cleaned['port']} is not between 1 and 65535.")
    if "protocol" in cleaned and cleaned["protocol"] not in Protocol.values:
        raise InvalidInput("protocol", f"must be one of {', '.join(Protocol.values)}.")
    protocol = cleaned.get("protocol", server.protocol if server is not None else Protocol.SSH)
    _clean_jump_host(cleaned, server)
    jumped = bool(cleaned.get("jump_hostname", server.jump_hostname if server else ""))
    if jumped and (protocol in FTP_PROTOCOLS or protocol == Protocol.S3):
        kind = "an S3 bucket" if protocol == Protocol.S3 else "an FTP server"
        raise InvalidInput(
            "jump_hostname",
            f"must be empty on {kind}: only SSH and SFTP servers are reached through a "
            "jump host (docs/bastion.md).",
        )
    if protocol == Protocol.S3:
        _clean_s3(cleaned, server)
    unjumped = server is not None and bool(server.jump_hostname) and not jumped
    if ("hostname" in cleaned or unjumped) and not jumped and protocol != Protocol.S3:
        # Behind a jump host the server's address is resolved and reached by the jump host,
        # not by Slipway: the jump host's address is the one the policy checks. Without one
        # (or no longer), the server's own address is.
        default_port = 21 if protocol in FTP_PROTOCOLS else 22
        _check_host_policy(
            cleaned.get("hostname", server.hostname if server else ""),
            int(cleaned.get("port") or (server.port if server else default_port)),
        )
    if "deploy_path" in cleaned:
        cleaned["deploy_path"] = validate_deploy_path(str(cleaned["deploy_path"]))
    if "keep_releases" in cleaned and not (
        MIN_KEEP_RELEASES <= int(cleaned["keep_releases"]) <= MAX_KEEP_RELEASES
    ):
        raise InvalidInput(
            "keep_releases",
            f"must be between {MIN_KEEP_RELEASES} and {MAX_KEEP_RELEASES}: it counts every "
            "release on disk, the live one and the one a rollback returns to included.",
        )
    if "release_copy" in cleaned and cleaned["release_copy"] not in ReleaseCopy.values:
        raise InvalidInput(
            "release_copy",
            f"{cleaned['release_copy']!r} is not one of {', '.join(ReleaseCopy.values)}.",
        )
    if cleaned.get("branch"):
        cleaned["branch"] = validate_ref(str(cleaned["branch"]).strip(), field="branch")
    if cleaned.get("host_key_fingerprint"):
        cleaned["host_key_fingerprint"] = ssh.fingerprint_from(
            str(cleaned["host_key_fingerprint"]), field="host_key_fingerprint"
        )
    for field in ("file_mode", "directory_mode"):
        if cleaned.get(field) and not _MODE.fullmatch(str(cleaned[field])):
            raise InvalidInput(
                field, f"{cleaned[field]!r} is not an octal mode such as 644 or 755."
            )
    if cleaned.get("certificate_fingerprint"):
        cleaned["certificate_fingerprint"] = ftp.normalize_fingerprint(
            str(cleaned["certificate_fingerprint"])
        )
    if "ftp_connections" in cleaned and not (
        isinstance(cleaned["ftp_connections"], int)
        and 1 <= cleaned["ftp_connections"] <= ftp.MAX_CONNECTIONS
    ):
        raise InvalidInput(
            "ftp_connections", f"must be a whole number from 1 to {ftp.MAX_CONNECTIONS}."
        )
    if protocol in FTP_PROTOCOLS:
        _clean_ftp(cleaned, server)
    _clean_credentials(cleaned, server)
    return cleaned


def _clean_jump_host(cleaned: dict[str, Any], server: Server | None) -> None:
    """The jump host's fields, checked as the server's own are. An empty ``jump_hostname``
    means no jump host and clears the others; a key of its own is checked and kept unless
    replaced; ``jump_auth_method="project_key"`` drops it."""
    if not any(field in cleaned for field in JUMP_FIELDS):
        return
    current: dict[str, Any] = (
        {field: getattr(server, field) for field in JUMP_FIELDS}
        if server is not None
        else {**dict.fromkeys(JUMP_FIELDS, ""), "jump_port": 22}
    )
    current["jump_auth_method"] = current["jump_auth_method"] or JumpAuthMethod.PROJECT_KEY
    hostname = str(cleaned.get("jump_hostname", current["jump_hostname"]) or "").strip()
    if not hostname:
        cleaned.update(
            jump_hostname="",
            jump_port=22,
            jump_username="",
            jump_auth_method=JumpAuthMethod.PROJECT_KEY,
            jump_private_key="",
            jump_host_key_fingerprint="",
        )
        return
    if not _NAME_CHARACTERS.fullmatch(hostname):
        raise InvalidInput(
            "jump_hostname",
            "must not hold blanks or control characters, or start with '-'.",
        )
    _check_host_name("jump_hostname", hostname)
    port = int(cleaned.get("jump_port", current["jump_port"]) or 22)
    if not 1 <= port <= 65535:
        raise InvalidInput("jump_port", f"{port} is not between 1 and 65535.")
    username = str(cleaned.get("jump_username", current["jump_username"]) or "").strip()
    if not _NAME_CHARACTERS.fullmatch(username):
        raise InvalidInput(
            "jump_username",
            "is needed with a jump host, with no blanks or control characters, and must not "
            "start with '-'.",
        )
    try:
        outbound.server_host_check(hostname, port)
    except AddressRefused as exc:
        raise InvalidInput("jump_hostname", f"{exc}.") from None
    cleaned.update(jump_hostname=hostname, jump_port=port, jump_username=username)

    private_key = cleaned.pop("jump_private_key", "") or ""
    method = cleaned.pop("jump_auth_method", None) or (
        JumpAuthMethod.PRIVATE_KEY if private_key else current["jump_auth_method"]
    )
    if method not in JumpAuthMethod.values:
        raise InvalidInput(
            "jump_auth_method", f"must be one of {', '.join(JumpAuthMethod.values)}."
        )
    if method == JumpAuthMethod.PROJECT_KEY:
        if private_key:
            raise InvalidInput(
                "jump_auth_method", "is project_key, which uses no jump_private_key."
            )
    elif private_key:
        try:
            ssh.load_private_key(private_key)
        except InvalidInput as exc:
            raise InvalidInput("jump_private_key", str(exc).partition(": ")[2]) from None
    elif not current["jump_private_key"]:
        raise InvalidInput("jump_private_key", "is needed when jump_auth_method is private_key.")
    else:
        private_key = current["jump_private_key"]
    cleaned.update(jump_auth_method=method, jump_private_key=private_key)

    if cleaned.get("jump_host_key_fingerprint"):
        cleaned["jump_host_key_fingerprint"] = ssh.fingerprint_from(
            str(cleaned["jump_host_key_fingerprint"]), field="jump_host_key_fingerprint"
        )
    elif "jump_host_key_fingerprint" not in cleaned and server is not None:
        # Another jump host makes its pinned key meaningless.
        moved = (hostname, port) != (server.jump_hostname, server.jump_port)
        cleaned["jump_host_key_fingerprint"] = "" if moved else server.jump_host_key_fingerprint


def _clean_ftp(cleaned: dict[str, Any], server: Server | None) -> None:
    """What an FTP server can be: no atomic releases (no symlinks), a password to log in."""
    if cleaned.get("atomic"):
        raise InvalidInput(
            "atomic",
            "must be off on an FTP server: FTP cannot make the symlink an atomic switch "
            "needs, so files are uploaded in place (docs/ftp.md).",
        )
    cleaned["atomic"] = False
    if server is None and "port" not in cleaned:
        cleaned["port"] = 21
    method = cleaned.get("auth_method")
    if method is None and not cleaned.get("password"):
        method = server.auth_method if server is not None else AuthMethod.PROJECT_KEY
    if (method not in (None, AuthMethod.PASSWORD)) or cleaned.get("private_key"):
        raise InvalidInput("password", "is how an FTP server logs in: give the FTP password.")


def _clean_s3(cleaned: dict[str, Any], server: Server | None) -> None:
    """What an S3 bucket is: its endpoint (checked by the SERVERS address policy), region,
    bucket, prefix, rules and keys; no atomic releases, no password or SSH key. The host,
    port, user name and deploy path follow from them (``s3.example.com``, 443, the bucket,
    ``/<bucket>/<prefix>``: what %hostname% and %deploy_path% say). Keys left out or blank
    in an update stay as they are."""

    def current(field: str, default: Any = "") -> Any:
        if field in cleaned:
            return cleaned[field]
        return getattr(server, field) if server is not None else default

    for field in ("password", "private_key"):
        if cleaned.get(field):
            raise InvalidInput(
                field,
                "is not used by an S3 bucket: give s3_access_key_id and s3_secret_access_key.",
            )
    if cleaned.get("atomic"):
        raise InvalidInput(
            "atomic",
            "must be off on an S3 bucket: a bucket has no symlink to switch, so objects are "
            "uploaded in place, deletions last (docs/s3.md).",
        )
    cleaned["atomic"] = False
    url = s3.validate_endpoint_url(str(current("s3_endpoint_url") or ""))
    region = s3.validate_region(str(current("s3_region") or "us-east-1"))
    bucket = s3.validate_bucket(str(current("s3_bucket") or ""))
    prefix = s3.validate_prefix(str(current("s3_prefix") or ""))
    s3.parse_object_rules(str(current("s3_object_rules") or ""))
    parallel = current("s3_parallel_uploads", 8)
    if not (isinstance(parallel, int) and 1 <= parallel <= s3.MAX_PARALLEL_UPLOADS):
        raise InvalidInput(
            "s3_parallel_uploads", f"must be a whole number from 1 to {s3.MAX_PARALLEL_UPLOADS}."
        )
    for field in S3_SECRETS:
        value = cleaned.pop(field, None)
        if field == "s3_access_key_id" and value:
            value = str(value).strip()
            if not _NAME_CHARACTERS.fullmatch(value):
                raise InvalidInput(field, "must not hold blanks or control characters.")
        if value:
            cleaned[field] = value
        elif server is None or not getattr(server, field):
            raise InvalidInput(field, "is needed to sign the requests to the bucket.")
    effective = url or f"https://s3.{region}.amazonaws.com"
    parts = urlsplit(effective)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        outbound.server_host_check(host, port)
    except AddressRefused as exc:
        raise InvalidInput("s3_endpoint_url", f"{exc}.") from None
    cleaned.update(
        s3_endpoint_url=url,
        s3_region=region,
        s3_bucket=bucket,
        s3_prefix=prefix,
        hostname=host,
        port=port,
        username=bucket,
        deploy_path=validate_deploy_path("/" + bucket + ("/" + prefix if prefix else "")),
    )


def _clean_credentials(cleaned: dict[str, Any], server: Server | None) -> None:
    password = cleaned.pop("password", "") or ""
    private_key = cleaned.pop("private_key", "") or ""
    method = cleaned.pop("auth_method", None)
    if password and private_key:
        raise InvalidInput("password", "give either a password or a private_key, not both.")
    if method is None:
        if private_key:
            method = AuthMethod.PRIVATE_KEY
        elif password:
            method = AuthMethod.PASSWORD
        elif server is not None:
            return
        else:
            method = AuthMethod.PROJECT_KEY
    if method not in AuthMethod.values:
        raise InvalidInput("auth_method", f"must be one of {', '.join(AuthMethod.values)}.")
    if method == AuthMethod.PROJECT_KEY and (password or private_key):
        raise InvalidInput(
            "auth_method", "is project_key, which uses neither a password nor a private_key."
        )
    if method == AuthMethod.PRIVATE_KEY:
        if password:
            raise InvalidInput("password", "is not used when auth_method is private_key.")
        if private_key:
            ssh.load_private_key(private_key)
        elif server is None or not server.private_key:
            raise InvalidInput("private_key", "is needed when auth_method is private_key.")
        else:
            private_key = server.private_key
    if method == AuthMethod.PASSWORD:
        if private_key:
            raise InvalidInput("private_key", "is not used when auth_method is password.")
        if not password:
            if server is None or not server.password:
                raise InvalidInput("password", "is needed when auth_method is password.")
            password = server.password
    cleaned.update(auth_method=method, password=password, private_key=private_key)


def server_create(*, project: Project, actor: User, **fields: Any) -> Server:
    required_fields = (
        ("name", "s3_bucket")
        if fields.get("protocol") == Protocol.S3
        else ("name", "hostname", "username", "deploy_path")
    )
    for required in required_fields:
        if not fields.get(required):
            raise InvalidInput(required, "is required.")
    cleaned = server_clean(fields)
    if project.servers.filter(name=cleaned["name"]).exists():
        raise InvalidInput("name", f"{cleaned['name']!r} is already used in {project.slug}.")
    _server_branch_check(project, cleaned)
    with transaction.atomic():
        server = save_unique(
            lambda: Server.objects.create(project=project, **cleaned),
            field="name",
            value=cleaned["name"],
        )
        audit_record(
            project=project,
            actor=actor,
            action="server.created",
            target=f"server {server.name}",
            address=server.address,
            auth_method=server.auth_method,
            fields=sorted(set(fields) - {"password", "private_key", "jump_private_key"}),
        )
        if server.host_key_fingerprint:
            audit_record(
                project=project,
                actor=actor,
                action="host_key.trusted",
                target=f"server {server.name}",
                fingerprint=server.host_key_fingerprint,
            )
        if server.jump_host_key_fingerprint:
            audit_record(
                project=project,
                actor=actor,
                action="host_key.trusted",
                target=f"jump host {server.jump_address} of server {server.name}",
                fingerprint=server.jump_host_key_fingerprint,
            )
    return server


def _server_branch_check(project: Project, cleaned: dict[str, Any]) -> None:
    """A server's own branch must be one the project's repository has (see
    projects.services.repository_branch_check)."""
    if cleaned.get("branch"):
        repository_branch_check(
            repository_url=project.repository_url,
            branch=cleaned["branch"],
            private_key=project.private_key,
            repository_token=project.repository_token,
            repository_host_key=project.repository_host_key,
        )


def server_update(*, server: Server, actor: User, **fields: Any) -> Server:
    cleaned = server_clean(fields, server=server)
    if cleaned.get("branch") != server.branch:
        _server_branch_check(server.project, cleaned)
    if "name" in cleaned and (
        Server.objects.filter(project_id=server.project_id, name=cleaned["name"])
        .exclude(pk=server.pk)
        .exists()
    ):
        raise InvalidInput("name", f"{cleaned['name']!r} is already used in this project.")
    moved = any(
        field in cleaned and cleaned[field] != getattr(server, field) for field in _ADDRESS_FIELDS
    )
    if moved and "host_key_fingerprint" not in cleaned:
        cleaned["host_key_fingerprint"] = ""
    if moved and "certificate_fingerprint" not in cleaned:
        cleaned["certificate_fingerprint"] = ""
    previous_fingerprint = server.host_key_fingerprint
    previous_jump_fingerprint = server.jump_host_key_fingerprint
    with transaction.atomic():
        changed = save_unique(
            lambda: model_update(instance=server, data=cleaned),
            field="name",
            value=cleaned.get("name", server.name),
        )
        if changed:
            # Which secrets changed is recorded by name; their values never are.
            audit_record(
                project=server.project,
                actor=actor,
                action="server.updated",
                target=f"server {server.name}",
                fields=sorted(changed),
            )
        if "certificate_fingerprint" in changed:
            audit_record(
                project=server.project,
                actor=actor,
                action="certificate.trusted"
                if server.certificate_fingerprint
                else "certificate.cleared",
                target=f"server {server.name}",
                fingerprint=server.certificate_fingerprint,
            )
        if "host_key_fingerprint" in changed:
            audit_record(
                project=server.project,
                actor=actor,
                action="host_key.trusted" if server.host_key_fingerprint else "host_key.cleared",
                target=f"server {server.name}",
                fingerprint=server.host_key_fingerprint,
                previous=previous_fingerprint,
            )
        if "jump_host_key_fingerprint" in changed:
            audit_record(
                project=server.project,
                actor=actor,
                action=(
                    "host_key.trusted" if server.jump_host_key_fingerprint else "host_key.cleared"
                ),
                target=f"jump host {server.jump_address or '(removed)'} of server {server.name}",
                fingerprint=server.jump_host_key_fingerprint,
                previous=previous_jump_fingerprint,
            )
    return server


def server_delete(*, server: Server, actor: User) -> None:
    with transaction.atomic():
        if server.targets.filter(status__in=TARGET_ACTIVE).exists():
            raise ValidationError(
                f"Server {server.name} has a deployment queued or running; cancel it or wait "
                "until it finishes, then delete the server."
            )
        audit_record(
            project=server.project,
            actor=actor,
            action="server.deleted",
            target=f"server {server.name}",
            address=server.address,
        )
        server.delete()


@dataclass(frozen=True)
class ServerCheck:
    """The outcome of testing a server: what a person needs to trust it or to fix it. Behind a
    jump host, the jump host's key comes first: the server's is read through it, once it is
    trusted."""

    ok: bool
    address: str
    #: What the server offers now ("SHA256:..."), None when it could not be reached.
    host_key_fingerprint: str | None = None
    host_key_type: str | None = None
    #: The offered key equals the pinned one (FTPS: the certificate is pinned and offered,
    #: or verified by the system's CAs; plain FTP: always).
    trusted: bool = False
    error: str = ""
    #: The jump host ("host:port", "" without one), the key it offers and whether that is
    #: the pinned one.
    jump_address: str = ""
    jump_host_key_fingerprint: str | None = None
    jump_host_key_type: str | None = None
    jump_trusted: bool = False

    #: FTPS: the certificate's SHA-256 ("SHA256:AB:CD:..."), and whether the system's
    #: certificate authorities vouch for it.
    certificate_fingerprint: str | None = None
    certificate_verified: bool = False


def _untrusted(address: str, offered: ssh.HostKey, pinned: str) -> str:
    """Why ``offered`` cannot be used yet ("" when it is the pinned key)."""
    if not pinned:
        subject = address[0].upper() + address[1:]
        return (
            f"{subject} offered the host key {offered.key_type} {offered.fingerprint}, "
            "which is not trusted yet. Compare it with `ssh-keygen -lf` on the server, "
            "then trust it."
        )
    if not hmac.compare_digest(pinned.encode(), offered.fingerprint.encode()):
        return str(HostKeyMismatch(address, pinned, offered.fingerprint))
    return ""


def server_check(*, server: Server) -> ServerCheck:
    """Read the host key (the jump host's first, then the server's through it); when both are
    pinned and match, log in and check the deploy path.

    Never raises for a problem on the far side (unreachable, refused, wrong key, read-only
    path): the answer says what went wrong, in words written for the person fixing it.
    """
    if server.is_ftp:
        return _ftp_check(server)
    if server.is_s3:
        return _s3_check(server)
    address = ssh.format_address(server.hostname, server.port)
    found = ServerCheck(ok=False, address=address)
    jump: ssh.Endpoint | None = None
    if server.jump_hostname:
        jump_label = f"the jump host {server.jump_address}"
        found = dataclasses.replace(found, jump_address=server.jump_address)
        try:
            jump = jump_endpoint_for(server)
            assert jump is not None
            offered_jump = ssh.probe_host_key(server.jump_hostname, server.jump_port)
        except EngineError as exc:
            return dataclasses.replace(found, error=_message(exc, server.jump_address))
        except Exception as exc:  # a network library's surprise must not become a 500
            logger.warning("Probing %s failed", server.jump_address, exc_info=True)
            return dataclasses.replace(found, error=f"Cannot reach {jump_label}: {exc}")
        jump_problem = _untrusted(jump_label, offered_jump, server.jump_host_key_fingerprint)
        found = dataclasses.replace(
            found,
            jump_host_key_fingerprint=offered_jump.fingerprint,
            jump_host_key_type=offered_jump.key_type,
            jump_trusted=not jump_problem,
        )
        if jump_problem:
            return dataclasses.replace(found, error=jump_problem)
    try:
        if jump is None:
            outbound.server_host_check(server.hostname, server.port)
        offered = ssh.probe_host_key(server.hostname, server.port, jump=jump)
    except EngineError as exc:
        return dataclasses.replace(found, error=_message(exc, address))
    except Exception as exc:  # see above
        logger.warning("Probing %s failed", address, exc_info=True)
        return dataclasses.replace(found, error=f"Cannot reach {address}: {exc}")

    label = address if jump is None else f"the target {address}"
    problem = _untrusted(label, offered, server.host_key_fingerprint)
    found = dataclasses.replace(
        found,
        host_key_fingerprint=offered.fingerprint,
        host_key_type=offered.key_type,
        trusted=not problem,
    )
    if problem:
        return dataclasses.replace(found, error=problem)

    try:
        with ssh.connect(endpoint_for(server)) as connection:
            problem = _deploy_path_problem(server, connection)
    except EngineError as exc:
        return dataclasses.replace(found, error=_message(exc, address))
    except Exception as exc:  # see above
        logger.warning("Checking %s failed", address, exc_info=True)
        return dataclasses.replace(found, error=f"Could not log in to {address}: {exc}")
    return dataclasses.replace(found, ok=not problem, error=problem)


def _ftp_check(server: Server) -> ServerCheck:
    """server_check for FTP and FTPS: the certificate first (FTPS), then, once it is
    trusted, log in and write a file in the deploy path."""
    address = ssh.format_address(server.hostname, server.port)
    try:
        endpoint = ftp_endpoint_for(server)
        found = ftp.probe(endpoint)
    except EngineError as exc:
        return ServerCheck(ok=False, address=address, error=_message(exc, address))
    except Exception as exc:  # a network library's surprise must not become a 500
        logger.warning("Probing %s failed", address, exc_info=True)
        return ServerCheck(ok=False, address=address, error=f"Cannot reach {address}: {exc}")
    check = ServerCheck(
        ok=False,
        address=address,
        trusted=found.trusted,
        certificate_fingerprint=found.fingerprint or None,
        certificate_verified=found.verified,
    )
    pinned = server.certificate_fingerprint
    if not found.trusted and pinned:
        return dataclasses.replace(
            check,
            error=f"The certificate of {address} has changed: pinned {pinned}, offered "
            f"{found.fingerprint}. If it was renewed on purpose, check it and trust it again.",
        )
    if not found.trusted:
        return dataclasses.replace(
            check,
            error=f"{address} offered the certificate {found.fingerprint}, which the system's "
            "certificate authorities do not vouch for. Compare it with `openssl x509 -noout "
            "-fingerprint -sha256 -in <certificate>` on the server, then trust it.",
        )
    path = server.deploy_path
    try:
        session = ftp.Session(endpoint)
        try:
            session.makedirs(path)
            scratch = posixpath.join(path, f".slipway-check-{secrets.token_hex(4)}")
            session.put_bytes(scratch, b"")
            session.remove(scratch)
        finally:
            session.close()
    except EngineError as exc:
        problem = f"The deploy path {path} is not writable by {server.username}: {exc}"
        return dataclasses.replace(
            check, error=problem if exc.user_facing else _message(exc, address)
        )
    except Exception as exc:  # see above
        logger.warning("Checking %s failed", address, exc_info=True)
        return dataclasses.replace(check, error=f"Could not log in to {address}: {exc}")
    return dataclasses.replace(check, ok=True)


def _s3_check(server: Server) -> ServerCheck:
    """server_check for an S3 bucket: the endpoint through the address policy, then list
    the bucket under the prefix and write and delete a test object there. Wrong keys, a
    missing bucket, another region are named with the setting to correct."""
    address = server.address
    try:
        s3.probe(s3_endpoint_for(server))
    except EngineError as exc:
        return ServerCheck(ok=False, address=address, error=_message(exc, address))
    except Exception as exc:  # a network library's surprise must not become a 500
        logger.warning("Probing %s failed", address, exc_info=True)
        return ServerCheck(
            ok=False, address=address, error=f"Cannot reach {address}: {type(exc).__name__}"
        )
    return ServerCheck(ok=True, address=address, trusted=True)


def _message(exc: EngineError, address: str) -> str:
    if exc.user_facing:
        return str(exc)
    logger.warning("Checking %s failed", address, exc_info=exc)
    return f"Checking {address} failed on Slipway's side; the log has the details."


def _deploy_path_problem(server: Server, connection: ssh.Connection) -> str:
    """ "" when the deploy path exists (or could be made), is writable and is safe (the same
    check a deployment makes first: release.RemoteLayout.check_deploy_path), else why not."""
    path = server.deploy_path
    who = f"{server.username}@{connection.endpoint.address}"
    if server.protocol == Protocol.SSH:
        try:
            RemoteLayout(connection, path).check_deploy_path(timeout=CHECK_COMMAND_TIMEOUT_SECONDS)
        except UnsafeDeployPath as unsafe:
            return str(unsafe)
        except UserError as failed:  # mkdir or the write test failed: say how
            detail = (
                "\n".join(failed.tail[-3:]) if isinstance(failed, CommandFailed) else str(failed)
            )
            return f"The deploy path {path} is not writable by {who}" + (
                f": {detail}" if detail else "."
            )
        return ""
    # SFTP-only servers run no commands: make the path and write a file instead.
    sftp = connection.sftp()
    probe = posixpath.join(path, f".slipway-check-{secrets.token_hex(4)}")
    try:
        _sftp_makedirs(sftp, path)
        with sftp.open(probe, "wb") as handle:
            handle.write(b"")
        sftp.remove(probe)
    except (OSError, paramiko.SSHException) as exc:
        return f"The deploy path {path} is not writable by {who} over SFTP: {exc}"
    return ""


def _sftp_makedirs(sftp: paramiko.SFTPClient, path: str) -> None:
    current = ""
    for part in path.strip("/").split("/"):
        current += "/" + part
        try:
            sftp.stat(current)
        except FileNotFoundError:
            sftp.mkdir(current)


def server_trust_host_key(*, server: Server, actor: User, fingerprint: str) -> Server:
    """Pin the host key, if ``fingerprint`` is what the server offers right now (see
    ssh.confirm_host_key: raises InvalidInput naming ``fingerprint``). The outbound-address
    policy is checked first: a refused address is never probed. Behind a jump host the key is
    read through it, so the jump host's own key must be trusted first. On an FTPS server the
    certificate is pinned instead (``server_trust_certificate``)."""
    if server.is_s3:
        raise InvalidInput(
            "fingerprint",
            "an S3 bucket has no host key: its endpoint's HTTPS certificate is "
            "verified by the system's certificate authorities.",
        )
    if server.is_ftp:
        return server_trust_certificate(server=server, actor=actor, fingerprint=fingerprint)
    address = ssh.format_address(server.hostname, server.port)
    try:
        jump = jump_endpoint_for(server)
        if jump is None:
            outbound.server_host_check(server.hostname, server.port)
    except EngineError as exc:
        raise InvalidInput("fingerprint", f"cannot be checked: {_message(exc, address)}") from None
    if jump is not None and jump.host_key_fingerprint is None:
        raise InvalidInput(
            "fingerprint",
            f"cannot be checked yet: the server is reached through the jump host "
            f"{server.jump_address}, whose host key is not trusted yet. Trust it first.",
        )
    fingerprint = ssh.confirm_host_key(
        server.hostname, server.port, fingerprint, jump=jump
    ).fingerprint
    return _pin(
        server,
        actor,
        "host_key_fingerprint",
        fingerprint,
        action="host_key.trusted",
        target=f"server {server.name}",
    )


def server_trust_jump_host_key(*, server: Server, actor: User, fingerprint: str) -> Server:
    """Pin the host key of the server's jump host, if ``fingerprint`` is what the jump host
    offers right now (the rules of ``server_trust_host_key``; InvalidInput naming
    ``fingerprint``, or ``jump_hostname`` when the server has no jump host)."""
    if not server.jump_hostname:
        raise InvalidInput("jump_hostname", "is empty: this server has no jump host.")
    try:
        outbound.server_host_check(server.jump_hostname, server.jump_port)
    except EngineError as exc:
        raise InvalidInput(
            "fingerprint", f"cannot be checked: {_message(exc, server.jump_address)}"
        ) from None
    fingerprint = ssh.confirm_host_key(
        server.jump_hostname, server.jump_port, fingerprint
    ).fingerprint
    return _pin(
        server,
        actor,
        "jump_host_key_fingerprint",
        fingerprint,
        action="host_key.trusted",
        target=f"jump host {server.jump_address} of server {server.name}",
    )


def server_trust_certificate(*, server: Server, actor: User, fingerprint: str) -> Server:
    """Pin an FTPS server's certificate, if ``fingerprint`` is the one it offers right now
    (InvalidInput naming ``fingerprint`` otherwise, and on a plain FTP server, which has
    none). Audited as ``certificate.trusted``."""
    address = ssh.format_address(server.hostname, server.port)
    if server.protocol != Protocol.FTPS:
        raise InvalidInput("fingerprint", "plain FTP has no certificate to trust.")
    wanted = ftp.normalize_fingerprint(fingerprint)
    try:
        endpoint = dataclasses.replace(ftp_endpoint_for(server), certificate_fingerprint=None)
        offered, _ = ftp.offered_certificate(endpoint)
    except EngineError as exc:
        raise InvalidInput("fingerprint", f"cannot be checked: {_message(exc, address)}") from None
    if not hmac.compare_digest(offered.encode(), wanted.encode()):
        raise InvalidInput(
            "fingerprint", f"is not the certificate {address} offers now ({offered})."
        )
    return _pin(
        server,
        actor,
        "certificate_fingerprint",
        wanted,
        action="certificate.trusted",
        target=f"server {server.name}",
    )


def _pin(
    server: Server, actor: User, field: str, fingerprint: str, *, action: str, target: str
) -> Server:
    """Store a fingerprint confirmed against what the far side offers now (a host key, a jump
    host's key, a certificate) in ``field``, audited with the one it replaces."""
    previous = getattr(server, field)
    with transaction.atomic():
        model_update(instance=server, data={field: fingerprint})
        audit_record(
            project=server.project,
            actor=actor,
            action=action,
            target=target,
            fingerprint=fingerprint,
            previous=previous,
        )
    return server


# --------------------------------------------------------------------------- the deploy lock


class LockBreakRefused(Exception):
    """The lock was not broken: its owner is still at work (and ``force`` was not given), it
    changed while it was read, or the server could not be reached or read. Says why."""


@dataclass(frozen=True)
class LockBreak:
    """What ``server_lock_break`` found and did."""

    #: True when a lock was there and was removed.
    broken: bool
    #: The lock's owner id ("deployment-12"), "" when it named none or there was no lock.
    owner: str = ""
    holder: str = ""
    since: str = ""
    #: How old the lock was, in seconds (the server's clock); None without a lock.
    age_seconds: int | None = None
    #: The deployment the owner id names, when it is one of this project's.
    deployment_id: int | None = None
    message: str = ""


def server_lock_break(*, server: Server, user: User, force: bool = False) -> LockBreak:
    """Remove the deploy lock Slipway keeps on ``server`` (``.slipway/lock`` in the deploy
    path; ``.slipway-lock`` where files go in place), audited as ``server.lock_broken``.

    The lock's owner is read first (over SSH, or FTP). Raises LockBreakRefused when that owner is a
    deployment still queued or running in the database, or one that left a command it could
    not stop (the lock's holder names it), unless ``force``; when the lock was taken again
    between reading and removing it; and when the server cannot be reached or read. A lock
    whose owner names no deployment of the database (empty, unreadable, by hand) is broken.
    Answers ``broken=False`` when there was no lock."""
    address = ssh.format_address(server.hostname, server.port)
    taken = (
        _s3_lock_break if server.is_s3 else _ftp_lock_break if server.is_ftp else _ssh_lock_break
    )
    found, path = taken(server, force=force, address=address)
    if found is None:
        return LockBreak(broken=False, message=f"{server.name} is not locked.")
    # Checked before the removal (refusing it unless forced); read again for the answer.
    deployment = _lock_owner_check(server, found, force=True)
    with transaction.atomic():
        audit_record(
            project=server.project,
            actor=user,
            action="server.lock_broken",
            target=f"server {server.name}",
            address=address,
            path=path,
            owner=found.owner,
            holder=found.holder,
            since=found.since,
            forced=force,
        )
    logger.info("Lock %s on %s broken by %s", path, address, user.get_username())
    return LockBreak(
        broken=True,
        owner=found.owner,
        holder=found.holder,
        since=found.since,
        age_seconds=found.age_seconds,
        deployment_id=deployment.pk if deployment is not None else None,
        message=f"The deploy lock on {server.name} was broken"
        + (f" (it was held by {found.holder or found.owner})" if found.owner else "")
        + ".",
    )


def _s3_lock_break(server: Server, *, force: bool, address: str) -> tuple[LockInfo | None, str]:
    """``_ssh_lock_break`` in a bucket (``<prefix>.slipway/lock``)."""
    try:
        endpoint = s3_endpoint_for(server)
        bucket = s3.Bucket(endpoint)
        found = s3.read_lock(bucket)
        if found is None:
            return None, ""
        _lock_owner_check(server, found, force=force)
        if not s3.break_lock(bucket, owner=found.owner):
            raise LockBreakRefused(_LOCK_CHANGED.format(name=server.name))
    except EngineError as exc:
        raise LockBreakRefused(f"The lock was not broken: {_message(exc, address)}") from None
    return found, f"s3://{endpoint.bucket}/{endpoint.key(s3.LOCK_KEY)}"


def _ftp_lock_break(server: Server, *, force: bool, address: str) -> tuple[LockInfo | None, str]:
    """``_ssh_lock_break`` over FTP."""
    root = validate_deploy_path(server.deploy_path)
    try:
        session = ftp.Session(ftp_endpoint_for(server))
        try:
            found = ftp.read_lock(session, root)
            if found is None:
                return None, ""
            _lock_owner_check(server, found, force=force)
            if not ftp.break_lock(session, root, owner=found.owner):
                raise LockBreakRefused(_LOCK_CHANGED.format(name=server.name))
        finally:
            session.close()
    except EngineError as exc:
        raise LockBreakRefused(f"The lock was not broken: {_message(exc, address)}") from None
    return found, posixpath.join(root, ftp.LOCK_DIR)


def _ssh_lock_break(server: Server, *, force: bool, address: str) -> tuple[LockInfo | None, str]:
    """Read and remove the lock over SSH (SFTP where files go in place): the lock found
    (None: there was none) and its path. Raises LockBreakRefused."""
    try:
        with ssh.connect(endpoint_for(server)) as connection:
            if server.protocol == Protocol.SSH and server.atomic:
                layout = RemoteLayout(connection, server.deploy_path)
                found = layout.read_lock()
                if found is None:
                    return None, ""
                _lock_owner_check(server, found, force=force)
                if not layout.break_lock(owner_id=found.owner):
                    raise LockBreakRefused(_LOCK_CHANGED.format(name=server.name))
                return found, posixpath.join(layout.deploy_path, LOCK_DIR)
            root = validate_deploy_path(server.deploy_path)
            found = direct.read_lock(connection.sftp(), root)
            if found is None:
                return None, ""
            _lock_owner_check(server, found, force=force)
            if not direct.break_lock(connection.sftp(), root, owner=found.owner):
                raise LockBreakRefused(_LOCK_CHANGED.format(name=server.name))
            return found, posixpath.join(root, direct.LOCK_DIR)
    except EngineError as exc:
        raise LockBreakRefused(f"The lock was not broken: {_message(exc, address)}") from None
    except (OSError, paramiko.SSHException) as exc:
        raise LockBreakRefused(f"The lock was not broken: {address}: {exc}") from None


_LOCK_CHANGED = (
    "The lock on {name} changed while it was read: it was taken again or released. Look "
    "again before breaking it."
)


def _lock_owner_check(server: Server, found: LockInfo, *, force: bool) -> Deployment | None:
    """The project's deployment that the lock names (None if none); LockBreakRefused, unless
    ``force``, while it is still at work, or left a command that may still be running."""
    named = parse_lock_owner(found.owner)
    deployment = (
        Deployment.objects.filter(project=server.project, pk=named.deployment_id).first()
        if named is not None
        else None
    )
    if deployment is None and not found.owner:
        # An older Slipway deploying in place wrote no owner: refuse while one is at work.
        busy = server.targets.filter(status__in=TARGET_ACTIVE).select_related("deployment")
        target = busy.first()
        deployment = target.deployment if target is not None else None
    if force or deployment is None:
        return deployment
    held = f"held by {found.holder or found.owner}" if found.holder or found.owner else "held"
    if deployment.status not in FINAL:
        raise LockBreakRefused(
            f"The lock on {server.name} is {held}: deployment #{deployment.pk} is still "
            f"{deployment.status}. Cancel it and wait until it ends; break the lock anyway "
            "(force) only if you know that its worker is gone."
        )
    if named is not None and named.left_running:
        raise LockBreakRefused(
            f"The lock on {server.name} is {held}. Deployment #{deployment.pk} has ended, "
            "but a command it stopped may still be running on the server. Check on the "
            "server that it is gone, then break the lock anyway (force)."
        )
    return deployment


# --------------------------------------------------------------------------- health checks

HEALTH_CHECK_FIELDS = frozenset(HEALTH_CHECK_SETTINGS)


def _health_check_fields(fields: dict[str, Any]) -> dict[str, Any]:
    unknown = set(fields) - HEALTH_CHECK_FIELDS - {"servers"}
    if unknown:
        raise InvalidInput(sorted(unknown)[0], "cannot be set on a health check.")
    return fields


def _health_check_target(check: HealthCheck) -> str:
    # Not its URL or command: either may hold a token.
    return f"health check #{check.pk} ({check.kind})"


def health_check_create(
    *, project: Project, actor: User, servers: Sequence[Server] | None = None, **fields: Any
) -> HealthCheck:
    """Add a health check to ``project``; ``servers`` empty or left out means all of them."""
    cleaned = health_check_clean(_health_check_fields(fields))
    chosen = _project_servers(project, list(servers)) if servers is not None else []
    with transaction.atomic():
        check = HealthCheck.objects.create(project=project, **cleaned)
        check.servers.set(chosen)
        audit_record(
            project=project,
            actor=actor,
            action="health_check.created",
            target=_health_check_target(check),
            fields=sorted({*fields, *(["servers"] if servers is not None else [])}),
        )
    return check


def health_check_update(
    *,
    health_check: HealthCheck,
    actor: User,
    servers: Sequence[Server] | None = None,
    **fields: Any,
) -> HealthCheck:
    """Change some of a health check's fields; they are checked together with the others
    (an HTTP check keeps needing a URL, the timings keep fitting in the time limit)."""
    _health_check_fields(fields)
    if fields.get("url") and fields["url"] == health_check.shown_url:
        # The URL as pages and the API show it (password masked): unchanged, so the stored
        # password stays (it is never shown, so it cannot be "edited").
        fields = {**fields, "url": health_check.url}
    current = {name: getattr(health_check, name) for name in HEALTH_CHECK_FIELDS}
    cleaned = health_check_clean({**current, **fields})
    chosen = _project_servers(health_check.project, list(servers)) if servers is not None else None
    with transaction.atomic():
        changed = model_update(
            instance=health_check, data={name: cleaned[name] for name in HEALTH_CHECK_FIELDS}
        )
        if chosen is not None and {s.pk for s in chosen} != set(
            health_check.servers.values_list("pk", flat=True)
        ):
            health_check.servers.set(chosen)
            changed.append("servers")
        if changed:
            audit_record(
                project=health_check.project,
                actor=actor,
                action="health_check.updated",
                target=_health_check_target(health_check),
                fields=sorted(changed),
            )
    return health_check


def health_check_delete(*, health_check: HealthCheck, actor: User) -> None:
    with transaction.atomic():
        audit_record(
            project=health_check.project,
            actor=actor,
            action="health_check.deleted",
            target=_health_check_target(health_check),
        )
        health_check.delete()
