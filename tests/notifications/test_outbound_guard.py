"""Notification URLs cannot reach Slipway's own network: checked when saved, and again (with
the connection pinned to the checked address) at every send and every redirect.

Every request in these tests goes to 127.0.0.1. The other addresses named here are refused
before a connection is opened, which is the point of the guard.
"""

from __future__ import annotations

import ipaddress
import json
import ssl
from datetime import UTC, datetime, timedelta

import pytest

from builds import outbound
from builds.engine.errors import InvalidInput
from builds.notifications import deployment_event, notification_create, notification_update
from builds.tasks import send_notification_delivery
from projects.models import DeliveryStatus, Notification

pytestmark = pytest.mark.django_db

SECRET = "whsec-3f9a8b7c6d5e4f3a2b1c"

INTERNAL_URLS = [
    "http://127.0.0.1:6379/",
    "http://localhost/hook",
    "http://[::1]:8000/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://10.0.0.1/hook",
    "https://192.168.1.20/hook",
    "http://172.16.5.4/",
    "http://[fd12:3456::1]/",
    "http://2130706433/",  # 127.0.0.1 written as one number
    "http://0x7f.1/",  # and in hexadecimal
    "http://[::ffff:127.0.0.1]/",
    "http://0.0.0.0:8000/",
    "http://100.64.0.7/",  # carrier-grade NAT
]


@pytest.mark.parametrize("url", INTERNAL_URLS)
def test_it_refuses_an_internal_url_when_it_is_saved(shop, alice, url):
    with pytest.raises(InvalidInput) as refused:
        notification_create(project=shop, actor=alice, kind="slack", url=url)
    assert refused.value.field == "url"
    assert "public addresses only" in str(refused.value) or "address" in str(refused.value)
    assert not Notification.objects.exists()


def test_it_says_which_setting_allows_private_targets(shop, alice):
    with pytest.raises(InvalidInput, match="SLIPWAY_ALLOW_PRIVATE_NOTIFICATION_TARGETS=true"):
        notification_create(project=shop, actor=alice, kind="teams", url="http://10.0.0.1/hook")


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fd00:ec2::254]/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/",
        "http://[64:ff9b::a9fe:a9fe]/",  # NAT64 form of 169.254.169.254
        "http://100.100.100.200/latest/meta-data/",
        "http://[fe80::1]/",
        "http://0.0.0.0/",
        "http://224.0.0.1/",
        "http://240.0.0.1/",
    ],
)
def test_it_refuses_metadata_and_link_local_urls_even_when_private_targets_are_allowed(
    allow_private, shop, alice, url
):
    with pytest.raises(InvalidInput) as refused:
        notification_create(project=shop, actor=alice, kind="discord", url=url)
    assert refused.value.field == "url"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://1.1.1.1/hook", "only http:// and https://"),
        ("file:///etc/passwd", "only http:// and https://"),
        ("gopher://1.1.1.1:70/", "only http:// and https://"),
        ("https://user:password@1.1.1.1/hook", "user name or password"),
        ("https://1.1.1.1/a b", "spaces"),
        ("https:///hook", "no host name"),
        ("https://1.1.1.1:99999/", "port"),
    ],
)
def test_it_refuses_what_is_not_a_plain_http_url(shop, alice, url, reason):
    with pytest.raises(InvalidInput, match=reason) as refused:
        notification_create(project=shop, actor=alice, kind="slack", url=url)
    assert refused.value.field == "url"


def test_it_accepts_a_public_address(shop, alice):
    # An address literal: checking it needs no DNS and sends nothing.
    notification = notification_create(
        project=shop, actor=alice, kind="slack", url="https://1.1.1.1/services/T1/B2/x"
    )
    assert notification.url == "https://1.1.1.1/services/T1/B2/x"
    assert notification.destination == "https://1.1.1.1"


def test_it_checks_a_changed_url_again(shop, alice):
    notification = notification_create(
        project=shop, actor=alice, kind="slack", url="https://1.1.1.1/services/T1/B2/x"
    )
    with pytest.raises(InvalidInput) as refused:
        notification_update(notification=notification, actor=alice, url="http://10.1.2.3/")
    assert refused.value.field == "url"
    notification.refresh_from_db()
    assert notification.url == "https://1.1.1.1/services/T1/B2/x"


@pytest.mark.parametrize(
    ("address", "refused_by_default", "refused_with_setting"),
    [
        ("1.1.1.1", False, False),
        ("2606:4700:4700::1111", False, False),
        ("127.0.0.1", True, False),
        ("::1", True, False),
        ("10.0.0.1", True, False),
        ("fd12::1", True, False),
        ("100.64.0.1", True, False),
        ("::ffff:10.0.0.1", True, False),
        ("169.254.169.254", True, True),
        ("169.254.170.2", True, True),
        ("fe80::1", True, True),
        ("fd00:ec2::254", True, True),
        ("::ffff:169.254.169.254", True, True),
        ("2002:a9fe:a9fe::1", True, True),  # 6to4 carrying 169.254.169.254
        ("0.0.0.0", True, True),
        ("::", True, True),
        ("224.0.0.251", True, True),
        ("ff02::1", True, True),
        ("255.255.255.255", True, True),
        ("192.0.0.192", True, True),
    ],
)
def test_it_sorts_addresses_into_public_private_and_never_allowed(
    address, refused_by_default, refused_with_setting
):
    ip = ipaddress.ip_address(address)
    assert (outbound.address_refusal(ip, allow_private=False) is not None) == refused_by_default
    assert (outbound.address_refusal(ip, allow_private=True) is not None) == refused_with_setting


# --------------------------------------------------------------------------- at send time


def send(delivery):
    send_notification_delivery.apply(args=(delivery.pk,), throw=True)
    delivery.refresh_from_db()
    return delivery


@pytest.fixture
def hook_to(shop, alice, settings):
    """A webhook notification saved while private targets were allowed."""

    def make(url):
        settings.ALLOW_PRIVATE_NOTIFICATION_TARGETS = True
        return notification_create(
            project=shop, actor=alice, kind="webhook", url=url, secret=SECRET
        )

    return make


def test_it_refuses_at_send_time_an_address_allowed_when_it_was_saved(
    hook_to, settings, receiver, shop, web1, make_deployment
):
    hook_to(receiver.url())
    [delivery] = deployment_event(make_deployment(shop, [web1]), "succeeded")
    # The administrator turns the setting off (or the host's DNS now answers 127.0.0.1).
    settings.ALLOW_PRIVATE_NOTIFICATION_TARGETS = False
    delivery = send(delivery)

    assert delivery.status == DeliveryStatus.FAILED and delivery.attempts == 1
    assert delivery.error == (
        f"http://127.0.0.1:{receiver.port}: 127.0.0.1 is a loopback address; notifications go "
        "to public addresses only, unless the administrator sets "
        "SLIPWAY_ALLOW_PRIVATE_NOTIFICATION_TARGETS=true"
    )
    assert delivery.status_code is None and delivery.next_attempt_at is None
    assert receiver.requests == []


def test_it_refuses_a_redirect_to_the_metadata_service(
    allow_private, hook_to, receiver, shop, web1, make_deployment
):
    hook_to(receiver.url())
    receiver.redirect("http://169.254.169.254/latest/meta-data/iam/security-credentials/")
    [delivery] = deployment_event(make_deployment(shop, [web1]), "succeeded")
    delivery = send(delivery)

    assert delivery.status == DeliveryStatus.FAILED
    assert delivery.error.startswith(
        f"redirected by http://127.0.0.1:{receiver.port} to http://169.254.169.254: "
        "169.254.169.254 is a link-local address"
    )
    assert "security-credentials" not in delivery.error
    assert len(receiver.requests) == 1


def test_it_refuses_a_redirect_to_another_scheme(
    allow_private, hook_to, receiver, shop, web1, make_deployment
):
    hook_to(receiver.url())
    receiver.redirect("file:///etc/passwd")
    [delivery] = deployment_event(make_deployment(shop, [web1]), "succeeded")
    delivery = send(delivery)
    assert delivery.status == DeliveryStatus.FAILED
    assert "only http:// and https://" in delivery.error


def test_it_follows_a_redirect_with_the_same_signed_body(
    allow_private, hook_to, receiver_factory, shop, web1, make_deployment
):
    first, second = receiver_factory(), receiver_factory()
    hook_to(first.url("/old"))
    first.redirect(second.url("/new"), status=308)
    [delivery] = deployment_event(make_deployment(shop, [web1]), "succeeded")
    delivery = send(delivery)

    assert delivery.status == DeliveryStatus.SENT and delivery.status_code == 200
    [moved], [arrived] = first.requests, second.requests
    assert arrived.path == "/new" and arrived.method == "POST"
    assert arrived.body == moved.body
    assert arrived.headers["x-slipway-signature"] == moved.headers["x-slipway-signature"]
    assert arrived.headers["host"] == f"127.0.0.1:{second.port}"


def test_it_follows_a_relative_redirect(
    allow_private, hook_to, receiver, shop, web1, make_deployment
):
    hook_to(receiver.url("/old"))
    receiver.redirect("/new?v=2", status=301)
    [delivery] = deployment_event(make_deployment(shop, [web1]), "succeeded")
    assert send(delivery).status == DeliveryStatus.SENT
    assert [r.path for r in receiver.requests] == ["/old", "/new?v=2"]


def test_it_stops_after_three_redirects(
    allow_private, hook_to, receiver, shop, web1, make_deployment
):
    hook_to(receiver.url("/loop"))
    receiver.redirect(receiver.url("/loop"), always=True)
    [delivery] = deployment_event(make_deployment(shop, [web1]), "succeeded")
    delivery = send(delivery)

    assert delivery.status == DeliveryStatus.RETRYING
    assert "more than 3 redirects" in delivery.error
    assert len(receiver.requests) == 4


def test_it_connects_to_the_checked_address_but_keeps_the_host_name(
    allow_private, hook_to, receiver, shop, web1, make_deployment
):
    hook_to(receiver.url(host="localhost"))
    [delivery] = deployment_event(make_deployment(shop, [web1]), "succeeded")
    assert send(delivery).status == DeliveryStatus.SENT
    [request] = receiver.requests
    assert request.headers["host"] == f"localhost:{receiver.port}"


# --------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    """A CA and a certificate it issued for "localhost" (not for 127.0.0.1)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    root = tmp_path_factory.mktemp("tls")
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Slipway test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    (root / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (root / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (root / "leaf.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return root


@pytest.fixture
def tls_receiver(certificates, receiver_factory):
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certificates / "leaf.pem", certificates / "leaf.key")
    names: list[str | None] = []
    server.sni_callback = lambda sock, name, context: names.append(name)
    receiver = receiver_factory(tls=server)
    receiver.server_names = names
    return receiver


def test_it_verifies_tls_against_the_host_name_while_connecting_to_the_checked_address(
    certificates, tls_receiver
):
    client = ssl.create_default_context(cafile=str(certificates / "ca.pem"))
    response = outbound.post(
        tls_receiver.url(host="localhost"),
        b'{"ok":true}',
        {"Content-Type": "application/json"},
        allow_private=True,
        ssl_context=client,
    )
    assert (
        response.status_code == 200 and response.origin == f"https://localhost:{tls_receiver.port}"
    )
    [request] = tls_receiver.requests
    assert request.headers["host"] == f"localhost:{tls_receiver.port}"
    assert json.loads(request.body) == {"ok": True}
    assert tls_receiver.server_names == ["localhost"]


def test_it_refuses_a_certificate_that_does_not_name_the_host(certificates, tls_receiver):
    client = ssl.create_default_context(cafile=str(certificates / "ca.pem"))
    with pytest.raises(outbound.OutboundError, match="certificate") as failed:
        outbound.post(
            tls_receiver.url(host="127.0.0.1"),
            b"{}",
            {},
            allow_private=True,
            ssl_context=client,
        )
    assert not failed.value.permanent
    assert tls_receiver.requests == []
