"""Health checks: HTTP requests from the worker and commands over SSH, with retries."""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpcore

from builds.engine.addresses import (
    AddressRefused,
    AddressUnresolvable,
    PinnedBackend,
    Policy,
    check_host,
)
from builds.engine.errors import Cancelled, EngineError, InvalidInput
from builds.engine.ssh import Connection
from builds.engine.variables import shell_exports, substitute, substitute_shell

BEFORE_SWITCH = "before_switch"
AFTER_SWITCH = "after_switch"
HTTP = "http"
COMMAND = "command"


@dataclass(frozen=True)
class HealthCheckSpec:
    kind: str  # HTTP | COMMAND
    when: str = (
        AFTER_SWITCH  # BEFORE_SWITCH (command checks, against the prepared release) | AFTER_SWITCH
    )
    url: str = ""
    expected_status: int = 200
    body_contains: str = ""
    command: str = ""
    timeout_seconds: float = 5.0
    retries: int = 3
    interval_seconds: float = 2.0
    server_ids: frozenset[int] = field(default_factory=frozenset)
    name: str = ""
    # The outbound-address policy for HTTP checks (the servers' one): whether loopback and
    # private addresses may be requested, and what a refusal tells the user.
    allow_private: bool = True
    private_hint: str = "only public addresses are allowed"

    def __post_init__(self) -> None:
        if self.kind not in (HTTP, COMMAND):
            raise InvalidInput("kind", f"{self.kind!r} must be 'http' or 'command'")
        if self.when not in (BEFORE_SWITCH, AFTER_SWITCH):
            raise InvalidInput("when", f"{self.when!r} must be 'before_switch' or 'after_switch'")
        if self.kind == HTTP and not self.url:
            raise InvalidInput("url", "an HTTP check needs a URL")
        if self.kind == HTTP and self.when == BEFORE_SWITCH:
            raise InvalidInput(
                "when", "an HTTP check sees the live release: run it after the switch"
            )
        if self.kind == COMMAND and not self.command:
            raise InvalidInput("command", "a command check needs a command")
        if self.retries < 1:
            raise InvalidInput("retries", "must be at least 1")
        if self.timeout_seconds <= 0 or self.interval_seconds < 0:
            raise InvalidInput(
                "timeout_seconds", "timeouts must be positive and intervals not negative"
            )

    @property
    def label(self) -> str:
        return self.name or (f"GET {self.url}" if self.kind == HTTP else self.command)

    def applies_to(self, server_id: int) -> bool:
        return not self.server_ids or server_id in self.server_ids

    @property
    def longest_seconds(self) -> float:
        """The most one run of this check can take (all attempts and waits)."""
        return self.retries * self.timeout_seconds + (self.retries - 1) * self.interval_seconds


class HealthCheckFailed(EngineError):
    user_facing = True
    code = "health_check_failed"


@dataclass(frozen=True)
class Attempt:
    ok: bool
    detail: str


# How much of an answer's body a body match reads.
MAX_BODY_BYTES = 1024 * 1024


def _target(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, request target) of an http(s) URL; InvalidInput names ``url``."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidInput("url", "an HTTP check needs an http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise InvalidInput("url", "a user name or password in the URL is not supported")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise InvalidInput("url", "the port is not a number between 0 and 65535") from None
    host = parts.hostname or ""
    if not host:
        raise InvalidInput("url", "the URL has no host name")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return scheme, host, port, path


def http_attempt(check: HealthCheckSpec, url: str) -> Attempt:
    """One GET of ``url``, connected only to addresses the policy allows.

    A refused address is answered before any packet goes to it, with the same detail
    whatever it would have answered: a body match cannot be used to read it. Redirects are
    not followed (a 3xx is compared with ``expected_status`` like any status), so a redirect
    to a refused address is never requested either.
    """
    policy = Policy(allow_private=check.allow_private, private_hint=check.private_hint)
    try:
        scheme, host, port, path = _target(url)
        addresses = check_host(host, port, policy)
    except (AddressRefused, AddressUnresolvable, InvalidInput) as exc:
        return Attempt(False, str(exc))
    deadline = time.monotonic() + check.timeout_seconds
    backend = PinnedBackend(host, addresses, deadline, phase_seconds=check.timeout_seconds)
    host_header = f"[{host}]" if ":" in host else host
    if port != (443 if scheme == "https" else 80):
        host_header += f":{port}"
    timeout = check.timeout_seconds
    try:
        with (
            httpcore.ConnectionPool(network_backend=backend, max_connections=1) as pool,
            pool.stream(
                "GET",
                httpcore.URL(scheme=scheme, host=host, port=port, target=path),
                headers=[("Host", host_header), ("User-Agent", "Slipway health check")],
                extensions={
                    "timeout": {
                        "connect": timeout,
                        "read": timeout,
                        "write": timeout,
                        "pool": timeout,
                    }
                },
            ) as response,
        ):
            status = response.status
            if status != check.expected_status:
                return Attempt(False, f"status {status}, expected {check.expected_status}")
            if check.body_contains:
                body = b""
                for chunk in response.iter_stream():
                    body += chunk
                    if len(body) > MAX_BODY_BYTES or time.monotonic() > deadline:
                        break
                if check.body_contains not in body.decode("utf-8", "replace"):
                    return Attempt(False, f"the body does not contain {check.body_contains!r}")
    except httpcore.TimeoutException:
        return Attempt(False, "timed out")
    except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as exc:
        return Attempt(False, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    return Attempt(True, f"status {status}")


def command_attempt(
    check: HealthCheckSpec,
    connection: Connection,
    command: str,
    workdir: str,
    variables: Mapping[str, str] | None = None,
    check_cancelled: Callable[[], None] | None = None,
) -> Attempt:
    """One run of a command check in ``workdir``; ``%variables%`` in ``command`` reach the
    shell as data (see variables.substitute_shell). A command still running after the
    check's timeout, or when ``check_cancelled`` raises (re-raised here), is killed with
    everything it started (see ssh.Connection.run)."""
    values = variables or {}
    script = (
        shell_exports(values)
        + f"cd -- {shlex.quote(workdir)} || exit $?\n{substitute_shell(command, values)}\n"
    )
    try:
        result = connection.run(
            "sh -c " + shlex.quote(script),
            timeout=check.timeout_seconds,
            check=False,
            check_cancelled=check_cancelled,
        )
    except Cancelled:
        raise
    except EngineError as exc:
        return Attempt(False, str(exc))
    if result.exit_code != 0:
        tail = " | ".join(result.tail[-3:])
        return Attempt(False, f"exit code {result.exit_code}" + (f": {tail}" if tail else ""))
    return Attempt(True, "exit code 0")


def run_check(
    check: HealthCheckSpec,
    *,
    variables: Mapping[str, str],
    connection: Connection | None,
    workdir: str,
    log: Callable[[str], None],
    check_cancelled: Callable[[], None] = lambda: None,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Run one check until it passes or its attempts are used up; log every attempt."""
    last = ""
    for attempt in range(1, check.retries + 1):
        check_cancelled()
        if check.kind == HTTP:
            url = substitute(check.url, variables)
            outcome = http_attempt(check, url)
            what = f"GET {url}"
        else:
            if connection is None:
                raise HealthCheckFailed(f"{check.label}: command checks need an SSH server")
            outcome = command_attempt(
                check, connection, check.command, workdir, variables, check_cancelled
            )
            what = check.command
        log(
            f"Health check {what}: attempt {attempt}/{check.retries}: {'healthy' if outcome.ok else 'unhealthy'} ({outcome.detail})"
        )
        if outcome.ok:
            return
        last = outcome.detail
        if attempt < check.retries:
            sleep(check.interval_seconds)
    raise HealthCheckFailed(
        f"Health check {check.label} failed after {check.retries} attempts: {last}"
    )
