"""A real FTP / FTPS server on loopback (pyftpdlib), run in a thread by the tests.

``ftpd_factory(tls=...)`` starts one serving a fresh folder; the server records every file
it received (``stored``: paths relative to its root) so that a test can count what was sent.
FTPS servers get a self-signed certificate made here (``fingerprint`` is its SHA-256)."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import ipaddress
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler, TLS_FTPHandler
from pyftpdlib.ioloop import IOLoop
from pyftpdlib.servers import FTPServer

from builds.engine.ftp import FtpEndpoint, normalize_fingerprint

USER = "deploy"
PASSWORD = "ftp-s3cret-pass"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def self_signed_certificate(
    folder: Path, name: str = "localhost", *, authority: Path | None = None
) -> tuple[Path, str]:
    """A PEM file holding a new certificate for ``name`` and 127.0.0.1 and its key, and the
    certificate's fingerprint. Self-signed, or signed by a new certificate authority whose
    certificate is written to ``authority`` (for SSL_CERT_FILE)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    issuer_key, issuer = key, _name(name)
    if authority is not None:
        issuer_key, issuer = ec.generate_private_key(ec.SECP256R1()), _name("Slipway test CA")
        ca = (
            x509.CertificateBuilder()
            .subject_name(issuer)
            .issuer_name(issuer)
            .public_key(issuer_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
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
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(issuer_key.public_key()), critical=False
            )
            .sign(issuer_key, hashes.SHA256())
        )
        authority.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    )
    if authority is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        ).add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    certificate = builder.sign(issuer_key, hashes.SHA256())
    path = folder / f"{name}-{x509.random_serial_number()}.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        + certificate.public_bytes(serialization.Encoding.PEM)
    )
    der = certificate.public_bytes(serialization.Encoding.DER)
    return path, normalize_fingerprint(hashlib.sha256(der).hexdigest())


@dataclasses.dataclass
class FtpTarget:
    root: Path
    port: int
    tls: bool
    fingerprint: str
    stored: list[str]
    commands: list[str]
    handler: type[Any]

    @property
    def deploy_path(self) -> Path:
        return self.root / "site"

    def endpoint(self, **overrides: Any) -> FtpEndpoint:
        values: dict[str, Any] = {
            "hostname": "127.0.0.1",
            "port": self.port,
            "username": USER,
            "password": PASSWORD,
            "tls": self.tls,
            "certificate_fingerprint": self.fingerprint if self.tls else None,
            "retries": 1,
        }
        values.update(overrides)
        return FtpEndpoint(**values)

    def sent(self) -> list[str]:
        """The deployed files the server received (their final paths, sorted), leaving out
        Slipway's own (manifest, listing, lock)."""
        return sorted(
            path.removesuffix(".slipway-tmp") for path in self.stored if "/.slipway-" not in path
        )


@pytest.fixture
def ftpd_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    running: list[tuple[FTPServer, threading.Event, threading.Thread]] = []
    # pyftpdlib logs every command, and its start at each turn of our loop.
    logging.getLogger("pyftpdlib").setLevel(logging.WARNING)

    def start(
        *,
        tls: bool = False,
        masquerade: str | None = None,
        authority: Path | None = None,
        resume: bool = True,
    ) -> FtpTarget:
        """``authority``: sign the certificate with a new CA written there (else self-signed).
        ``resume=False``: the server resumes no TLS session (no tickets, no cache), so every
        data connection makes a full handshake."""
        root = tmp_path_factory.mktemp("ftproot")
        (root / "site").mkdir()
        authorizer = DummyAuthorizer()
        authorizer.add_user(USER, PASSWORD, str(root), perm="elradfmwMT")
        stored: list[str] = []
        commands: list[str] = []
        base: type[Any] = TLS_FTPHandler if tls else FTPHandler
        fingerprint = ""
        attributes: dict[str, Any] = {"authorizer": authorizer, "banner": "Slipway test FTP"}
        if tls:
            certfile, fingerprint = self_signed_certificate(
                tmp_path_factory.mktemp("cert"), authority=authority
            )
            attributes.update(
                certfile=str(certfile),
                ssl_context=None,
                tls_control_required=True,
                tls_data_required=True,
            )
        if masquerade:
            attributes["masquerade_address"] = masquerade

        def on_file_received(self: Any, file: str) -> None:
            stored.append(Path(file).relative_to(root).as_posix())

        def pre_process_command(self: Any, line: str, cmd: str, arg: str) -> None:
            commands.append(cmd)
            base.pre_process_command(self, line, cmd, arg)

        attributes["on_file_received"] = on_file_received
        attributes["pre_process_command"] = pre_process_command
        handler: Any = type("RecordingHandler", (base,), attributes)
        if tls and not resume:
            context = handler.get_ssl_context()
            context.set_options(SSL.OP_NO_TICKET)
            context.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        # An IOLoop of its own: pyftpdlib's default is one per process, which two servers
        # polled from two threads would share.
        server = FTPServer(("127.0.0.1", 0), handler, ioloop=IOLoop())
        port = server.socket.getsockname()[1]
        stop = threading.Event()

        def serve() -> None:
            while not stop.is_set():
                server.serve_forever(timeout=0.05, blocking=False, handle_exit=False)
            with contextlib.suppress(OSError):
                server.close_all()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        running.append((server, stop, thread))
        return FtpTarget(root, port, tls, fingerprint, stored, commands, handler)

    yield start
    for _, stop, thread in running:
        stop.set()
        thread.join(timeout=10)


@pytest.fixture
def ftp_target(ftpd_factory: Any) -> FtpTarget:
    return ftpd_factory()


@pytest.fixture
def ftps_target(ftpd_factory: Any) -> FtpTarget:
    return ftpd_factory(tls=True)
