"""Health checks: HTTP requests from the worker and commands over SSH, with retries."""

from __future__ import annotations

import ipaddress
import shlex
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx

from builds.engine.errors import EngineError, InvalidInput
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


# Health checks may reach private addresses (the servers themselves), but never link-local
# ones: 169.254.169.254 and its kind answer with the worker's cloud credentials.
_METADATA = {ipaddress.ip_address("100.100.100.200"), ipaddress.ip_address("fd00:ec2::254")}


def refused_address(url: str) -> str:
    """Why the worker must not request ``url`` ("" when it may)."""
    host = urlsplit(url).hostname or ""
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return ""  # the request itself will report the name that does not resolve
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if address.is_link_local or address in _METADATA:
            return f"{host} resolves to {address}, a link-local address health checks may not use"
    return ""


def http_attempt(check: HealthCheckSpec, url: str) -> Attempt:
    refusal = refused_address(url)
    if refusal:
        return Attempt(False, refusal)
    try:
        response = httpx.get(url, timeout=check.timeout_seconds, follow_redirects=False)
    except httpx.HTTPError as exc:
        return Attempt(False, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    if response.status_code != check.expected_status:
        return Attempt(False, f"status {response.status_code}, expected {check.expected_status}")
    if check.body_contains and check.body_contains not in response.text:
        return Attempt(False, f"the body does not contain {check.body_contains!r}")
    return Attempt(True, f"status {response.status_code}")


def command_attempt(
    check: HealthCheckSpec,
    connection: Connection,
    command: str,
    workdir: str,
    variables: Mapping[str, str] | None = None,
) -> Attempt:
    """One run of a command check in ``workdir``; ``%variables%`` in ``command`` reach the
    shell as data (see variables.substitute_shell)."""
    values = variables or {}
    script = (
        shell_exports(values)
        + f"cd -- {shlex.quote(workdir)} || exit $?\n{substitute_shell(command, values)}\n"
    )
    try:
        result = connection.run(
            "sh -c " + shlex.quote(script), timeout=check.timeout_seconds, check=False
        )
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
            outcome = command_attempt(check, connection, check.command, workdir, variables)
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
