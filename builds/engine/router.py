"""Blue-green traffic switches: a server of the project (the group's *router*) is told to
send the group's traffic to the servers of one colour.

Two kinds of router:

- ``nginx``: the colour's servers are written as an ``upstream`` block into an include file
  (a temporary file renamed over it, so nginx never reads half of one), then ``nginx -t``
  tests the whole configuration, then ``nginx -s reload`` makes it live. nginx reloads
  gracefully: requests in flight finish on the old workers. When the test fails, the file
  that was there before is renamed back (or the new one removed when there was none), and
  the error names the router and quotes nginx, so the old colour stays live.
- ``command``: a command of the user's (HAProxy's runtime API, a cloud load balancer's CLI),
  with ``%colour%`` and ``%hosts%`` (the colour's ``host:port`` addresses) put in as quoted
  shell words; exit status 0 means the traffic moved.

Plain Python, no Django; reached over SSH like any server (ssh.connect).
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from builds.engine.errors import InvalidInput, UserError
from builds.engine.specs import COLOURS
from builds.engine.ssh import Connection, Endpoint, connect

NGINX = "nginx"
COMMAND = "command"
ROUTER_KINDS = (NGINX, COMMAND)

#: How long one switch may take on the router (nginx -t and the reload, or the command).
DEFAULT_TIMEOUT_SECONDS = 60.0

_UPSTREAM_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
# Exit statuses of the nginx switch script (_nginx_script), each with its own message.
_WRITE_FAILED, _TEST_FAILED, _RELOAD_FAILED = 90, 91, 92


class RouterFailed(UserError):
    """The router did not take the switch: the traffic stays where it was."""

    code = "router_failed"


@dataclass(frozen=True)
class RouterSpec:
    """A group's router: which server, and how it switches."""

    #: The router server's name, for the log and errors.
    name: str
    endpoint: Endpoint
    kind: str = NGINX
    #: nginx: the include file the upstream block is written to (an absolute path).
    include_path: str = ""
    #: nginx: the upstream's name, which the site's ``proxy_pass http://<name>;`` refers to.
    upstream_name: str = ""
    #: nginx: how nginx is run, as the router's login user types it ("nginx",
    #: "sudo -n nginx", "/usr/sbin/nginx -c /srv/nginx.conf"): words, each quoted.
    nginx_command: str = NGINX
    #: command: the switch command, with %colour% and %hosts%.
    switch_command: str = ""
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS

    def __post_init__(self) -> None:
        if self.kind not in ROUTER_KINDS:
            raise InvalidInput("router_kind", f"{self.kind!r} must be 'nginx' or 'command'")
        if self.kind == NGINX:
            validate_include_path(self.include_path)
            validate_upstream_name(self.upstream_name)
            nginx_words(self.nginx_command)
        elif not self.switch_command.strip():
            raise InvalidInput("router_switch_command", "a command router needs a command")

    @property
    def label(self) -> str:
        """``lb1 (deploy@10.0.0.2:22)``: how errors name the router."""
        return f"{self.name} ({self.endpoint.username}@{self.endpoint.address})"


def validate_include_path(path: str, field: str = "router_include_path") -> str:
    """An absolute path to a ``.conf`` file, without "." or ".." segments, control or format
    characters (it is quoted for the shell; nginx includes it as it is named)."""
    if not path.startswith("/") or path.endswith("/"):
        raise InvalidInput(
            field, "must be an absolute path to a file, such as /etc/nginx/conf.d/app.conf"
        )
    if len(path) > 500 or any(
        unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") for char in path
    ):
        raise InvalidInput(field, "must not hold control or format characters")
    segments = path.split("/")[1:]
    if any(segment in ("", ".", "..") for segment in segments):
        raise InvalidInput(field, f"{path!r} must not hold '.', '..' or empty segments")
    if not path.endswith(".conf"):
        raise InvalidInput(
            field, f"{path!r} must name a .conf file, such as /etc/nginx/conf.d/app.conf"
        )
    return path


def nginx_words(command: str, field: str = "router_nginx_command") -> list[str]:
    """How nginx is run, as words ("sudo -n nginx" → sudo, -n, nginx): each reaches the
    shell quoted, so the setting names a program and its arguments, never shell code."""
    try:
        words = shlex.split(command)
    except ValueError as error:
        raise InvalidInput(field, f"cannot be read as words: {error}") from None
    if not words or any("\n" in word or "\r" in word for word in words):
        raise InvalidInput(field, "must be one line, such as nginx or sudo -n nginx")
    return words


def validate_upstream_name(name: str, field: str = "router_upstream_name") -> str:
    if not _UPSTREAM_NAME.fullmatch(name):
        raise InvalidInput(field, "must be 1 to 64 letters, digits or _")
    return name


def validate_upstream(address: str, field: str = "upstream") -> str:
    """``host:port`` as nginx's ``server`` and a switch command take it: a host name, an IPv4
    address or a bracketed IPv6 address, and a port from 1 to 65535. Nothing else reaches
    the router's configuration (no space, ``;`` or brace)."""
    text = address.strip()
    host, separator, port = text.rpartition(":")
    if not separator or not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise InvalidInput(field, f"{address!r} must be host:port, such as 10.0.0.5:8080")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise InvalidInput(field, f"{host} is not an IPv6 address") from None
        return text
    labels = host.rstrip(".").split(".")
    if not host or len(host) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in labels):
        raise InvalidInput(field, f"{host!r} is not a host name or address")
    return text


def upstream_block(name: str, hosts: Sequence[str], colour: str) -> str:
    """The include file's text: one ``upstream`` with the colour's servers."""
    validate_upstream_name(name)
    if not hosts:
        raise InvalidInput("servers", f"the {colour} colour has no servers")
    servers = "".join(f"    server {validate_upstream(host)};\n" for host in hosts)
    return (
        f"# Written by Slipway: the {colour} servers are live. Changed at each switch; "
        "edits are overwritten.\n"
        f"upstream {name} {{\n{servers}}}\n"
    )


def _nginx_script(router: RouterSpec, text: str) -> str:
    """Write ``text`` over the include file (temporary file, then rename), test, reload; the
    old file back in place when the test fails."""
    path = shlex.quote(router.include_path)
    nginx = " ".join(shlex.quote(word) for word in nginx_words(router.nginx_command))
    return f"""
f={path}
new="$f.slipway-new.$$"
old="$f.slipway-old.$$"
umask 022
printf '%s' {shlex.quote(text)} > "$new" || {{ rm -f -- "$new"; exit {_WRITE_FAILED}; }}
had=0
if [ -e "$f" ]; then
  cp -p -- "$f" "$old" || {{ rm -f -- "$new"; exit {_WRITE_FAILED}; }}
  had=1
fi
mv -f -- "$new" "$f" || {{ rm -f -- "$new" "$old"; exit {_WRITE_FAILED}; }}
if ! tested=$({nginx} -t 2>&1); then
  if [ "$had" = 1 ]; then mv -f -- "$old" "$f"; else rm -f -- "$f"; fi
  printf '%s\\n' "$tested" >&2
  exit {_TEST_FAILED}
fi
rm -f -- "$old"
{nginx} -s reload 2>&1 || exit {_RELOAD_FAILED}
"""


def switch(
    router: RouterSpec,
    *,
    colour: str,
    hosts: Sequence[str],
    log: Callable[[str], None],
    check_cancelled: Callable[[], None] | None = None,
    connection: Connection | None = None,
) -> None:
    """Send the traffic to ``hosts``, the servers of ``colour``; RouterFailed (or an SSH
    error naming the router) when the router did not take it, the traffic then where it
    was. Opens its own connection to the router unless given one."""
    if colour not in COLOURS:
        raise InvalidInput("colour", f"{colour!r} must be 'blue' or 'green'")
    for host in hosts:
        validate_upstream(host)
    if not hosts:
        raise RouterFailed(f"The {colour} colour has no servers: no traffic was switched")
    own = connection is None
    if connection is None:
        connection = connect(router.endpoint)
    try:
        if router.kind == NGINX:
            _switch_nginx(router, connection, colour, hosts, log, check_cancelled)
        else:
            _switch_command(router, connection, colour, hosts, log, check_cancelled)
    finally:
        if own:
            connection.close()


def _switch_nginx(
    router: RouterSpec,
    connection: Connection,
    colour: str,
    hosts: Sequence[str],
    log: Callable[[str], None],
    check_cancelled: Callable[[], None] | None,
) -> None:
    text = upstream_block(router.upstream_name, hosts, colour)
    log(
        f"Router {router.label}: writing upstream {router.upstream_name} "
        f"({', '.join(hosts)}) to {router.include_path}, then {router.nginx_command} -t "
        "and -s reload"
    )
    result = connection.run(
        "sh -c " + shlex.quote(_nginx_script(router, text)),
        timeout=router.timeout_seconds,
        check=False,
        check_cancelled=check_cancelled,
        display=f"{router.nginx_command} -t && {router.nginx_command} -s reload",
    )
    output = " | ".join(line for line in (result.stderr + result.stdout).strip().splitlines())
    if result.exit_code == 0:
        return
    if result.exit_code == _TEST_FAILED:
        raise RouterFailed(
            f"nginx on the router {router.label} refused the new upstream file "
            f"{router.include_path} ({router.nginx_command} -t: {output}); the old file is "
            f"back in place and the traffic did not move to {colour}"
        )
    if result.exit_code == _WRITE_FAILED:
        raise RouterFailed(
            f"Could not write {router.include_path} on the router {router.label}: "
            f"{output or 'permission denied?'}; the traffic did not move to {colour}"
        )
    if result.exit_code == _RELOAD_FAILED:
        raise RouterFailed(
            f"{router.nginx_command} -s reload failed on the router {router.label}: {output}. "
            f"{router.include_path} names the {colour} servers; nginx serves what it read at "
            "its last reload"
        )
    raise RouterFailed(
        f"The switch on the router {router.label} exited with {result.exit_code}: {output}"
    )


def switch_command_text(command: str, colour: str, hosts: Sequence[str]) -> str:
    """The switch command with ``%colour%`` and ``%hosts%`` as quoted shell words (each host
    one word): values reach the shell only through shlex.quote."""
    quoted_hosts = " ".join(shlex.quote(host) for host in hosts)
    return command.replace("%colour%", shlex.quote(colour)).replace("%hosts%", quoted_hosts)


def _switch_command(
    router: RouterSpec,
    connection: Connection,
    colour: str,
    hosts: Sequence[str],
    log: Callable[[str], None],
    check_cancelled: Callable[[], None] | None,
) -> None:
    text = switch_command_text(router.switch_command, colour, hosts)
    log(f"Router {router.label}: $ {text}")
    result = connection.run(
        "sh -c " + shlex.quote(text),
        on_line=lambda _stream, line: log(line),
        timeout=router.timeout_seconds,
        check=False,
        check_cancelled=check_cancelled,
        display=text,
    )
    if result.exit_code != 0:
        tail = " | ".join(result.tail[-5:])
        raise RouterFailed(
            f"The switch command on the router {router.label} exited with "
            f"{result.exit_code}{': ' + tail if tail else ''}; the traffic did not move to "
            f"{colour}"
        )
