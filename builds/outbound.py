"""Requests to addresses that people typed in (notification URLs), guarded against SSRF; and
the Django side of the one outbound-address policy (``policy``: which SLIPWAY_ALLOW_PRIVATE_*
setting applies to notifications, repositories and servers; the rules themselves are in
builds.engine.addresses, shared with the engine's health checks).

Whoever configures a notification chooses where Slipway's workers send an HTTP request. Left
unguarded, that reaches what only the workers can reach: the cloud metadata service at
169.254.169.254 (credentials), Redis or PostgreSQL on 127.0.0.1, an intranet admin page. So:

- Only http:// and https:// URLs without credentials. The URL is parsed once, here, and its
  parts are handed to httpcore already split, so the check and the connection cannot disagree
  about which host is meant (two URL parsers that differ are a classic way around a guard).
- The host is resolved and *every* address it resolves to is checked; one bad address refuses
  the URL. Every textual form of an address (octal, hex, decimal, short, IPv4-mapped...) is
  normalised first. Loopback, private (RFC 1918, fc00::/7, CGNAT) and other non-global
  addresses are refused unless SLIPWAY_ALLOW_PRIVATE_NOTIFICATION_TARGETS is on; link-local,
  multicast, unspecified, reserved and the known metadata addresses are refused even then.
- The connection goes to an address that was checked, not to the result of a second lookup:
  a DNS answer that changes between check and connect (DNS rebinding) cannot redirect it.
  TLS still verifies the certificate against the host name, which is also what SNI and the
  Host header carry, so pinning the address changes nothing a receiver can see.
- Redirects are not followed by the client: at most MAX_REDIRECTS hops are followed here, each
  parsed, resolved, checked and pinned like the first, before any packet goes to it.
- No proxy from the environment (httpcore reads none), since a proxy would do its own lookup.

The setting is read when a check runs, never at import, so a change applies to the next send.
"""

from __future__ import annotations

import re
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urljoin, urlsplit

import httpcore
from django.conf import settings

from builds.engine import addresses as address_policy
from builds.engine.addresses import Policy
from builds.engine.errors import InvalidInput

IPAddress = address_policy.IPAddress
NEVER_ALLOWED = address_policy.NEVER_ALLOWED

MAX_REDIRECTS = 3
# Seconds for each phase (connect, write, read) of one request...
TIMEOUT_SECONDS = 10.0
# ...and for a whole send, redirects included, so that a worker is never held for long.
TOTAL_SECONDS = 30.0
MAX_URL_LENGTH = 2048
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
DEFAULT_PORTS = {"http": 80, "https": 443}

# One setting family, SLIPWAY_ALLOW_PRIVATE_*, one per kind of far end (docs/network.md).
NOTIFICATIONS = "notifications"
REPOSITORIES = "repositories"
SERVERS = "servers"
_PURPOSES = {
    # purpose: (Django setting, environment variable, what a refusal says is allowed)
    NOTIFICATIONS: (
        "ALLOW_PRIVATE_NOTIFICATION_TARGETS",
        "SLIPWAY_ALLOW_PRIVATE_NOTIFICATION_TARGETS",
        "notifications go to public addresses only",
    ),
    REPOSITORIES: (
        "ALLOW_PRIVATE_REPOSITORIES",
        "SLIPWAY_ALLOW_PRIVATE_REPOSITORIES",
        "repositories are fetched from public addresses only",
    ),
    SERVERS: (
        "ALLOW_PRIVATE_SERVERS",
        "SLIPWAY_ALLOW_PRIVATE_SERVERS",
        "servers and their health checks are reached at public addresses only",
    ),
}
ALLOW_PRIVATE_SETTING = _PURPOSES[NOTIFICATIONS][1]


def policy(purpose: str = NOTIFICATIONS, *, allow_private: bool | None = None) -> Policy:
    """The address policy for ``purpose`` (NOTIFICATIONS, REPOSITORIES, SERVERS).

    Whether loopback and private ranges are allowed comes from the purpose's
    SLIPWAY_ALLOW_PRIVATE_* setting, read now (a changed setting applies to the next check),
    unless ``allow_private`` overrides it. Link-local and metadata addresses are refused
    whatever it says (builds.engine.addresses.NEVER_ALLOWED).
    """
    setting, variable, rule = _PURPOSES[purpose]
    if allow_private is None:
        allow_private = bool(getattr(settings, setting, False))
    return Policy(
        allow_private=allow_private,
        private_hint=f"{rule}, unless the administrator sets {variable}=true",
    )


class OutboundError(Exception):
    """A send did not get an answer. ``permanent``: trying again cannot help."""

    permanent = False

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(message)


class OutboundRefused(OutboundError):
    """The URL, or an address it resolves or redirects to, is not allowed: nothing was sent."""

    permanent = True


@dataclass(frozen=True)
class Target:
    """A URL split into what the connection needs; ``host`` is ASCII, IPv6 without brackets."""

    scheme: str
    host: str
    port: int

    #: Path and query, percent-encoded, as sent on the request line.
    path: str

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"

    @property
    def origin(self) -> str:
        """scheme://host[:port]: what errors and lists show, since paths may embed tokens."""
        return f"{self.scheme}://{self.host_header}"


@dataclass(frozen=True)
class Response:
    status_code: int
    #: The origin that gave this answer (after redirects).
    origin: str
    #: Origins of the redirects followed to get here, in order.
    redirects: tuple[str, ...] = ()
    #: The first ``read_limit`` bytes of the answer's body (none unless asked for).
    body: bytes = b""

    @property
    def ok(self) -> bool:
        return 200 <= self.status_code < 300


_HOST_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-._:")


def parse_url(url: str) -> Target:
    """Split ``url``; OutboundRefused says what is wrong with it (without repeating it)."""
    url = url.strip()
    if not url:
        raise OutboundRefused("the URL is empty")
    if len(url) > MAX_URL_LENGTH:
        raise OutboundRefused(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if any(character.isspace() or ord(character) < 0x20 for character in url):
        raise OutboundRefused("the URL contains spaces or control characters")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise OutboundRefused(
            f"only http:// and https:// URLs are allowed (got {scheme or 'no scheme'}://)"
        )
    if parts.username is not None or parts.password is not None:
        raise OutboundRefused(
            "a user name or password in the URL is not supported "
            "(a webhook notification is signed with its secret instead)"
        )
    host = parts.hostname or ""
    if not host:
        raise OutboundRefused("the URL has no host name")
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise OutboundRefused("the URL's host name is not a valid domain name") from None
    if not set(host) <= _HOST_CHARACTERS:
        raise OutboundRefused("the URL's host name contains characters a host name cannot have")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError:
        raise OutboundRefused("the URL's port is not a number between 0 and 65535") from None
    # Characters outside ASCII in the path are sent percent-encoded; "%" itself is kept, so
    # an already encoded path stays as it was.
    path = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
    if parts.query:
        path += "?" + quote(parts.query, safe="/%:@!$&'()*+,;=-._~?")
    return Target(scheme=scheme, host=host, port=port, path=path)


def origin_of(url: str) -> str:
    """What to show of a stored URL: scheme://host[:port], never its path (it may hold a token)."""
    try:
        return parse_url(url).origin
    except OutboundRefused:
        return "(an invalid URL)"


def address_refusal(
    address: IPAddress, *, allow_private: bool, purpose: str = NOTIFICATIONS
) -> str | None:
    """Why a connection to ``address`` is refused, or None when it is allowed."""
    return address_policy.address_refusal(address, policy(purpose, allow_private=allow_private))


def resolve(
    target: Target, *, allow_private: bool | None = None, purpose: str = NOTIFICATIONS
) -> list[str]:
    """Every address ``target.host`` resolves to, all checked; the connection uses these.

    Raises OutboundRefused (a refused address), OutboundError (the name does not resolve).
    """
    try:
        return address_policy.check_host(
            target.host,
            target.port,
            policy(purpose, allow_private=allow_private),
            label=target.origin,
        )
    except address_policy.AddressRefused as exc:
        raise OutboundRefused(str(exc)) from None
    except address_policy.AddressUnresolvable as exc:
        raise OutboundError(str(exc)) from None


def check_url(url: str, *, allow_private: bool | None = None) -> Target:
    """Whether ``url`` may be used at all, resolving its host now (when it is saved)."""
    target = parse_url(url)
    resolve(target, allow_private=allow_private)
    return target


def _describe(exc: Exception) -> str:
    if isinstance(exc, httpcore.TimeoutException):
        return "timed out"
    text = str(exc).strip()
    return text or type(exc).__name__


def _send_once(
    method: str,
    target: Target,
    addresses: list[str],
    body: bytes,
    headers: Mapping[str, str],
    *,
    ssl_context: ssl.SSLContext | None,
    deadline: float,
    read_limit: int,
) -> tuple[int, str, bytes]:
    """One request to one checked target: (status code, Location header or "", the first
    ``read_limit`` bytes of the body)."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise OutboundError(f"{target.origin}: no answer within {TOTAL_SECONDS:.0f} s")
    phase = min(TIMEOUT_SECONDS, remaining)
    url = httpcore.URL(
        scheme=target.scheme.encode(),
        host=target.host.encode(),
        port=target.port,
        target=target.path.encode(),
    )
    request_headers = [("Host", target.host_header), *headers.items()]
    backend = address_policy.PinnedBackend(
        target.host, addresses, deadline, phase_seconds=TIMEOUT_SECONDS
    )
    try:
        with (
            httpcore.ConnectionPool(
                ssl_context=ssl_context, network_backend=backend, max_connections=1
            ) as pool,
            pool.stream(
                method,
                url,
                headers=request_headers,
                content=body,
                extensions={
                    "timeout": {"connect": phase, "read": phase, "write": phase, "pool": phase}
                },
            ) as response,
        ):
            # A notification's answer body is not read: only its status code is recorded, so
            # that a notification cannot be used to read what a server behind it says. An
            # integration reads a little of it (an id, an error message), from an address
            # that passed the same checks.
            content = b""
            if read_limit > 0:
                for chunk in response.iter_stream():
                    content += chunk
                    if len(content) >= read_limit:
                        content = content[:read_limit]
                        break
            location = next(
                (
                    value.decode("latin-1")
                    for name, value in response.headers
                    if name.lower() == b"location"
                ),
                "",
            )
            return response.status, location, content
    except (
        httpcore.TimeoutException,
        httpcore.NetworkError,
        httpcore.ProtocolError,
        httpcore.UnsupportedProtocol,
    ) as exc:
        raise OutboundError(f"{target.origin}: {_describe(exc)}") from None


def post(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    allow_private: bool | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Response:
    """POST ``body`` to ``url``, following up to MAX_REDIRECTS redirects, each hop checked.

    Raises OutboundRefused before any packet goes to a refused address, OutboundError when no
    answer came; any answer (even 500) is returned. ``ssl_context``: None trusts the usual CAs.
    """
    return send("POST", url, body, headers, allow_private=allow_private, ssl_context=ssl_context)


def send(
    method: str,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    allow_private: bool | None = None,
    ssl_context: ssl.SSLContext | None = None,
    follow_redirects: bool = True,
    read_limit: int = 0,
) -> Response:
    """Send one ``method`` request (POST, PUT) to ``url`` under the same checks as ``post``.

    ``follow_redirects`` False: a redirect is returned as the answer, never followed (a
    request that carries a token must not carry it to another address). ``read_limit``:
    how many bytes of the answer's body to keep in ``Response.body`` (0: none are read).
    """
    deadline = time.monotonic() + TOTAL_SECONDS
    current = url
    target = parse_url(current)
    redirects: list[str] = []
    while True:
        try:
            addresses = resolve(target, allow_private=allow_private)
        except OutboundError as exc:
            if not redirects:
                raise
            # Keep the class: a refused hop is permanent, an unresolvable one may come back.
            raise type(exc)(f"redirected by {redirects[-1]} to {exc.message}") from None
        status, location, content = _send_once(
            method,
            target,
            addresses,
            body,
            headers,
            ssl_context=ssl_context,
            deadline=deadline,
            read_limit=read_limit,
        )
        if status not in REDIRECT_STATUSES or not location or not follow_redirects:
            return Response(
                status_code=status, origin=target.origin, redirects=tuple(redirects), body=content
            )
        if len(redirects) == MAX_REDIRECTS:
            raise OutboundError(
                f"{target.origin}: more than {MAX_REDIRECTS} redirects; point the notification "
                "at the final address"
            )
        redirects.append(target.origin)
        current = urljoin(current, location)
        try:
            target = parse_url(current)
        except OutboundRefused as exc:
            raise OutboundRefused(
                f"redirected by {redirects[-1]} to a URL refused: {exc}"
            ) from None


# --------------------------------------------------------------------------- repositories, servers

# Git's default ports by scheme, for the address check (git itself picks the same).
_GIT_PORTS = {"http": 80, "https": 443, "git": 9418, "ssh": 22, "git+ssh": 22, "ssh+git": 22}
_SCHEME_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def repository_host(url: str) -> tuple[str, int] | None:
    """(host, port) that git connects to for ``url``; None for a local repository.

    ``url`` has passed builds.engine.git.validate_repository_url: an http(s)://, git://,
    ssh:// URL, scp-like ``[user@]host:path``, or (when allowed) file:// or an absolute path.
    """
    scheme = _SCHEME_URL.match(url)
    if scheme:
        name = scheme.group(1).lower()
        if name == "file":
            return None
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            raise InvalidInput("repository_url", "the port is not a number up to 65535.") from None
        return parts.hostname or "", port or _GIT_PORTS.get(name, 22)
    if url.startswith("/"):
        return None
    # scp-like: [user@]host:path, the host possibly in brackets ([::1]:path).
    after_user = url.split("@", 1)[-1] if "@" in url.split(":", 1)[0] else url
    if after_user.startswith("[") and "]" in after_user:
        return after_user[1 : after_user.index("]")], 22
    return after_user.split(":", 1)[0], 22


def local_repository_paths(url: str) -> list[Path] | None:
    """The directories a local repository URL may name (file:// or an absolute path), else None.

    A file:// URL gives two readings, as typed and percent-decoded, since git versions differ.
    Raises InvalidInput when it is not absolute: git would read it relative to the worker's
    working directory, which may be Slipway's own.
    """
    scheme = _SCHEME_URL.match(url)
    if scheme and scheme.group(1).lower() != "file":
        return None
    if not scheme:
        return [Path(url)] if url.startswith("/") else None
    rest = url[len(scheme.group(0)) :]
    if rest.lower().startswith("localhost/"):
        rest = rest[len("localhost") :]
    if not rest.startswith("/"):
        raise InvalidInput("repository_url", "a file:// URL needs an absolute path: file:///path.")
    return [Path(rest), Path(unquote(rest))]


def _own_directories() -> list[Path]:
    return [Path(settings.DATA_DIR).resolve(), Path(settings.BUILD_DIR).resolve()]


def repository_check(url: str) -> None:
    """Whether Slipway may fetch ``url``: when it is saved, and again right before each fetch.

    A remote URL's host (any textual form, or every address its name resolves to) must pass
    the REPOSITORIES policy (SLIPWAY_ALLOW_PRIVATE_REPOSITORIES). A name that does not
    resolve is accepted when saved (the worker may resolve names the web host cannot) and
    left to git at fetch time. A local repository, after symlinks are resolved, must not be
    inside Slipway's data or build directory (SLIPWAY_DATA_DIR, SLIPWAY_BUILD_DIR): other
    projects' mirrors, keys and the database live there.

    Raises InvalidInput naming ``repository_url``. Residual risk: git resolves the name
    again itself, so a DNS answer that changes in the instant between this check and git's
    connection (DNS rebinding) is not caught; likewise a symlink swapped in that instant.
    """
    local = local_repository_paths(url)
    if local is not None:
        for path in (read for given in local for read in _paths_git_reads(given)):
            resolved = path.resolve()
            for own in _own_directories():
                if resolved == own or own in resolved.parents:
                    raise InvalidInput(
                        "repository_url",
                        "a local repository cannot be inside Slipway's own data or build "
                        "directory.",
                    )
        return
    located = repository_host(url)
    if located is None:
        return
    host, port = located
    try:
        address_policy.check_host(host, port, policy(REPOSITORIES))
    except address_policy.AddressRefused as exc:
        raise InvalidInput("repository_url", f"{exc}.") from None
    except address_policy.AddressUnresolvable:
        # When saved: the worker may resolve names the web host cannot. At fetch time: git
        # reports the name that does not resolve, in its own words.
        return


# Git follows alternates of alternates up to this depth (sha1-file.c, link_alt_odb_entry).
_ALTERNATES_DEPTH = 5


def _paths_git_reads(path: Path) -> list[Path]:
    """``path`` and every folder git would read objects or refs from when fetching from it:
    a ``.git`` file's ``gitdir:``, a worktree's ``commondir`` and the object directories of
    ``objects/info/alternates`` (followed as git does). Source: gitrepository-layout(5)."""
    found: list[Path] = []
    git_dirs = [(path, 0)]
    object_dirs: list[tuple[Path, int]] = []
    while git_dirs or object_dirs:
        if git_dirs:
            folder, depth = git_dirs.pop()
            if folder in found or depth > _ALTERNATES_DEPTH:
                continue
            found.append(folder)
            dot_git = folder / ".git"
            if dot_git.is_file():
                gitdir = _first_line(dot_git).removeprefix("gitdir:").strip()
                if gitdir:
                    git_dirs.append((folder / gitdir, depth + 1))
            for git_dir in (folder, dot_git):
                common = _first_line(git_dir / "commondir")
                if common:
                    git_dirs.append((git_dir / common, depth + 1))
                object_dirs.append((git_dir / "objects", depth))
            continue
        objects, depth = object_dirs.pop()
        if objects in found or depth > _ALTERNATES_DEPTH:
            continue
        found.append(objects)
        for line in _lines(objects / "info" / "alternates"):
            if line and not line.startswith("#"):
                object_dirs.append((objects / _unquote_c_style(line), depth + 1))
    return found


_C_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}


def _unquote_c_style(line: str) -> str:
    """An alternates line as git reads it: a line in double quotes is C-quoted (backslash
    escapes, octal bytes). Source: git's quote.c unquote_c_style."""
    if not (len(line) >= 2 and line.startswith('"') and line.endswith('"')):
        return line
    body, out, index = line[1:-1], bytearray(), 0
    while index < len(body):
        char = body[index]
        if char != "\\" or index + 1 == len(body):
            out += char.encode()
            index += 1
            continue
        following = body[index + 1]
        if following in "01234567" and len(body) >= index + 4:
            out.append(int(body[index + 1 : index + 4], 8) & 0xFF)
            index += 4
        else:
            out += _C_ESCAPES.get(following, following).encode()
            index += 2
    return out.decode("utf-8", "surrogateescape")


def _lines(path: Path) -> list[str]:
    try:
        if not path.is_file():
            return []
        return path.read_text(encoding="utf-8", errors="replace").splitlines()[:100]
    except OSError:
        return []


def _first_line(path: Path) -> str:
    lines = _lines(path)
    return lines[0].strip() if lines else ""


def server_host_check(hostname: str, port: int) -> None:
    """Check a server's SSH host by the SERVERS policy (SLIPWAY_ALLOW_PRIVATE_SERVERS).

    Raises address_policy.AddressRefused, a user's error naming the address and the setting.
    A name that does not resolve passes: the SSH connection reports it for that server.
    Residual risk: the connection resolves the name again (see repository_check).
    """
    try:
        address_policy.check_host(
            hostname, port, policy(SERVERS), label=f"{hostname}:{port}" if port != 22 else hostname
        )
    except address_policy.AddressUnresolvable:
        return
