"""The SSH transport: one pinned, authenticated connection per server per deployment.

Host keys are pinned, never learnt: ``connect`` compares the key the server offers with the
fingerprint stored for the server *before* it sends any credential, and refuses on a mismatch.
Nothing is read from ``~/.ssh`` (no ``known_hosts``, no default keys) and no agent is asked;
the only credentials used are the ones in the ``Endpoint``.

Commands are strings run by the remote ``sh -c``: callers quote every value they interpolate,
with ``shlex.quote``. Each command runs in a process group of its own (``setsid``), whose id it
reports before it starts; a command that times out or is cancelled is stopped by killing that
whole group over the same connection, and ``run`` returns only once the group is gone (or
records that it could not be stopped, see ``Connection.left_running``).

A server behind a bastion names a jump host (``Endpoint.jump``, itself an ``Endpoint`` with a
pinned host key of its own). The connection is then tunnelled: an authenticated connection to
the jump host, a ``direct-tcpip`` channel through it to the target (the jump host resolves and
reaches the target's address), and the target's SSH session inside that channel; no ssh
config or ``ProxyJump`` of the system is involved. ``JumpHosts`` keeps one connection per jump
host for a deployment, which every server behind it shares. Errors say which hop failed.

A ``Connection`` is used by one thread at a time; paramiko's own transport thread does the I/O.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import io
import logging
import os
import re
import select
import shlex
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType

import paramiko

from builds.engine.errors import (
    AuthenticationRefused,
    CommandFailed,
    CommandTimedOut,
    DiskFull,
    EngineError,
    HostKeyMismatch,
    HostKeyNotTrusted,
    HostUnreachable,
    InternalError,
    InvalidInput,
    PermissionDenied,
    TransferFailed,
    UserError,
)
from builds.engine.lines import LineSplitter

logger = logging.getLogger(__name__)

#: Receives each output line as ``on_line(stream, text)``, stream being "stdout" or "stderr".
LineCallback = Callable[[str, str], None]

# A large receive window lets the server stream build output and tar listings without waiting
# for a window adjustment every 2 MiB; paramiko's default (2 MiB) halves throughput on a WAN.
TRANSPORT_WINDOW_SIZE = 8 * 1024 * 1024
# What we accept per packet from the server; every SSH implementation must accept 32 KiB, and
# paramiko reads larger packets fine, so fewer, bigger packets cost less Python per byte.
TRANSPORT_MAX_PACKET_SIZE = 64 * 1024
KEEPALIVE_INTERVAL_SECONDS = 15
#: Lines of output kept for the error message of a failed command.
TAIL_LINES = 20

_READ_SIZE = 64 * 1024
# While the server's window is full, send() gives up after this long so that we can read the
# command's output meanwhile: a command blocked on writing stderr would otherwise never read
# its stdin again, and both sides would wait for each other.
_SEND_WAIT_SECONDS = 0.2
# Wake-up period of the output loop even when nothing arrives, so a deadline is honoured and a
# missed wake-up can never hang a deployment.
_POLL_SECONDS = 1.0
# stdout/stderr kept in CommandResult; on_line still sees every line beyond this.
_CAPTURE_LIMIT_CHARS = 1024 * 1024
# The first line a wrapped command prints on stdout: the id of the process group it runs in.
_GROUP_HEADER = re.compile(r"slipway-pgid(?: (?P<pgid>[0-9]+))?")
# Runs "$1" in a new session (so a process group of its own, with everything it starts), after
# printing that group's id. ``setsid`` is started as a child (not exec'd), so it is never a
# group leader and makes the session itself instead of forking (util-linux and busybox alike);
# the trailing ``exit`` keeps shells from exec'ing it. Without ``setsid`` (not Linux), the
# command runs in the shell's own group and only that shell's id is known.
# With a second argument, the group's id and its leader's start time (``/proc``, field 22:
# a reused id is told apart) are also appended to that file, so that whoever takes a lock
# over from a deployment whose worker died can stop what it left running (release.py).
_GROUP_WRAPPER = (
    "if command -v setsid >/dev/null 2>&1; then "
    """setsid sh -c 'echo "slipway-pgid $$"; if [ -n "$2" ]; then """
    """{ echo "$$ $(cut -d" " -f22 /proc/$$/stat)" >> "$2"; } 2>/dev/null || :; fi; """
    """exec sh -c "$1"' sh "$1" "${2:-}"; """
    'else echo slipway-pgid; sh -c "$1"; fi; exit $?'
)
# How long the group of a stopped command may take to go after SIGKILL (processes in
# uninterruptible sleep on a hung NFS mount...).
_STOP_WAIT_SECONDS = 10
# How long to wait for the group header of a command that is stopped right after it started.
_HEADER_WAIT_SECONDS = 5.0
# After a channel closes without an exit status, how long to let paramiko's transport thread
# finish noticing that the whole connection is gone (it closes channels before it marks
# itself inactive).
_TRANSPORT_DEATH_GRACE_SECONDS = 0.5
# Why a jump host refused to open a direct-tcpip channel (RFC 4254, section 5.1).
_OPEN_ADMINISTRATIVELY_PROHIBITED = 1
_OPEN_CONNECT_FAILED = 2


def fingerprint(key: paramiko.PKey) -> str:
    """The key's fingerprint exactly as ``ssh-keygen -l`` prints it: ``SHA256:<base64>``."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def format_address(hostname: str, port: int) -> str:
    """``host:port``, with IPv6 literals bracketed so the port stays unambiguous."""
    if ":" in hostname:
        return f"[{hostname}]:{port}"
    return f"{hostname}:{port}"


@dataclass(frozen=True)
class HostKey:
    """The public key a server offered: what a user is asked to trust."""

    key_type: str
    fingerprint: str
    #: "<type> <base64>", as in a known_hosts line (what a pinned repository key stores).
    public_key: str = ""


#: A fingerprint as ``ssh-keygen -l`` prints it.
FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")
_FINGERPRINT_IN_TEXT = re.compile(r"(?<![A-Za-z0-9+/])SHA256:[A-Za-z0-9+/]{43}(?![A-Za-z0-9+/])")


def fingerprint_from(text: str, *, field: str = "fingerprint") -> str:
    """The ``SHA256:...`` fingerprint in what a person pasted: the fingerprint alone, or the
    whole line ``ssh-keygen -lf`` prints (``256 SHA256:... root@host (ED25519)``), or ssh's
    "ED25519 key fingerprint is SHA256:...". ``=`` padding is dropped (OpenSSH prints none).

    Raises InvalidInput naming ``field`` when it holds no SHA256 fingerprint (an MD5 one gets
    the command that prints the SHA256 one) or two different ones."""
    unpadded = re.sub(r"(SHA256:[A-Za-z0-9+/]{43})=", r"\1", text)
    found: set[str] = {match[0] for match in _FINGERPRINT_IN_TEXT.finditer(unpadded)}
    if len(found) == 1:
        return found.pop()
    if len(found) > 1:
        raise InvalidInput(field, "holds more than one fingerprint: paste the one for this key.")
    if "MD5:" in text or re.search(r"(?:[0-9a-f]{2}:){15}[0-9a-f]{2}", text):
        raise InvalidInput(
            field,
            "is an MD5 fingerprint: Slipway needs the SHA256 one, which "
            "`ssh-keygen -E sha256 -lf /etc/ssh/ssh_host_ed25519_key.pub` prints on the server.",
        )
    raise InvalidInput(
        field,
        "must be a SHA256 fingerprint as `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` "
        "prints it on the server (SHA256: then 43 characters; the whole line is fine too).",
    )


def public_key_fingerprint(public_key: str) -> str:
    """The fingerprint of ``"<type> <base64>"`` (a known_hosts key); "" when unreadable."""
    parts = public_key.split()
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except (IndexError, ValueError):
        return ""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def confirm_host_key(
    hostname: str,
    port: int,
    fingerprint: str,
    timeout: float = 10.0,
    *,
    jump: Endpoint | None = None,
) -> HostKey:
    """The key ``hostname:port`` offers now, when its fingerprint is ``fingerprint``: the
    "Trust this key" step for servers and repositories alike. With ``jump``, the key is read
    through that jump host (whose own key must be pinned and which must accept its login).

    Raises InvalidInput naming the field ``fingerprint`` when it is malformed, when the host
    cannot be reached or probed (the reason; ours go to the worker's log), or when it offers
    another key (both named).
    """
    fingerprint = fingerprint_from(fingerprint)
    address = format_address(hostname, port)
    try:
        offered = probe_host_key(hostname, port, timeout, jump=jump)
    except EngineError as exc:
        if exc.user_facing:
            raise InvalidInput("fingerprint", f"cannot be checked: {exc}") from None
        logger.warning("Probing %s failed", address, exc_info=True)
        raise InvalidInput(
            "fingerprint", f"cannot be checked: probing {address} failed on Slipway's side."
        ) from None
    except Exception as exc:  # a network library's surprise must not become a 500
        logger.warning("Probing %s failed", address, exc_info=True)
        raise InvalidInput("fingerprint", f"cannot be checked: {address}: {exc}") from None
    if not hmac.compare_digest(fingerprint.encode(), offered.fingerprint.encode()):
        raise InvalidInput(
            "fingerprint",
            f"{fingerprint} is not the key {address} offers now, which is "
            f"{offered.key_type} {offered.fingerprint}.",
        )
    return offered


@dataclass(frozen=True)
class Endpoint:
    """Where and as whom to connect. Secrets are kept out of ``repr`` (logs, tracebacks)."""

    hostname: str
    username: str
    port: int = 22
    private_key: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    #: The pinned ``SHA256:...`` fingerprint; None until a user has trusted the server's key.
    host_key_fingerprint: str | None = None
    connect_timeout: float = 10.0
    #: The jump host (bastion) to tunnel through, None to connect directly. It logs in with a
    #: key, pins its own host key, and has no jump host of its own.
    jump: Endpoint | None = None

    def __post_init__(self) -> None:
        if not self.hostname.strip():
            raise InvalidInput("hostname", "is empty")
        if not self.username.strip():
            raise InvalidInput("username", "is empty")
        if not 1 <= self.port <= 65535:
            raise InvalidInput("port", f"{self.port} is not between 1 and 65535")
        if self.connect_timeout <= 0:
            raise InvalidInput("connect_timeout", "must be positive")
        pinned = self.host_key_fingerprint
        if pinned is not None and not pinned.startswith("SHA256:"):
            raise InvalidInput(
                "host_key_fingerprint",
                "must be a SHA256 fingerprint as `ssh-keygen -l` prints it (SHA256:...)",
            )
        if self.jump is not None and self.jump.jump is not None:
            raise InvalidInput("jump_hostname", "a jump host cannot have a jump host of its own")

    @property
    def address(self) -> str:
        return format_address(self.hostname, self.port)

    @property
    def label(self) -> str:
        """How errors name this hop: ``host:port``, or ``the target host:port`` behind a
        jump host."""
        return self.address if self.jump is None else f"the target {self.address}"


@dataclass(frozen=True)
class CommandResult:
    command: str
    #: -1 when the server sent no exit status: the command was killed by a signal.
    exit_code: int
    #: Captured output, up to about a megabyte per stream (see ``truncated``).
    stdout: str
    stderr: str
    #: The last lines of both streams, in arrival order.
    tail: tuple[str, ...]
    truncated: bool
    duration: float


def load_private_key(text: str) -> paramiko.PKey:
    """Parse an unencrypted ed25519, ECDSA or RSA private key (OpenSSH or PEM text)."""
    # Each paramiko key class only parses its own type, and the text does not always say
    # which one it holds (the OpenSSH format names the type inside the base64 body).
    key_classes: tuple[type[paramiko.PKey], ...] = (
        paramiko.Ed25519Key,
        paramiko.ECDSAKey,
        paramiko.RSAKey,
    )
    for key_class in key_classes:
        try:
            return key_class.from_private_key(io.StringIO(text))
        except paramiko.PasswordRequiredException:
            raise InvalidInput(
                "private_key", "is protected by a passphrase; give Slipway an unencrypted key"
            ) from None
        except (paramiko.SSHException, ValueError, TypeError, IndexError):
            continue
    raise InvalidInput(
        "private_key", "is not an ed25519, ECDSA or RSA private key in OpenSSH or PEM format"
    )


def probe_host_key(
    hostname: str, port: int = 22, timeout: float = 10.0, *, jump: Endpoint | None = None
) -> HostKey:
    """Which host key does the server offer? No credential is sent to it.

    This is the "Test connection / Trust this key" step: show the result to the user, who
    compares it with ``ssh-keygen -lf`` on the server, then pin it. With ``jump``, the
    server is reached through that jump host, which is logged in to (its key pinned) first.
    """
    if jump is None:
        transport, host_key = _start_transport(hostname, port, timeout)
        transport.close()
        return host_key
    jump_transport = open_jump(jump)
    try:
        target = Endpoint(
            hostname=hostname, username="-", port=port, connect_timeout=timeout, jump=jump
        )
        channel = _tunnel(jump_transport, target)
        transport, host_key = _start_transport(
            hostname, port, timeout, sock=channel, label=target.label
        )
        transport.close()
        return host_key
    finally:
        jump_transport.close()


def connect(endpoint: Endpoint, *, jumps: JumpHosts | None = None) -> Connection:
    """Open the connection, check the pinned host key, then authenticate.

    Behind a jump host (``endpoint.jump``), the jump host's connection comes from ``jumps``
    (shared with the other servers behind it) or, without ``jumps``, is opened for this
    connection alone and closed with it.

    Raises HostUnreachable, HostKeyNotTrusted, HostKeyMismatch, AuthenticationRefused or
    InvalidInput (an unreadable private key, found before any network traffic); an error of
    the jump host's hop names the jump host, one of the last hop names the target.
    """
    client_key = (
        load_private_key(endpoint.private_key) if endpoint.private_key is not None else None
    )
    if client_key is None and endpoint.password is None:
        raise InvalidInput("private_key", "is missing and no password is set either")

    own_jump: paramiko.Transport | None = None
    sock: paramiko.Channel | None = None
    if endpoint.jump is not None:
        if jumps is not None:
            jump_transport = jumps.transport(endpoint.jump)
        else:
            jump_transport = own_jump = open_jump(endpoint.jump)
    try:
        if endpoint.jump is not None:
            sock = _tunnel(jump_transport, endpoint)
        transport, host_key = _start_transport(
            endpoint.hostname,
            endpoint.port,
            endpoint.connect_timeout,
            sock=sock,
            label=endpoint.label,
        )
        try:
            _verify_host_key(endpoint, host_key)
            _authenticate(transport, endpoint, client_key)
            transport.set_keepalive(KEEPALIVE_INTERVAL_SECONDS)
        except BaseException:
            transport.close()
            raise
    except BaseException:
        if own_jump is not None:
            own_jump.close()
        raise
    return Connection(endpoint, transport, host_key, own_jump=own_jump)


def open_jump(jump: Endpoint) -> paramiko.Transport:
    """An authenticated connection to the jump host ``jump`` (its key pinned), ready to open
    tunnels. Raises as ``connect`` does, every message naming "the jump host host:port"."""
    label = f"the jump host {jump.address}"
    if jump.private_key is None:
        raise InvalidInput("jump_private_key", "is missing: a jump host logs in with a key")
    try:
        client_key = load_private_key(jump.private_key)
    except InvalidInput as exc:
        raise InvalidInput("jump_private_key", str(exc).partition(": ")[2]) from None
    transport, host_key = _start_transport(
        jump.hostname, jump.port, jump.connect_timeout, label=label
    )
    try:
        _verify_host_key(jump, host_key, label=label)
        _authenticate(transport, jump, client_key, label=label)
        transport.set_keepalive(KEEPALIVE_INTERVAL_SECONDS)
    except BaseException:
        transport.close()
        raise
    return transport


class JumpHosts:
    """The jump-host connections of one deployment: servers that name the same jump host
    (same address, login and key) share one connection to it, each with a tunnel of its own.
    A jump host that could not be used (refused the key, offered another host key, did not
    answer) is not asked again by the deployment's other servers: they get the same error,
    so that twenty servers behind a bastion never cost twenty failed logins there (which
    fail2ban or sshd's PerSourcePenalties punish). Thread-safe; ``close`` closes them all
    (the tunnels, and so the servers' connections, with them)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._opening: dict[Endpoint, threading.Lock] = {}
        self._transports: dict[Endpoint, paramiko.Transport] = {}
        self._failed: dict[Endpoint, UserError] = {}
        self._closed = False

    def __enter__(self) -> JumpHosts:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def transport(self, jump: Endpoint) -> paramiko.Transport:
        """The live connection to ``jump``, opened (once, whoever asks at the same time)
        when there is none or it died. Raises as ``open_jump``."""
        with self._lock:
            if self._closed:
                raise InternalError("the deployment's jump-host connections are closed")
            gate = self._opening.setdefault(jump, threading.Lock())
        with gate:
            with self._lock:
                existing = self._transports.get(jump)
                failed = self._failed.get(jump)
            if failed is not None:
                raise failed
            if existing is not None and existing.is_active():
                return existing
            try:
                opened = open_jump(jump)
            except UserError as exc:
                with self._lock:
                    self._failed[jump] = exc
                raise
            with self._lock:
                if self._closed:
                    opened.close()
                    raise InternalError("the deployment's jump-host connections are closed")
                self._transports[jump] = opened
            return opened

    def close(self) -> None:
        with self._lock:
            self._closed = True
            transports = list(self._transports.values())
            self._transports.clear()
        for transport in transports:
            transport.close()


def _tunnel(jump_transport: paramiko.Transport, endpoint: Endpoint) -> paramiko.Channel:
    """A ``direct-tcpip`` channel from the jump host to ``endpoint``'s address. Raises
    HostUnreachable naming the target and the jump host."""
    assert endpoint.jump is not None
    target, jump = endpoint.address, endpoint.jump.address
    unreachable = f"The target {target} could not be reached through the jump host {jump}"
    try:
        return jump_transport.open_channel(
            "direct-tcpip",
            (endpoint.hostname, endpoint.port),
            ("127.0.0.1", 0),
            window_size=TRANSPORT_WINDOW_SIZE,
            max_packet_size=TRANSPORT_MAX_PACKET_SIZE,
            timeout=endpoint.connect_timeout,
        )
    except paramiko.ChannelException as exc:
        if exc.code == _OPEN_ADMINISTRATIVELY_PROHIBITED:
            reason = (
                "it refuses to forward connections (AllowTcpForwarding or PermitOpen in "
                "its sshd_config)"
            )
        elif exc.code == _OPEN_CONNECT_FAILED:
            reason = (
                "it could not connect there (nothing listens, a firewall, or the name does "
                "not resolve on the jump host)"
            )
        else:
            reason = exc.text or f"channel refused with code {exc.code}"
        raise HostUnreachable(f"{unreachable}: {reason}.") from exc
    except (paramiko.SSHException, OSError, EOFError) as exc:
        # open_channel raises a bare SSHException when the jump host does not answer in time.
        raise HostUnreachable(
            f"{unreachable}: {exc or 'no answer'} (timeout {endpoint.connect_timeout:g} s)."
        ) from exc


class ConnectionPool:
    """Connections kept open between uses (one deployment's, then the next one's to the same
    server), so that a deployment soon after another skips the TCP and SSH handshakes and
    the login.

    A connection is only ever handed to a caller with an equal ``Endpoint``: the same host,
    port and user, the same credentials and the same pinned host key, which it was checked
    against when it was opened. Before it is handed out, one round trip (a session opened
    and closed) shows it still works; one that does not is closed and a new one opened. A
    connection goes back only while its transport is active and it left no stopped command
    behind (``left_running``); it is closed after ``idle_seconds`` unused, and at most
    ``max_idle`` are kept (the oldest go first). A process that forked (a prefork worker)
    starts with an empty pool: its parent's connections are not its own.

    A key removed from the server's authorized_keys does not end sessions already open
    (as with OpenSSH's ControlPersist): for up to ``idle_seconds`` a kept connection still
    works. The keepalive (``KEEPALIVE_INTERVAL_SECONDS``) keeps it from being dropped by
    NAT and firewalls meanwhile.
    """

    def __init__(self, *, idle_seconds: float = 60.0, max_idle: int = 64) -> None:
        if idle_seconds <= 0 or max_idle < 1:
            raise InvalidInput("idle_seconds", "must be positive, and max_idle at least 1")
        self.idle_seconds = idle_seconds
        self.max_idle = max_idle
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        # (endpoint, connection, monotonic time it was given back), oldest first.
        self._idle: list[tuple[Endpoint, Connection, float]] = []
        self._pid = os.getpid()
        self._sweeper: threading.Thread | None = None
        #: Connections opened by this pool, and handed out again, since it was made.
        self.opened = 0
        self.reused = 0

    def take(self, endpoint: Endpoint) -> Connection:
        """A working connection for ``endpoint``: a kept one, or a new one (``connect``'s
        errors)."""
        while True:
            with self._lock:
                self._forget_if_forked()
                found = next(
                    (i for i in range(len(self._idle) - 1, -1, -1) if self._idle[i][0] == endpoint),
                    None,
                )
                kept = self._idle.pop(found)[1] if found is not None else None
            if kept is None:
                break
            if kept.answers():
                with self._lock:
                    self.reused += 1
                return kept
            kept.close()
        connection = connect(endpoint)
        with self._lock:
            self.opened += 1
        return connection

    def give_back(self, connection: Connection) -> None:
        """Keep ``connection`` for the next ``take`` of its endpoint, or close it when it
        cannot be kept (see the class docstring). Never raises."""
        if not connection.is_active or connection.left_running:
            connection.close()
            return
        closing: list[Connection] = []
        with self._lock:
            self._forget_if_forked()
            self._idle.append((connection.endpoint, connection, time.monotonic()))
            while len(self._idle) > self.max_idle:
                closing.append(self._idle.pop(0)[1])
            if self._sweeper is None or not self._sweeper.is_alive():
                self._sweeper = threading.Thread(
                    target=self._sweep, name="slipway-ssh-pool", daemon=True
                )
                self._sweeper.start()
            self._wake.notify()
        for old in closing:
            old.close()

    def close_all(self) -> None:
        """Close every kept connection."""
        with self._lock:
            kept, self._idle = self._idle, []
        for _endpoint, connection, _since in kept:
            connection.close()

    def __len__(self) -> int:
        with self._lock:
            return len(self._idle)

    def _forget_if_forked(self) -> None:
        if self._pid != os.getpid():
            # The parent's sockets: closing them here would end its sessions.
            self._idle = []
            self._sweeper = None
            self._pid = os.getpid()

    def _sweep(self) -> None:
        with self._lock:
            while self._idle:
                now = time.monotonic()
                expired = [item for item in self._idle if now - item[2] >= self.idle_seconds]
                if expired:
                    self._idle = [item for item in self._idle if item not in expired]
                    self._lock.release()
                    try:
                        for _endpoint, connection, _since in expired:
                            connection.close()
                    finally:
                        self._lock.acquire()
                    continue
                oldest = min(item[2] for item in self._idle)
                self._wake.wait(max(0.05, oldest + self.idle_seconds - now))
            self._sweeper = None


class Connection:
    """An authenticated SSH connection; runs commands and hands out one SFTP client."""

    def __init__(
        self,
        endpoint: Endpoint,
        transport: paramiko.Transport,
        host_key: HostKey,
        *,
        own_jump: paramiko.Transport | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.host_key = host_key
        self._transport = transport
        # The jump host's connection opened for this connection alone (not a shared one).
        self._own_jump = own_jump
        self._sftp: paramiko.SFTPClient | None = None
        #: Commands stopped (timed out, cancelled) whose processes could not be confirmed gone,
        #: each as "`command` (process group N)": whoever holds a lock on the server for them
        #: keeps it.
        self.left_running: list[str] = []

    def __repr__(self) -> str:
        return f"<Connection {self.endpoint.username}@{self.endpoint.address}>"

    def __enter__(self) -> Connection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def is_active(self) -> bool:
        return self._transport.is_active()

    def answers(self) -> bool:
        """Whether the server still answers on this connection: one session opened and
        closed (one round trip), no command run."""
        if not self._transport.is_active():
            return False
        try:
            channel = self._transport.open_session(timeout=self.endpoint.connect_timeout)
        except (paramiko.SSHException, OSError, EOFError):
            return False
        _close_quietly(channel)
        return True

    def run(
        self,
        command: str,
        *,
        on_line: LineCallback | None = None,
        timeout: float | None = None,
        stdin: bytes | None = None,
        check: bool = True,
        check_cancelled: Callable[[], None] | None = None,
        group_file: str = "",
        display: str = "",
    ) -> CommandResult:
        """Run ``command`` with ``sh -c`` on the server (quote what you interpolate).

        Output reaches ``on_line`` line by line as it arrives. The command's stdin is closed
        after ``stdin`` is sent (at once when there is none), so it never waits for input.
        ``timeout`` is in seconds. ``check_cancelled`` is called about once a second while
        the command runs and may raise (Cancelled). On ``timeout`` (CommandTimedOut), or when
        ``on_line`` or ``check_cancelled`` raises, the command's whole process group is killed
        and the call returns once it is gone (see ``left_running`` when it cannot be told).
        With ``check``, a non-zero exit raises CommandFailed, or DiskFull / PermissionDenied
        when stderr says so. With ``group_file`` (a path on the server), the command's
        process group is recorded in it (see _GROUP_WRAPPER). ``display`` is how errors name
        the command (a user's command, rather than the script that wraps it).
        """
        chunks = [stdin] if stdin else []
        return self._execute(
            command,
            chunks,
            on_line=on_line,
            timeout=timeout,
            check=check,
            lost=self._lost,
            check_cancelled=check_cancelled,
            group_file=group_file,
            display=display,
        )

    def run_streaming_stdin(
        self,
        command: str,
        chunks: Iterable[bytes],
        *,
        on_line: LineCallback | None = None,
        timeout: float | None = None,
        check: bool = True,
    ) -> CommandResult:
        """Feed ``chunks`` to ``command``'s stdin over one channel, e.g. a tar stream to ``tar -x``.

        Chunks are pulled lazily, so a generator can compress while we send. Output is read
        while sending. A connection lost at any point raises TransferFailed; otherwise this
        behaves like ``run``.
        """
        return self._execute(
            command,
            chunks,
            on_line=on_line,
            timeout=timeout,
            check=check,
            lost=self._transfer_failed,
        )

    def sftp(self) -> paramiko.SFTPClient:
        """The connection's SFTP client, opened on first use and reused afterwards."""
        if self._sftp is None:
            self._sftp = self.new_sftp()
        return self._sftp

    def new_sftp(self) -> paramiko.SFTPClient:
        """A further SFTP client on its own channel (one per thread: a client is not
        thread-safe). The caller closes it."""
        try:
            client = paramiko.SFTPClient.from_transport(self._transport)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise self._lost(f"could not open an SFTP session: {exc}") from exc
        if client is None:
            raise self._lost("could not open an SFTP session")
        return client

    def close(self) -> None:
        """Close the SFTP client and the connection; safe to call twice or on a dead one."""
        if self._sftp is not None:
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                self._sftp.close()
            self._sftp = None
        self._transport.close()
        if self._own_jump is not None:
            self._own_jump.close()

    # -- running commands -------------------------------------------------------------------

    def _execute(
        self,
        command: str,
        chunks: Iterable[bytes],
        *,
        on_line: LineCallback | None,
        timeout: float | None,
        check: bool,
        lost: Callable[[str], EngineError],
        check_cancelled: Callable[[], None] | None = None,
        in_own_group: bool = True,
        group_file: str = "",
        display: str = "",
    ) -> CommandResult:
        shown = display or command
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        output = _OutputCollector(on_line, expect_group_header=in_own_group)
        remote = (
            f"sh -c {shlex.quote(_GROUP_WRAPPER)} slipway {shlex.quote(command)}"
            + (f" {shlex.quote(group_file)}" if group_file else "")
            if in_own_group
            else command
        )
        try:
            channel = self._transport.open_session(timeout=self.endpoint.connect_timeout)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise lost(f"could not start `{shown}`: {exc}") from exc
        try:
            channel.exec_command(remote)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            _close_quietly(channel)
            raise lost(f"could not start `{shown}`: {exc}") from exc

        watch = _Watch(deadline, shown, timeout, self.endpoint.address, check_cancelled)
        try:
            self._send_input(channel, chunks, output, watch)
            self._read_until_eof(channel, output, watch)
            exit_code = self._wait_for_exit_status(channel, watch)
        except BaseException as exc:
            if in_own_group and not channel.exit_status_ready():
                try:
                    stopped = self._stop_group(channel, output, shown)
                except Exception:  # must not hide why the command was stopped
                    logger.warning("Stopping `%s` failed", shown, exc_info=True)
                    self.left_running.append(_left_running(shown, output.group))
                    stopped = False
                if isinstance(exc, CommandTimedOut):
                    raise CommandTimedOut(
                        f"{exc}; it was stopped"
                        if stopped
                        else f"{exc}, and it could not be stopped: it may still be running"
                    ) from None
            raise
        finally:
            _close_quietly(channel)
        output.finish()

        if exit_code == -1 and self._connection_lost():
            raise lost(f"the connection was lost while running `{shown}`")
        result = CommandResult(
            command=command,
            exit_code=exit_code,
            stdout=output.captured("stdout"),
            stderr=output.captured("stderr"),
            tail=tuple(text for _stream, text in output.tail),
            truncated=output.truncated,
            duration=time.monotonic() - started,
        )
        if check and exit_code != 0:
            failure = CommandFailed(shown, exit_code, list(result.tail))
            stderr_tail = [text for stream, text in output.tail if stream == "stderr"]
            raise classify_command_failure(
                failure, stderr_tail, self.endpoint.address, username=self.endpoint.username
            )
        return result

    def _stop_group(
        self, channel: paramiko.Channel, output: _OutputCollector, command: str
    ) -> bool:
        """Kill the process group of the command on ``channel`` and wait until it is gone.

        True when it is gone; False (and the command noted in ``left_running``) when that
        cannot be told: no group id arrived, the connection is lost, or processes remain."""
        waited_until = time.monotonic() + _HEADER_WAIT_SECONDS
        while output.awaiting_header and not channel.closed and time.monotonic() < waited_until:
            with contextlib.suppress(Exception):
                output.drain(channel)
            if output.awaiting_header:
                select.select([channel.fileno()], [], [], 0.1)
        group = output.group
        if group is not None and self._transport.is_active():
            # Gone once kill(2) says "No such process" for the group; any other refusal
            # (processes of another user, after sudo) means it cannot be told (exit 2).
            script = (
                f"LC_ALL=C; export LC_ALL; kill -s KILL -- -{group} 2>/dev/null; n=0\n"
                f"while kill -s 0 -- -{group} 2>/dev/null; do\n"
                f"  n=$((n + 1)); [ $n -gt {_STOP_WAIT_SECONDS * 20} ] && exit 1\n"
                "  sleep 0.05 2>/dev/null || sleep 1\n"
                "done\n"
                f'case $(kill -s 0 -- -{group} 2>&1) in *"o such process"*) exit 0 ;; esac\n'
                "exit 2\n"
            )
            try:
                result = self._execute(
                    "sh -c " + shlex.quote(script),
                    [],
                    on_line=None,
                    timeout=_STOP_WAIT_SECONDS + 10,
                    check=False,
                    lost=self._lost,
                    in_own_group=False,
                )
            except EngineError:
                logger.warning("Stopping `%s` on %s failed", command, self.endpoint.address)
            else:
                if result.exit_code == 0:
                    return True
        self.left_running.append(_left_running(command, group))
        return False

    def _send_input(
        self,
        channel: paramiko.Channel,
        chunks: Iterable[bytes],
        output: _OutputCollector,
        watch: _Watch,
    ) -> None:
        channel.settimeout(_SEND_WAIT_SECONDS)
        for chunk in chunks:
            remaining = memoryview(chunk)
            while remaining:
                watch.check()
                try:
                    sent = channel.send(bytes(remaining[:_READ_SIZE]))
                except TimeoutError:
                    # The server's window is full: read output meanwhile (see _SEND_WAIT_SECONDS).
                    output.drain(channel)
                    continue
                except (OSError, EOFError, paramiko.SSHException):
                    # The channel is closed (the command exited early) or the connection died
                    # (paramiko writes to the socket from this thread, hence EOFError); the
                    # exit status, or its absence, tells which.
                    return
                if sent == 0:
                    return
                remaining = remaining[sent:]
                output.drain(channel)
        try:
            channel.shutdown_write()
        except (paramiko.SSHException, OSError, EOFError):
            return

    def _read_until_eof(
        self,
        channel: paramiko.Channel,
        output: _OutputCollector,
        watch: _Watch,
    ) -> None:
        # The server sends EOF after the last byte of output, and paramiko handles messages in
        # order, so once EOF is seen one more drain collects everything.
        wake_fd = channel.fileno()
        while True:
            finished = bool(channel.eof_received) or channel.closed
            output.drain(channel)
            if finished:
                return
            watch.check()
            select.select([wake_fd], [], [], _wait_seconds(watch.deadline))

    def _wait_for_exit_status(self, channel: paramiko.Channel, watch: _Watch) -> int:
        # status_event is also set when the channel closes, so this cannot wait forever on a
        # dead connection.
        while not channel.status_event.wait(_wait_seconds(watch.deadline)):
            watch.check()
        return channel.exit_status

    def _connection_lost(self) -> bool:
        if self._transport.is_active():
            # paramiko closes the channels of a dying transport before marking it inactive.
            self._transport.join(_TRANSPORT_DEATH_GRACE_SECONDS)
        return not self._transport.is_active()

    def _lost(self, reason: str) -> EngineError:
        return HostUnreachable(f"{self.endpoint.address}: {reason}")

    def _transfer_failed(self, reason: str) -> EngineError:
        return TransferFailed(f"Transfer to {self.endpoint.address} failed: {reason}")


# `mkdir: cannot create directory '/srv/app': Permission denied`, `sh: 1: cannot create
# /srv/app/x: Permission denied`, `tar: releases/r/a: Cannot open: Permission denied`.
_DENIED_PATH = re.compile(
    r"'(?P<quoted>[^'\n]+)': Permission denied"
    r"|(?P<bare>[^\s:'][^\s:']*)(?:: Cannot \w+)?: Permission denied"
)


def classify_command_failure(
    failure: CommandFailed,
    stderr_lines: Iterable[str],
    address: str,
    *,
    username: str = "",
    deploy_path: str = "",
) -> EngineError:
    """Turn a failure whose stderr names a well-known cause into that cause's error.

    "No space left on device" and "Permission denied" are what the user has to fix on the
    server, so they get their own error codes; the command and its tail stay in the message.
    A permission problem of Slipway's own release script (``deploy_path`` given) says which
    path the login user ``username`` could not write and the `chown` that fixes it.
    """
    stderr_text = "\n".join(stderr_lines)
    # GNU tar reports a short write ("Wrote only 1536 of 10240 bytes") without naming ENOSPC.
    if any(
        sign in stderr_text
        for sign in ("No space left on device", "Disk quota exceeded", "Wrote only")
    ):
        return DiskFull(f"The disk is full on {address}. {failure}")
    if "Permission denied" in stderr_text:
        said = f"Permission denied on {address}"
        if deploy_path and username:
            found = _DENIED_PATH.search(stderr_text)
            path = (found["quoted"] or found["bare"]) if found else deploy_path
            if not path.startswith("/"):
                # Slipway's release scripts run in the deploy path.
                path = f"{deploy_path}/{path}"
            said += (
                f": the login user {username} may not write {path}. Give it the deploy path: "
                f"as root on the server, `mkdir -p {deploy_path} && chown -R {username}: "
                f"{deploy_path} && chmod -R u+rwX {deploy_path}`; or choose a deploy path "
                f"that {username} owns"
            )
        elif username:
            said += f" (logged in as {username})"
        return PermissionDenied(f"{said}. {failure}")
    return failure


def _left_running(command: str, group: int | None) -> str:
    """A stopped command that may still run, for people: "`command` (process group N)",
    on one line, the command cut to 200 characters."""
    text = " ".join(command.split())
    if len(text) > 200:
        text = text[:199] + "…"
    return f"`{text}`" + (f" (process group {group})" if group is not None else "")


def _close_quietly(channel: paramiko.Channel) -> None:
    # Closing sends a message; on a dead connection that raises, and must not hide the error
    # that brought us here.
    with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
        channel.close()


def _wait_seconds(deadline: float | None) -> float:
    if deadline is None:
        return _POLL_SECONDS
    return max(0.0, min(_POLL_SECONDS, deadline - time.monotonic()))


@dataclass
class _Watch:
    """What may end a running command early: its deadline, and a cancel request."""

    deadline: float | None
    command: str
    timeout: float | None
    address: str
    check_cancelled: Callable[[], None] | None

    def check(self) -> None:
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise CommandTimedOut(
                f"`{self.command}` on {self.address} did not finish within {self.timeout:g} s"
            )
        if self.check_cancelled is not None:
            self.check_cancelled()


class _OutputCollector:
    def __init__(self, on_line: LineCallback | None, *, expect_group_header: bool = False) -> None:
        self._on_line = on_line
        self.awaiting_header = expect_group_header
        #: The remote command's process group id, once its header line arrived.
        self.group: int | None = None
        self._splitters = {"stdout": LineSplitter(), "stderr": LineSplitter()}
        self._captured: dict[str, list[str]] = {"stdout": [], "stderr": []}
        self._captured_chars = {"stdout": 0, "stderr": 0}
        self.truncated = False
        self.tail: deque[tuple[str, str]] = deque(maxlen=TAIL_LINES)

    def drain(self, channel: paramiko.Channel) -> None:
        while channel.recv_ready():
            data = channel.recv(_READ_SIZE)
            if not data:
                break
            self._feed("stdout", data)
        while channel.recv_stderr_ready():
            data = channel.recv_stderr(_READ_SIZE)
            if not data:
                break
            self._feed("stderr", data)

    def finish(self) -> None:
        for stream, splitter in self._splitters.items():
            for line in splitter.finish():
                self._emit(stream, line)

    def captured(self, stream: str) -> str:
        return "\n".join(self._captured[stream])

    def _feed(self, stream: str, data: bytes) -> None:
        for line in self._splitters[stream].feed(data):
            self._emit(stream, line)

    def _emit(self, stream: str, line: str) -> None:
        if self.awaiting_header and stream == "stdout":
            self.awaiting_header = False
            header = _GROUP_HEADER.fullmatch(line)
            if header is not None:
                self.group = int(header["pgid"]) if header["pgid"] else None
                return
        self.tail.append((stream, line))
        if self._captured_chars[stream] + len(line) <= _CAPTURE_LIMIT_CHARS:
            self._captured[stream].append(line)
            self._captured_chars[stream] += len(line) + 1
        else:
            self.truncated = True
        if self._on_line is not None:
            self._on_line(stream, line)


# -- opening the transport --------------------------------------------------------------------


def _start_transport(
    hostname: str,
    port: int,
    timeout: float,
    *,
    sock: paramiko.Channel | None = None,
    label: str = "",
) -> tuple[paramiko.Transport, HostKey]:
    """TCP connect (or, given ``sock``, a tunnel through a jump host) and SSH key exchange,
    up to (not including) authentication. ``label`` names the hop in errors."""
    address = label or format_address(hostname, port)
    transport = paramiko.Transport(
        sock if sock is not None else _open_socket(hostname, port, timeout, label=label),
        default_window_size=TRANSPORT_WINDOW_SIZE,
        default_max_packet_size=TRANSPORT_MAX_PACKET_SIZE,
    )
    # The tar stream is compressed before it reaches us; compressing again costs CPU only.
    transport.use_compression(compress=False)
    transport.banner_timeout = timeout
    transport.handshake_timeout = timeout
    transport.auth_timeout = timeout
    negotiated = threading.Event()
    try:
        transport.start_client(event=negotiated, timeout=timeout)
        if not negotiated.wait(timeout):
            raise HostUnreachable(
                f"{_sentence(address)} did not complete the SSH handshake within {timeout:g} s"
            )
        if not transport.is_active():
            reason = transport.get_exception() or "the server closed the connection"
            raise HostUnreachable(
                f"SSH handshake with {address} failed (timeout {timeout:g} s): {reason}"
            )
        server_key = transport.get_remote_server_key()
    except BaseException:
        transport.close()
        raise
    return transport, HostKey(
        key_type=server_key.get_name(),
        fingerprint=fingerprint(server_key),
        public_key=f"{server_key.get_name()} {server_key.get_base64()}",
    )


def _open_socket(hostname: str, port: int, timeout: float, *, label: str = "") -> socket.socket:
    address = label or format_address(hostname, port)
    try:
        sock = socket.create_connection((hostname, port), timeout=timeout)
    except socket.gaierror as exc:
        raise HostUnreachable(
            f"Cannot reach {address}: the name does not resolve ({exc.strerror}); "
            f"timeout {timeout:g} s"
        ) from exc
    except TimeoutError as exc:
        raise HostUnreachable(f"Cannot reach {address}: no answer within {timeout:g} s") from exc
    except UnicodeError as exc:
        # The idna codec refuses a label that is empty or longer than 63 characters.
        raise HostUnreachable(
            f"Cannot reach {address}: it is not a valid host name ({exc}); "
            "correct the server's hostname"
        ) from exc
    except OSError as exc:
        raise HostUnreachable(
            f"Cannot reach {address}: {exc.strerror or exc}; timeout {timeout:g} s"
        ) from exc
    # paramiko's keepalive expects no reply, so only TCP keepalive notices a peer that
    # vanished without a reset (a rebooted VM, a dropped NAT entry) during a long command.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 6)
    return sock


def _sentence(subject: str) -> str:
    """A hop's label at the start of a sentence: "the jump host ..." capitalised, a host
    name or a user name left as it is."""
    return "T" + subject[1:] if subject.startswith("the ") else subject


def _verify_host_key(endpoint: Endpoint, offered: HostKey, *, label: str = "") -> None:
    address = label or endpoint.label
    pinned = endpoint.host_key_fingerprint
    if pinned is None:
        raise HostKeyNotTrusted(
            f"{_sentence(address)} offered the host key {offered.key_type} "
            f"{offered.fingerprint}, which is not trusted yet. Compare it with `ssh-keygen -lf` "
            "on the server, then trust it."
        )
    if not hmac.compare_digest(pinned.strip().encode(), offered.fingerprint.encode()):
        raise HostKeyMismatch(address, pinned, offered.fingerprint)


def _authenticate(
    transport: paramiko.Transport,
    endpoint: Endpoint,
    client_key: paramiko.PKey | None,
    *,
    label: str = "",
) -> None:
    who = (
        f"{label} (as {endpoint.username})"
        if label
        else f"{endpoint.username}@{endpoint.address}"
        + (f" (the target, through the jump host {endpoint.jump.address})" if endpoint.jump else "")
    )
    tried: list[str] = []
    # Both may be set: the key first, then the password (also covers servers asking for both).
    attempts: list[Callable[[], object]] = []
    if client_key is not None:
        tried.append(f"the key {client_key.get_name()} {fingerprint(client_key)}")
        attempts.append(lambda: transport.auth_publickey(endpoint.username, client_key))
    if endpoint.password is not None:
        password = endpoint.password
        tried.append("the password")
        attempts.append(lambda: transport.auth_password(endpoint.username, password))

    for attempt in attempts:
        try:
            attempt()
        except paramiko.AuthenticationException:
            pass
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise HostUnreachable(
                f"{_sentence(who)} closed the connection during login: {exc}"
            ) from exc
        if transport.is_authenticated():
            return
        if not transport.is_active():
            break
    message = f"{_sentence(who)} refused {' and '.join(tried)}."
    if client_key is not None:
        message += " " + authorized_keys_advice(endpoint, client_key)
    raise AuthenticationRefused(message)


def authorized_keys_advice(endpoint: Endpoint, client_key: paramiko.PKey) -> str:
    """What to do when the server refuses ``client_key``: the line to add (the public half,
    which is no secret) and the file it goes in, that of the login user (sshd's default
    ``AuthorizedKeysFile``)."""
    line = f"{client_key.get_name()} {client_key.get_base64()} slipway"
    return (
        f"Add this line to ~/.ssh/authorized_keys of {endpoint.username} on "
        f"{endpoint.hostname} (the file mode 0600, ~/.ssh 0700, both owned by "
        f"{endpoint.username}):\n{line}"
    )
