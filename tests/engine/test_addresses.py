"""One outbound-address policy: every textual form of an address is read as the connection
would read it, then sorted into public, private (allowed only by the operator) and never."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from builds.engine.addresses import (
    AddressRefused,
    AddressUnresolvable,
    Policy,
    address_refusal,
    check_host,
    parse_address,
)

PUBLIC_ONLY = Policy(allow_private=False, private_hint="public only, unless X=true")
PRIVATE_OK = Policy(allow_private=True)


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),  # decimal
        ("0x7f000001", "127.0.0.1"),  # one hex number
        ("017700000001", "127.0.0.1"),  # one octal number
        ("0177.0.0.1", "127.0.0.1"),  # octal part
        ("0x7f.1", "127.0.0.1"),  # hex, short
        ("127.1", "127.0.0.1"),  # short: the last part fills the rest
        ("127.0.1", "127.0.0.1"),
        ("10.1", "10.0.0.1"),
        ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
        ("0251.0376.0251.0376", "169.254.169.254"),
        ("2852039166", "169.254.169.254"),
        ("127.0.0.1.", "127.0.0.1"),  # trailing dot
        ("[::1]", "::1"),  # brackets
        ("::ffff:127.0.0.1", "::ffff:7f00:1"),
        ("::ffff:7f00:1", "::ffff:7f00:1"),
        ("[::ffff:7f00:1]", "::ffff:7f00:1"),
        ("fe80::1%eth0", "fe80::1"),  # zone id
        ("[fe80::1%25eth0]", "fe80::1"),
        ("64:ff9b::a9fe:a9fe", "64:ff9b::a9fe:a9fe"),
        ("1.1.1.1", "1.1.1.1"),
    ],
)
def test_it_reads_every_textual_form_of_an_address(text, address):
    assert parse_address(text) == ipaddress.ip_address(address)


@pytest.mark.parametrize(
    "text",
    ["2130706433", "0x7f000001", "0177.0.0.1", "0x7f.1", "127.1", "10.1", "0251.0376.0251.0376"],
)
def test_it_reads_ipv4_forms_as_the_c_library_does(text):
    """git, curl and OpenSSH resolve with the C library: the guard must agree with it."""
    assert str(parse_address(text)) == socket.inet_ntoa(socket.inet_aton(text))


@pytest.mark.parametrize(
    "text",
    [
        "example.com",
        "git.example.com.",
        "1.2.3.4.5",
        "256.1.1.1",
        "1.16777216",
        "08.0.0.1",
        "0x1g.0.0.1",
        "",
        "..",
        "1..1",
        "gitlab-01",
    ],
)
def test_it_leaves_host_names_and_nonsense_to_the_resolver(text):
    assert parse_address(text) is None


@pytest.mark.parametrize(
    ("text", "refused_by_default", "refused_when_private_allowed"),
    [
        ("1.1.1.1", False, False),
        ("2606:4700:4700::1111", False, False),
        ("127.0.0.1", True, False),
        ("2130706433", True, False),
        ("0177.0.0.1", True, False),
        ("0x7f.1", True, False),
        ("127.1", True, False),
        ("::ffff:127.0.0.1", True, False),
        ("::ffff:7f00:1", True, False),
        ("64:ff9b::7f00:1", True, False),  # NAT64 of 127.0.0.1
        ("2002:7f00:1::", True, False),  # 6to4 of 127.0.0.1
        ("::1", True, False),
        ("[::1]", True, False),
        ("10.1", True, False),
        ("192.168.1.20", True, False),
        ("172.16.5.4", True, False),
        ("100.64.0.7", True, False),  # CGNAT
        ("fd12:3456::1", True, False),
        ("169.254.169.254", True, True),
        ("0xa9fea9fe", True, True),
        ("::ffff:169.254.169.254", True, True),
        ("::ffff:a9fe:a9fe", True, True),
        ("64:ff9b::a9fe:a9fe", True, True),
        ("2002:a9fe:a9fe::1", True, True),
        ("fe80::1", True, True),
        ("fe80::1%eth0", True, True),
        ("fd00:ec2::254", True, True),  # AWS metadata over IPv6
        ("100.100.100.200", True, True),  # Alibaba metadata
        ("192.0.0.192", True, True),  # Oracle legacy metadata
        ("0.0.0.0", True, True),
        ("0", True, True),
        ("::", True, True),
        ("224.0.0.251", True, True),
        ("255.255.255.255", True, True),
    ],
)
def test_it_sorts_every_form_into_public_private_and_never(
    text, refused_by_default, refused_when_private_allowed
):
    address = parse_address(text)
    assert address is not None
    assert (address_refusal(address, PUBLIC_ONLY) is not None) == refused_by_default
    assert (address_refusal(address, PRIVATE_OK) is not None) == refused_when_private_allowed


def test_a_refusal_names_the_address_it_read_and_the_setting():
    with pytest.raises(AddressRefused) as refused:
        check_host("0177.0.0.1", 80, PUBLIC_ONLY, label="http://0177.0.0.1")
    assert str(refused.value) == (
        "http://0177.0.0.1: 0177.0.0.1 (127.0.0.1) is a loopback address; "
        "public only, unless X=true"
    )


def test_it_checks_every_address_a_name_resolves_to():
    def resolver(host, port, **_):
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", port)),
        ]

    with pytest.raises(AddressRefused, match=r"resolves to 169\.254\.169\.254"):
        check_host("rebinding.example", 443, PRIVATE_OK, resolver=resolver)


def test_it_returns_the_checked_addresses_to_connect_to():
    assert check_host("localhost", 80, PRIVATE_OK)[0] in ("127.0.0.1", "::1")
    assert check_host("0x7f.1", 80, PRIVATE_OK) == ["127.0.0.1"]
    with pytest.raises(AddressRefused, match="localhost resolves to"):
        check_host("localhost", 80, PUBLIC_ONLY)


def test_a_name_that_does_not_resolve_is_said_so():
    with pytest.raises(AddressUnresolvable, match="does not resolve"):
        check_host("no-such-host.invalid", 80, PUBLIC_ONLY)
