"""The outbound-address policy: which addresses Slipway may connect to on a user's behalf.

One policy for every connection a user chooses the far end of: notification URLs, HTTP health
checks, repository URLs (http, https, git, ssh) and servers' SSH hosts. The Django side
(builds.outbound) decides from the operator's settings whether private addresses are allowed
for each purpose; this module, plain Python, decides what an address *is*:

- ``parse_address`` turns every textual form of an IP address into one ``ipaddress`` value
  before anything is checked: brackets, IPv6 zone ids, a trailing dot, and the forms that
  the C library's ``inet_aton`` (and so ``getaddrinfo``, git, curl and OpenSSH) accepts:
  decimal ``2130706433``, octal ``0177.0.0.1``, hex ``0x7f.1``, short ``127.1`` / ``10.1``.
  A guard that reads ``0177.0.0.1`` as a host name, while the connection reads it as
  127.0.0.1, is a classic way around an SSRF check.
- ``address_refusal`` checks the IPv4 address carried inside IPv6 forms (IPv4-mapped
  ``::ffff:a.b.c.d``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``, Teredo) as that address.
  Link-local (169.254.0.0/16, fe80::/10) and the cloud metadata addresses are refused
  whatever the operator allows; loopback and private ranges only when allowed.
- ``check_host`` resolves a host name and checks *every* address it resolves to; one refused
  address refuses the host. Callers connect to the returned addresses where they can, so a
  DNS answer that changes after the check (DNS rebinding) cannot redirect them.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpcore

from builds.engine.errors import UserError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Refused whatever the operator allows: nothing on-premise lives there, and some are where
# cloud providers serve instance credentials.
NEVER_ALLOWED = (
    # "This network": connecting to 0.0.0.0 reaches the local host on Linux.
    (ipaddress.ip_network("0.0.0.0/8"), "a 'this network' address"),
    # Link-local; AWS, GCP, Azure and OpenStack serve metadata on 169.254.169.254.
    (ipaddress.ip_network("169.254.0.0/16"), "a link-local address (cloud metadata lives there)"),
    (ipaddress.ip_network("fe80::/10"), "a link-local address"),
    # Alibaba Cloud's metadata service, inside the CGNAT range that the setting may allow.
    (ipaddress.ip_network("100.100.100.200/32"), "a cloud metadata address"),
    # IETF protocol assignments, among them Oracle Cloud's legacy metadata at 192.0.0.192.
    (ipaddress.ip_network("192.0.0.0/24"), "a reserved address"),
    # AWS's metadata service over IPv6, inside fc00::/7 that the setting may allow.
    (ipaddress.ip_network("fd00:ec2::254/128"), "a cloud metadata address"),
)
# IPv6 prefixes that carry an IPv4 address in their last 32 bits (checked as that address).
NAT64 = ipaddress.ip_network("64:ff9b::/96")

Resolver = Callable[..., Sequence[tuple[Any, ...]]]


class AddressRefused(UserError):
    """The host is, or resolves to, an address the policy refuses: nothing was sent to it."""

    code = "address_refused"


class AddressUnresolvable(UserError):
    """The host name does not resolve (may change: the next try may succeed)."""

    code = "address_unresolvable"


@dataclass(frozen=True)
class Policy:
    """Whether loopback and private ranges are allowed, and what a refusal tells the user.

    ``private_hint`` completes "… is a private address; <hint>", e.g. "notifications go to
    public addresses only, unless the administrator sets SLIPWAY_…=true".
    """

    allow_private: bool
    private_hint: str = "only public addresses are allowed"


def _ipv4_part(text: str) -> int | None:
    """One dot-separated part as inet_aton reads it: 0x hex, leading-0 octal, else decimal."""
    if text[:2] in ("0x", "0X"):
        digits, base = text[2:], 16
        if digits == "":
            return 0  # glibc reads a bare "0x" as 0
        if not all(c in "0123456789abcdefABCDEF" for c in digits):
            return None
    elif len(text) > 1 and text.startswith("0"):
        digits, base = text[1:], 8
        if not all(c in "01234567" for c in digits):
            return None
    else:
        digits, base = text, 10
        if not digits.isascii() or not digits.isdigit():
            return None
    return int(digits, base)


def _inet_aton(text: str) -> ipaddress.IPv4Address | None:
    parts = text.split(".")
    if not 1 <= len(parts) <= 4 or any(part == "" for part in parts):
        return None
    values = [_ipv4_part(part) for part in parts]
    if any(value is None for value in values):
        return None
    numbers = [value for value in values if value is not None]
    # "a.b.c.d"; "a.b.c" puts c in the last 16 bits; "a.b" b in the last 24; "a" is 32 bits.
    *leading, last = numbers
    if any(value > 0xFF for value in leading) or last >= 1 << (8 * (5 - len(numbers))):
        return None
    number = last
    for position, value in enumerate(leading):
        number |= value << (24 - 8 * position)
    return ipaddress.IPv4Address(number)


def parse_address(host: str) -> IPAddress | None:
    """The IP address that ``host`` denotes in any textual form, or None for a host name.

    Accepts brackets (``[::1]``), an IPv6 zone id (``fe80::1%eth0``), one trailing dot and
    inet_aton's IPv4 forms (see the module docstring). Raises nothing: text that is neither
    an address nor plausibly a name is returned as None and left to the resolver to refuse.
    """
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if text.endswith(".") and not text.endswith(".."):
        text = text[:-1]
    if ":" in text:
        text = text.split("%", 1)[0]
        try:
            return ipaddress.IPv6Address(text)
        except ValueError:
            return None
    return _inet_aton(text)


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries and reaches (mapped, NAT64, 6to4, Teredo)."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def address_refusal(address: IPAddress, policy: Policy) -> str | None:
    """Why a connection to ``address`` is refused ("a loopback address; …"), None if allowed."""
    embedded = embedded_ipv4(address)
    if embedded is not None:
        # ::ffff:169.254.169.254 and friends reach the IPv4 address they carry.
        return address_refusal(embedded, policy)
    for network, label in NEVER_ALLOWED:
        if address.version == network.version and address in network:
            return label
    if address.is_link_local:
        return "a link-local address"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_multicast:
        return "a multicast address"
    # Before is_reserved: Python counts ::1 in the reserved ::/8.
    if address.is_loopback:
        private_label = "a loopback address"
    elif address.is_reserved:
        return "a reserved address"
    elif address.is_private or not address.is_global:
        private_label = "a private address"
    else:
        return None
    if policy.allow_private:
        return None
    return f"{private_label}; {policy.private_hint}"


def check_host(
    host: str,
    port: int,
    policy: Policy,
    *,
    label: str = "",
    resolver: Resolver = socket.getaddrinfo,
) -> list[str]:
    """Every address ``host`` denotes or resolves to, each checked; connect to these.

    ``label`` prefixes error messages (an origin such as "https://host:8443"; never a URL
    that may hold a token). Raises AddressRefused when any address is refused (one bad answer
    refuses the host: a connection could pick it), AddressUnresolvable when the name does
    not resolve. Addresses come back in the resolver's order, without zone ids.
    """
    prefix = f"{label}: " if label else ""
    literal = parse_address(host)
    if literal is not None:
        refusal = address_refusal(literal, policy)
        if refusal is not None:
            shown = host if host.strip("[]") == str(literal) else f"{host} ({literal})"
            raise AddressRefused(f"{prefix}{shown} is {refusal}")
        return [str(literal)]
    try:
        answers = resolver(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else "invalid host name"
        raise AddressUnresolvable(f"{prefix}the host name does not resolve ({reason})") from None
    addresses: list[str] = []
    for _family, _type, _proto, _canonical, sockaddr in answers:
        # An IPv6 link-local answer may carry a zone ("fe80::1%eth0"); it is refused anyway.
        text = str(sockaddr[0]).split("%", 1)[0]
        if text not in addresses:
            addresses.append(text)
    if not addresses:
        raise AddressUnresolvable(f"{prefix}the host name does not resolve")
    for text in addresses:
        refusal = address_refusal(ipaddress.ip_address(text), policy)
        if refusal is not None:
            raise AddressRefused(f"{prefix}{host} resolves to {text}, which is {refusal}")
    return addresses


class PinnedBackend(httpcore.SyncBackend):
    """httpcore's network backend, connecting to the checked addresses of one host only.

    The request keeps the host name (Host header, TLS SNI and certificate check), but the TCP
    connection goes to an address ``check_host`` returned, never to a second DNS answer.
    ``deadline`` is a time.monotonic() value; ``phase_seconds`` bounds one connect.
    """

    def __init__(
        self, host: str, addresses: list[str], deadline: float, *, phase_seconds: float
    ) -> None:
        self.host = host
        self.addresses = addresses
        self.deadline = deadline
        self.phase_seconds = phase_seconds

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        if host != self.host:
            raise httpcore.ConnectError(f"refusing to connect to {host}: it was not checked")
        last_error: Exception = httpcore.ConnectError("no address to connect to")
        # Like a browser: the next checked address when one does not answer (IPv6 vs IPv4).
        for address in self.addresses:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise httpcore.ConnectTimeout("timed out")
            try:
                return super().connect_tcp(
                    address,
                    port,
                    timeout=min(timeout or self.phase_seconds, remaining),
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last_error = exc
        raise last_error
