"""FTP and FTPS servers: files uploaded in place by manifest, as the SFTP direct mode does.

There is no release directory, no symlink and no shell on an FTP server: added and modified
files are stored under a temporary name and renamed over their final one, removed files
are deleted, and the manifest is kept in ``<deploy_path>/.slipway-manifest.json`` with a
listing (``.slipway-listing.json``: size and modification time of every file, as MLSD
reports them) taken when the deployment finished. A file whose listing differs at the next
deployment was changed on the server since, and is restored (``rollout.with_drift``).

FTPS is explicit TLS (AUTH TLS, then PROT P for the data connections, which reuse the
control connection's TLS session as most servers require). The server's certificate is
trusted when it matches the pinned SHA-256 fingerprint, or, when none is pinned, when it
verifies against the system's CA store; otherwise nothing is sent (``probe`` shows the
fingerprint for a user to pin). Passive mode only; a PASV reply naming another host than
the control connection's is refused (an FTP bounce).
"""

from __future__ import annotations

import contextlib
import ftplib
import functools
import hashlib
import io
import json
import posixpath
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builds.engine import release
from builds.engine.direct import in_place_variables
from builds.engine.drift import refuse_drift
from builds.engine.errors import (
    AuthenticationRefused,
    CertificateMismatch,
    CertificateNotTrusted,
    DiskFull,
    EngineError,
    HostUnreachable,
    InvalidInput,
    LockHeld,
    PassiveAddressRefused,
    PermissionDenied,
    TransferFailed,
    UserError,
)
from builds.engine.manifest import Manifest, diff, display_path, is_generated
from builds.engine.specs import LEFT_RUNNING_SUFFIX, lock_owner
from builds.engine.variables import substitute

if TYPE_CHECKING:
    from builds.engine.build import BuildOutput
    from builds.engine.excludes import ExcludeRules
    from builds.engine.specs import DeploySpec, Reporter, ServerResult, ServerSpec

MANIFEST_FILE = ".slipway-manifest.json"
LISTING_FILE = ".slipway-listing.json"
LOCK_DIR = ".slipway-lock"
TEMPORARY_SUFFIX = ".slipway-tmp"
MAX_CONNECTIONS = 16
_FINGERPRINT = re.compile(r"[0-9A-F]{64}")

#: Transient failures of one transfer: the connection dropped, or the server said "try again".
_RETRYABLE = (OSError, EOFError, ftplib.error_temp, ftplib.error_reply, ftplib.error_perm)


@dataclass(frozen=True)
class FtpEndpoint:
    """Where and as whom to log in over FTP (``tls=False``) or explicit FTPS (``tls=True``).

    ``certificate_fingerprint``: the pinned SHA-256 of the server's certificate (DER), as
    ``normalize_fingerprint`` writes it; None: the certificate must verify against the system
    CA store (and name ``hostname``). ``connections``: transfers in flight at once, each on
    a connection of its own (1..16). ``retries``: new attempts of a transfer whose connection
    dropped. Secrets stay out of ``repr``."""

    hostname: str
    username: str
    password: str = field(default="", repr=False)
    port: int = 21
    tls: bool = False
    certificate_fingerprint: str | None = None
    connections: int = 4
    retries: int = 3
    connect_timeout: float = 10.0

    def __post_init__(self) -> None:
        if not self.hostname.strip():
            raise InvalidInput("hostname", "is empty")
        if not self.username.strip():
            raise InvalidInput("username", "is empty")
        if not 1 <= self.port <= 65535:
            raise InvalidInput("port", f"{self.port} is not between 1 and 65535")
        if not 1 <= self.connections <= MAX_CONNECTIONS:
            raise InvalidInput(
                "ftp_connections", f"must be a whole number from 1 to {MAX_CONNECTIONS}"
            )
        if self.retries < 0:
            raise InvalidInput("retries", "cannot be negative")
        if self.certificate_fingerprint is not None:
            normalize_fingerprint(self.certificate_fingerprint)

    @property
    def address(self) -> str:
        return f"{self.hostname}:{self.port}" if self.port != 21 else self.hostname


def normalize_fingerprint(text: str) -> str:
    """``SHA256:AB:CD:…`` (64 hex digits, upper case, colon-separated) from any usual way of
    writing a SHA-256 certificate fingerprint (``openssl x509 -fingerprint -sha256``'s
    output, bare hex, with or without the prefix). Raises InvalidInput naming
    certificate_fingerprint."""
    cleaned = text.strip()
    for prefix in ("sha256 fingerprint=", "sha256:", "sha256="):
        if cleaned.lower().startswith(prefix):
            cleaned = cleaned[len(prefix) :]
    digits = re.sub(r"[\s:]", "", cleaned).upper()
    if not _FINGERPRINT.fullmatch(digits):
        raise InvalidInput(
            "certificate_fingerprint",
            "must be a SHA-256 fingerprint (64 hexadecimal digits, as "
            "`openssl x509 -noout -fingerprint -sha256` prints it)",
        )
    return "SHA256:" + ":".join(digits[i : i + 2] for i in range(0, 64, 2))


def certificate_fingerprint(der: bytes) -> str:
    """The fingerprint of a certificate (DER bytes) as ``normalize_fingerprint`` writes it."""
    return normalize_fingerprint(hashlib.sha256(der).hexdigest())


# --------------------------------------------------------------------------- the client


def _checked_pasv(client: ftplib.FTP) -> tuple[str, int] | None:
    """PASV, refusing a reply that names another host than the control connection's;
    None on IPv6 (EPSV names no host)."""
    if client.af != socket.AF_INET:
        return None
    # S321: FTP is what this module speaks, on purpose (see docs/ftp.md).
    offered, port = ftplib.parse227(client.sendcmd("PASV"))  # noqa: S321
    peer = str(client.sock.getpeername()[0]) if client.sock is not None else ""
    if offered != peer:
        raise PassiveAddressRefused(
            f"{client.host} answered PASV with another address ({offered}) than its own "
            f"({peer}): the data connection would go elsewhere (an FTP bounce), so it is "
            "refused. Configure the FTP server's passive address to be its own."
        )
    return peer, int(port)


class _Ftp(ftplib.FTP):
    def makepasv(self) -> tuple[str, int]:
        return _checked_pasv(self) or super().makepasv()


class _FtpTls(ftplib.FTP_TLS):
    """FTP_TLS whose data connections resume the control connection's TLS session: many
    servers (vsftpd's require_ssl_reuse, ProFTPD, FileZilla Server) refuse a data
    connection that starts a session of its own. With a pinned certificate (``pinned``,
    the control connection checked against it), a data connection that did not resume that
    session must offer the same certificate: its context verifies nothing by itself."""

    pinned: str | None = None

    def makepasv(self) -> tuple[str, int]:
        return _checked_pasv(self) or super().makepasv()

    def ntransfercmd(
        self, cmd: str, rest: int | str | None = None
    ) -> tuple[socket.socket, int | None]:
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)  # noqa: S321
        if self._prot_p:  # type: ignore[attr-defined]
            session = self.sock.session if isinstance(self.sock, ssl.SSLSocket) else None
            conn = self.context.wrap_socket(conn, server_hostname=self.host, session=session)
            if self.pinned is not None and not conn.session_reused:
                der = conn.getpeercert(binary_form=True)
                if not der or certificate_fingerprint(der) != self.pinned:
                    conn.close()
                    raise CertificateMismatch(
                        f"A data connection to {self.host} offered another certificate than "
                        f"the pinned {self.pinned}"
                    )
        return conn, size


def _tls_context(endpoint: FtpEndpoint, *, verify: bool) -> ssl.SSLContext:
    if verify:
        return ssl.create_default_context()
    # Pinned: the fingerprint is compared after the handshake instead.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _open(endpoint: FtpEndpoint, *, verify: bool) -> ftplib.FTP:
    """Connect (and, for FTPS, secure the control connection); no login yet."""
    client: ftplib.FTP = (
        _FtpTls(context=_tls_context(endpoint, verify=verify)) if endpoint.tls else _Ftp()
    )
    try:
        client.connect(endpoint.hostname, endpoint.port, timeout=endpoint.connect_timeout)
    except (OSError, EOFError, ftplib.Error) as exc:
        client.close()
        raise HostUnreachable(f"Could not connect to {endpoint.address} over FTP: {exc}") from exc
    except UnicodeError as exc:
        # The idna codec refuses a label that is empty or longer than 63 characters.
        client.close()
        raise HostUnreachable(
            f"Could not connect to {endpoint.address} over FTP: it is not a valid host name "
            f"({exc}); correct the server's hostname"
        ) from exc
    if endpoint.tls:
        assert isinstance(client, ftplib.FTP_TLS)
        try:
            client.auth()
        except ssl.SSLCertVerificationError as exc:
            client.close()
            raise CertificateNotTrusted(
                f"The certificate of {endpoint.address} could not be verified against the "
                f"system's certificate authorities ({exc.verify_message}); pin its fingerprint "
                "(Test connection, then Trust) to deploy to it"
            ) from exc
        except ftplib.error_perm as exc:
            client.close()
            raise HostUnreachable(
                f"{endpoint.address} does not offer explicit TLS (AUTH TLS): {exc}"
            ) from exc
        except (OSError, EOFError, ftplib.Error) as exc:
            client.close()
            raise HostUnreachable(f"TLS with {endpoint.address} failed: {exc}") from exc
    return client


def _offered_fingerprint(client: ftplib.FTP) -> str:
    sock = client.sock
    der = sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None
    if not der:
        raise CertificateNotTrusted(f"{client.host} sent no certificate")
    return certificate_fingerprint(der)


def connect(endpoint: FtpEndpoint) -> ftplib.FTP:
    """A logged-in client in passive mode, with PROT P on FTPS.

    Raises HostUnreachable, CertificateNotTrusted (no pin, and the system CAs do not verify
    it), CertificateMismatch (another certificate than the pinned one: nothing, not even the
    password, was sent) or AuthenticationRefused (naming the user)."""
    pinned = endpoint.certificate_fingerprint
    client = _open(endpoint, verify=endpoint.tls and pinned is None)
    try:
        if endpoint.tls and pinned is not None:
            offered = _offered_fingerprint(client)
            if offered != normalize_fingerprint(pinned):
                raise CertificateMismatch(
                    f"The certificate of {endpoint.address} has changed: pinned "
                    f"{normalize_fingerprint(pinned)}, offered {offered}. If the server's "
                    "certificate was renewed on purpose, check it and trust it again."
                )
            assert isinstance(client, _FtpTls)
            client.pinned = offered
        try:
            client.login(endpoint.username, endpoint.password)
        except ftplib.error_perm as exc:
            raise AuthenticationRefused(
                f"{endpoint.address} refused the login of {endpoint.username!r}: wrong user "
                f"name or password ({str(exc).strip()})"
            ) from exc
        except (OSError, EOFError, ftplib.Error) as exc:
            raise HostUnreachable(f"Logging in to {endpoint.address} failed: {exc}") from exc
        if isinstance(client, ftplib.FTP_TLS):
            client.prot_p()
        client.set_pasv(True)
        client.voidcmd("TYPE I")
    except BaseException:
        with contextlib.suppress(Exception):
            client.close()
        raise
    return client


@dataclass(frozen=True)
class Probe:
    """What "Test connection" found: the welcome line, and for FTPS the certificate's
    fingerprint, whether it verifies against the system CAs, and whether it is trusted
    (pinned and matching, or verified). ``logged_in``: the login was tried and accepted
    (only once the certificate is trusted: no password goes to an untrusted server)."""

    welcome: str
    fingerprint: str = ""
    verified: bool = False
    trusted: bool = False
    logged_in: bool = False


def offered_certificate(endpoint: FtpEndpoint) -> tuple[str, bool]:
    """The fingerprint of the certificate an FTPS server offers now, and whether it verifies
    against the system CAs (for ``hostname``). Nothing is logged in. Raises HostUnreachable."""
    try:
        client = _open(endpoint, verify=True)
        verified = True
    except CertificateNotTrusted:
        client = _open(endpoint, verify=False)
        verified = False
    try:
        return _offered_fingerprint(client), verified
    finally:
        with contextlib.suppress(Exception):
            client.close()


def probe(endpoint: FtpEndpoint) -> Probe:
    """Connect, look at the certificate, and log in when it is trusted (plain FTP: always).
    Raises what ``connect`` raises, except the certificate's problems (in the Probe)."""
    fingerprint, verified = offered_certificate(endpoint) if endpoint.tls else ("", False)
    pinned = endpoint.certificate_fingerprint
    trusted = not endpoint.tls or (
        normalize_fingerprint(pinned) == fingerprint if pinned else verified
    )
    if not trusted:
        return Probe(welcome="", fingerprint=fingerprint, verified=verified)
    client = connect(endpoint)
    try:
        welcome = client.getwelcome()
        client.voidcmd("NOOP")
    finally:
        with contextlib.suppress(Exception):
            client.quit()
    return Probe(
        welcome=welcome, fingerprint=fingerprint, verified=verified, trusted=True, logged_in=True
    )


def _transfer_error(exc: BaseException, path: str, host: str) -> EngineError:
    if isinstance(exc, EngineError):
        return exc
    message = str(exc).strip()
    shown = display_path(path)
    if message.startswith(("552", "452")):
        return DiskFull(f"Could not write {shown} on {host}: {message}")
    if message.startswith(("550", "553", "530")):
        return PermissionDenied(f"{host} refused to write {shown}: {message}")
    return TransferFailed(f"Could not write {shown} on {host}: {message or type(exc).__name__}")


class Session:
    """One logged-in FTP connection, reopened (at most ``endpoint.retries`` times in a row)
    when it drops in the middle of an operation."""

    def __init__(self, endpoint: FtpEndpoint, log: Callable[[str], None] | None = None) -> None:
        self.endpoint = endpoint
        self.host = endpoint.address
        self._log = log
        self.client: ftplib.FTP | None = connect(endpoint)

    def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.quit()
            with contextlib.suppress(Exception):
                self.client.close()
            self.client = None

    def run(self, what: str, operation: Callable[[ftplib.FTP], Any]) -> Any:
        """``operation(client)``, again on a new connection when the connection fails.
        A refusal (5xx, or 452: no room) is raised as ftplib raises it."""
        attempt = 0
        while True:
            if self.client is None:
                self.client = connect(self.endpoint)
            try:
                return operation(self.client)
            except _RETRYABLE as exc:
                if isinstance(exc, ftplib.error_perm) or str(exc).startswith("452"):
                    raise
                self.close()
                attempt += 1
                if attempt > self.endpoint.retries:
                    raise TransferFailed(
                        f"The connection to {self.host} failed {attempt} times in a row "
                        f"({what}): {exc}"
                    ) from exc
                if self._log is not None:
                    self._log(f"The connection to {self.host} dropped ({what}: {exc}); retrying")
                time.sleep(min(4.0, 0.25 * 2**attempt))

    # -- files

    def read(self, path: str) -> bytes | None:
        """A file's content, or None when it does not exist or cannot be read."""
        buffer = io.BytesIO()

        def get(client: ftplib.FTP) -> None:
            buffer.seek(0)
            buffer.truncate()
            client.retrbinary(f"RETR {path}", buffer.write)

        try:
            self.run(f"reading {path}", get)
        except ftplib.error_perm:
            return None
        return buffer.getvalue()

    def put(self, path: str, source: Callable[[], io.BufferedIOBase | io.BytesIO]) -> None:
        """Store a file under a temporary name, then rename it over ``path``."""
        temporary = path + TEMPORARY_SUFFIX

        def store(client: ftplib.FTP) -> None:
            with source() as handle:
                client.storbinary(f"STOR {temporary}", handle, blocksize=256 * 1024)
            try:
                client.rename(temporary, path)
            except ftplib.error_perm:
                # Some servers will not rename over an existing file.
                with contextlib.suppress(ftplib.error_perm):
                    client.delete(path)
                client.rename(temporary, path)

        try:
            self.run(f"uploading {display_path(path)}", store)
        except (ftplib.Error, OSError) as exc:
            raise _transfer_error(exc, path, self.host) from exc

    def put_bytes(self, path: str, body: bytes) -> None:
        self.put(path, lambda: io.BytesIO(body))

    def chmod(self, path: str, mode: int) -> bool:
        """SITE CHMOD, which many FTP servers do not offer: False when refused."""
        try:
            self.run("chmod", lambda client: client.voidcmd(f"SITE CHMOD {mode:o} {path}"))
        except ftplib.Error:
            return False
        return True

    def makedirs(self, path: str) -> None:
        current = ""
        for part in [p for p in path.split("/") if p]:
            current += "/" + part
            with contextlib.suppress(ftplib.error_perm):
                self.run("making folders", functools.partial(ftplib.FTP.mkd, dirname=current))

    def remove(self, path: str) -> None:
        """Delete a file, or an empty folder; a path already gone is no error."""
        try:
            self.run("deleting", lambda client: client.delete(path))
        except ftplib.error_perm:
            with contextlib.suppress(ftplib.error_perm):
                self.run("deleting", lambda client: client.rmd(path))

    def listing(self, root: str) -> dict[str, tuple[int, str]] | None:
        """Every file under ``root`` (relative path -> (size, modify) as MLSD reports them),
        Slipway's own files left out; None when the server has no MLSD."""
        found: dict[str, tuple[int, str]] = {}
        folders = [""]
        while folders:
            relative = folders.pop()
            where = posixpath.join(root, relative) if relative else root
            try:
                entries = self.run("listing", functools.partial(_mlsd, path=where))
            except ftplib.error_perm as exc:
                if str(exc).startswith(("500", "501", "502")):
                    return None
                continue
            for name, facts in entries:
                if name in (".", "..") or (not relative and name in _OWN_FILES):
                    continue
                path = f"{relative}/{name}" if relative else name
                kind = facts.get("type", "")
                if kind == "dir":
                    folders.append(path)
                elif kind == "file" and not name.endswith(TEMPORARY_SUFFIX):
                    found[path] = (int(facts.get("size", "0") or 0), facts.get("modify", ""))
        return found


def _mlsd(client: ftplib.FTP, path: str) -> list[tuple[str, dict[str, str]]]:
    return list(client.mlsd(path, ["type", "size", "modify"]))


_OWN_FILES = frozenset({MANIFEST_FILE, LISTING_FILE, LOCK_DIR})


# --------------------------------------------------------------------------- the lock


def take_lock(
    session: Session,
    root: str,
    *,
    owner: str,
    holder: str,
    stale_after: int,
    owner_finished: Callable[[str], bool],
) -> tuple[str, ...]:
    """Take ``<root>/.slipway-lock`` (MKD is the atomic step: it fails when the folder
    exists), then write who holds it in ``info``. A lock of this owner, of a finished
    deployment, older than ``stale_after`` seconds or naming no owner is taken over.
    Answers notes for the log; raises LockHeld naming the holder."""
    lock = posixpath.join(root, LOCK_DIR)
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    body = (
        f"owner={owner}\nholder={' '.join(holder.split())}\nsince={since}\nat={int(time.time())}\n"
    )
    try:
        session.run("locking", lambda client: client.mkd(lock))
        note = ""
    except ftplib.error_perm:
        values = _lock_values(session, root)
        found = values.get("owner", "")
        age = max(0, int(time.time()) - int(values.get("at", "0") or 0))
        if found == owner:
            note = ""
        elif not found:
            note = "Broke a lock without an owner"
        elif not found.endswith(LEFT_RUNNING_SUFFIX) and owner_finished(found):
            note = f"Took over the lock of {found}, which has finished"
        elif age > stale_after:
            note = f"Took over a stale lock of {found} ({age} s old)"
        else:
            error = LockHeld(
                f"{root} on {session.host} is locked by another deployment: "
                f"{values.get('holder') or found} since {values.get('since', '?')}. If nothing "
                f"is deploying, remove {lock} on the server."
            )
            error.owner = found
            raise error from None
    session.put_bytes(f"{lock}/info", body.encode())
    return (note,) if note else ()


def _lock_values(session: Session, root: str) -> dict[str, str]:
    text = (session.read(posixpath.join(root, LOCK_DIR, "info")) or b"").decode("utf-8", "replace")
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key not in values:
            values[key] = value
    return values


def read_lock(session: Session, root: str) -> release.LockInfo | None:
    """Who holds ``<root>/.slipway-lock`` (owner "" when it names none); None if unlocked."""
    lock = posixpath.join(root, LOCK_DIR)
    try:
        session.run("reading the lock", lambda client: client.sendcmd(f"MLST {lock}"))
    except ftplib.error_perm:
        return None
    values = _lock_values(session, root)
    return release.LockInfo(
        owner=values.get("owner", ""),
        holder=values.get("holder", ""),
        since=values.get("since", ""),
        age_seconds=max(0, int(time.time()) - int(values.get("at", "0") or 0)),
    )


def break_lock(session: Session, root: str, *, owner: str) -> bool:
    """Remove the lock if ``owner`` holds it. True when removed."""
    if _lock_values(session, root).get("owner", "") != owner:
        return False
    lock = posixpath.join(root, LOCK_DIR)
    session.remove(f"{lock}/info")
    session.remove(lock)
    return True


# --------------------------------------------------------------------------- deploying


def refusals(
    spec: DeploySpec, server: ServerSpec, *, kind: str = "an FTP server", protocol: str = "FTP"
) -> list[str]:
    """What the deployment asks of ``server`` that a target without symlinks or a shell
    cannot give (FTP servers, and S3 buckets: ``kind`` "an S3 bucket", ``protocol`` "S3"),
    one sentence each naming the setting (empty: nothing)."""
    from builds.engine.specs import STAGE_AFTER_SWITCH, STAGE_BEFORE_SWITCH, STAGE_BEFORE_TRANSFER

    found: list[str] = []
    if server.atomic:
        found.append(
            f"{server.name} is {kind}: it cannot switch releases atomically (no "
            "symlinks); turn the server's `atomic` setting off"
        )
    if spec.shared_paths:
        found.append(
            f"{server.name} is {kind}: shared paths are linked into releases with "
            f"symlinks, which {protocol} cannot make; remove the project's `shared_paths` "
            f"({', '.join(spec.shared_paths)}) or deploy to an SSH server"
        )
    stages = (STAGE_BEFORE_TRANSFER, STAGE_BEFORE_SWITCH, STAGE_AFTER_SWITCH)
    commands = [c for c in spec.commands if c.stage in stages and c.applies_to(server)]
    if commands:
        found.append(
            f"{server.name} is {kind}: commands cannot run there (no shell); the "
            f"project's `commands` include {commands[0].command!r}: limit them to other "
            "servers or remove them"
        )
    checks = [c for c in spec.health_checks if c.kind == "command" and c.applies_to(server.id)]
    if checks:
        found.append(
            f"{server.name} is {kind}: command health checks cannot run there (no "
            f"shell); the project's `health_checks` include {checks[0].command!r}: limit it "
            "to other servers, or check over HTTP"
        )
    return found


def deliver(
    spec: DeploySpec,
    server: ServerSpec,
    output: BuildOutput,
    reporter: Reporter,
    result: ServerResult,
    *,
    rollback_to: str = "",
) -> None:
    """Bring ``server.ftp``'s deploy path to ``output``: lock, read the manifest and listing
    kept there, send what the change set and the drift since the last deployment say, delete
    what is gone, write config files, the manifest and a new listing, unlock.
    ``rollback_to``: the name of the earlier release ``output`` is a build of (said in the
    log: FTP has no symlink to switch back, so the difference is uploaded again).

    Raises UserError for what FTP cannot give (``refusals``), a symlink in the build, and
    the errors of ``connect`` and the transfers (TransferFailed, PermissionDenied, DiskFull,
    LockHeld)."""
    from builds.engine.build import generated_rules
    from builds.engine.rollout import drifted_paths, with_drift

    endpoint = server.ftp
    assert endpoint is not None
    problems = refusals(spec, server)
    if problems:
        raise UserError("; ".join(problems))
    manifest = output.manifest
    links = [p for p in manifest if manifest[p].kind == "symlink"]
    if links:
        raise UserError(
            f"{server.name} is an FTP server, which cannot make symlinks; the build has "
            f"{len(links)}: {', '.join(display_path(p) for p in links[:5])}"
        )
    unsendable = [p for p in manifest if not _sendable(p)]
    if unsendable:
        raise UserError(
            f"{server.name} is an FTP server, whose commands cannot carry a line break or a "
            f"name that is not UTF-8; the build has {len(unsendable)} such paths: "
            f"{', '.join(display_path(p) for p in unsendable[:5])}"
        )
    root = release.validate_deploy_path(server.deploy_path)

    def log(text: str) -> None:
        reporter.log("system", text, server.id)

    with reporter.step("connect", server.id):
        session = Session(endpoint, log)
    owner = lock_owner(spec.deployment_id)
    try:
        session.makedirs(root)
        for note in take_lock(
            session,
            root,
            owner=owner,
            holder=f"Slipway deployment #{spec.deployment_id} by {spec.deployer or 'unknown'}",
            stale_after=spec.lock_stale_after,
            owner_finished=spec.lock_owner_finished,
        ):
            log(note)
        variables = in_place_variables(spec, server, root, output.revision)
        with reporter.step("transfer", server.id):
            old = None if spec.full else _remote_manifest(session, root) or server.live_manifest
            generated = generated_rules(spec.build)
            drifted: tuple[str, ...] = ()
            if old is not None:
                drifted = _drift(session, root)
            prepared = release.Prepared(live=None, copied=True, drifted=drifted)
            changes = with_drift(diff(old, manifest), prepared, manifest, generated)
            shown = drifted_paths(prepared, generated)
            refuse_drift(spec.on_drift, shown, server=server.name, where="the deploy path")
            if shown:
                log(
                    f"{len(shown)} paths were changed on the server since the last deployment "
                    f"finished (by hand, or by the application); they are restored: "
                    f"{', '.join(display_path(p) for p in shown[:5])}"
                )
            if rollback_to:
                log(
                    f"Rolling back to {rollback_to}: FTP has no symlink to switch, so the files "
                    "that differ from that release's manifest are uploaded again and those it "
                    "did not have are deleted"
                )
            result.changes = changes
            log(f"{changes.summary()} (in place over {'FTPS' if endpoint.tls else 'FTP'})")
            _apply(
                session,
                endpoint,
                root,
                output,
                changes.paths_to_send,
                changes.deleted,
                reporter,
                server.id,
                generated,
            )
            for config in spec.config_files:
                if config.server_ids and server.id not in config.server_ids:
                    continue
                path = posixpath.join(
                    root, release.validate_relative_path(config.path, "config_files")
                )
                session.makedirs(posixpath.dirname(path))
                session.put_bytes(path, substitute(config.body, variables).encode())
                if not session.chmod(path, int(config.file_mode, 8)):
                    log(f"{session.host} has no SITE CHMOD: {config.path} keeps the server's mode")
            session.put_bytes(posixpath.join(root, MANIFEST_FILE), manifest.to_json())
            listing = session.listing(root)
            if listing is None:
                log(f"{session.host} has no MLSD: files changed on the server cannot be found")
            else:
                session.put_bytes(
                    posixpath.join(root, LISTING_FILE),
                    json.dumps(listing, sort_keys=True).encode(),
                )
        result.manifest = manifest
        # No release directory: the name records the revision that went live (a rollback
        # puts the earlier release's own name back).
        result.release = rollback_to or release.release_name(output.revision, spec.started_at)
    finally:
        with contextlib.suppress(Exception):
            break_lock(session, root, owner=owner)
        session.close()


def _sendable(path: str) -> bool:
    if "\r" in path or "\n" in path:
        return False
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # a surrogate-escaped byte: not UTF-8 on disk
        return False
    return True


def _remote_manifest(session: Session, root: str) -> Manifest | None:
    body = session.read(posixpath.join(root, MANIFEST_FILE))
    if body is None:
        return None
    try:
        manifest = Manifest.from_json(body)
        # Others can write there: a path leaving the deploy path would have us delete
        # outside it. Such a manifest is ignored (full upload).
        for path in manifest:
            release.validate_relative_path(path, "path")
    except (ValueError, EngineError):
        return None
    return manifest


def _drift(session: Session, root: str) -> tuple[str, ...]:
    """Files whose size or modification time is not what the listing taken at the end of
    the last deployment says, files gone and files added since."""
    body = session.read(posixpath.join(root, LISTING_FILE))
    if body is None:
        return ()
    try:
        recorded = {str(k): (int(v[0]), str(v[1])) for k, v in json.loads(body).items()}
    except (ValueError, TypeError, IndexError, AttributeError):
        return ()
    now = session.listing(root)
    if now is None:
        return ()
    changed = {p for p, facts in recorded.items() if now.get(p) != facts}
    changed |= set(now) - set(recorded)
    safe: list[str] = []
    for path in sorted(changed):
        try:
            safe.append(release.validate_relative_path(path, "path"))
        except InvalidInput:
            continue
    return tuple(safe)


def _apply(
    session: Session,
    endpoint: FtpEndpoint,
    root: str,
    output: BuildOutput,
    send: Sequence[str],
    deleted: Sequence[str],
    reporter: Reporter,
    server_id: int,
    generated: ExcludeRules | None,
) -> None:
    manifest = output.manifest
    # Deletions first (deepest first), so a path that changed kind can be recreated.
    for path in sorted(deleted, key=lambda p: p.count("/"), reverse=True):
        if not is_generated(path, generated):
            session.remove(posixpath.join(root, path))
    folders = sorted(
        {posixpath.dirname(p) for p in send if posixpath.dirname(p)}
        | {p for p in send if manifest[p].kind == "dir"}
    )
    made: set[str] = set()
    for folder in reversed(folders):  # deepest first: its parents are made with it
        if folder not in made:
            session.makedirs(posixpath.join(root, folder))
            made.update(_parents(folder))
    files = [p for p in send if manifest[p].kind == "file"]
    _upload(session, endpoint, root, output.root, manifest, files, reporter, server_id)
    if not files and not deleted:
        reporter.log("system", "Nothing changed", server_id)


def _parents(folder: str) -> Iterator[str]:
    while folder:
        yield folder
        folder = posixpath.dirname(folder)


def _upload(
    session: Session,
    endpoint: FtpEndpoint,
    root: str,
    source_root: Path,
    manifest: Manifest,
    files: Sequence[str],
    reporter: Reporter,
    server_id: int,
) -> None:
    """Send ``files`` on at most ``endpoint.connections`` connections at once."""
    total_bytes = sum(manifest[p].size for p in files)
    done = {"files": 0, "bytes": 0}
    lock = threading.Lock()
    local = threading.local()
    sessions: list[Session] = []
    last_report = [0.0]

    def own() -> Session:
        if not hasattr(local, "session"):
            local.session = Session(endpoint, session._log)
            with lock:
                sessions.append(local.session)
        return local.session  # type: ignore[no-any-return]

    def upload(path: str) -> None:
        reporter.check_cancelled()
        local_path = source_root / path
        own().put(posixpath.join(root, path), lambda: open(local_path, "rb"))  # noqa: SIM115
        with lock:
            done["files"] += 1
            done["bytes"] += manifest[path].size
            now = time.monotonic()
            if now - last_report[0] > 0.25 or done["files"] == len(files):
                last_report[0] = now
                reporter.progress(server_id, done["files"], len(files), done["bytes"], total_bytes)

    if not files:
        return
    try:
        with ThreadPoolExecutor(max_workers=min(endpoint.connections, len(files))) as pool:
            futures = [pool.submit(upload, path) for path in files]
            try:
                for future in futures:
                    future.result()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
    finally:
        for each in sessions:
            each.close()
