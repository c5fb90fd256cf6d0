"""Real receivers on loopback for notification tests: an HTTP server that records every request
(and answers with the status codes a test lines up, or a redirect), and an SMTP server.

Nothing here ever talks to a non-loopback address: tests that name one (169.254.169.254,
10.0.0.1) check that Slipway refuses it before connecting.
"""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from aiosmtpd.controller import Controller
from django.utils import timezone

from builds.models import Deployment, DeploymentTarget, Kind, Status, TargetStatus, Trigger
from projects.models import NotificationDelivery
from projects.services import project_create
from servers.models import Server
from tests.support.processes import free_port
from tests.support.webserve import serve_in_background

TRUSTED = "SHA256:" + "n" * 43


@dataclass
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class _ReceiverHandler(http.server.BaseHTTPRequestHandler):
    receiver: Receiver

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        self.receiver.record(
            ReceivedRequest(
                method=self.command,
                path=self.path,
                headers={name.lower(): value for name, value in self.headers.items()},
                body=body,
            )
        )
        status, location = self.receiver.next_answer()
        self.send_response(status)
        if location:
            self.send_header("Location", location)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class Receiver:
    """An HTTP server on 127.0.0.1 that keeps every request it gets."""

    tls: ssl.SSLContext | None = None
    requests: list[ReceivedRequest] = field(default_factory=list)
    _answers: list[tuple[int, str]] = field(default_factory=list)
    _default: tuple[int, str] = (200, "")
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        handler = type("Handler", (_ReceiverHandler,), {"receiver": self})
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        if self.tls is not None:
            self.httpd.socket = self.tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = serve_in_background(self.httpd)

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{host}:{self.port}{path}"

    def answer(self, *statuses: int, always: int | None = None) -> None:
        """Answer the next requests with ``statuses`` in turn, then ``always`` (200)."""
        with self._lock:
            self._answers.extend((status, "") for status in statuses)
            if always is not None:
                self._default = (always, "")

    def redirect(self, location: str, *, status: int = 302, always: bool = False) -> None:
        with self._lock:
            if always:
                self._default = (status, location)
            else:
                self._answers.append((status, location))

    def next_answer(self) -> tuple[int, str]:
        with self._lock:
            return self._answers.pop(0) if self._answers else self._default

    def record(self, request: ReceivedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver_factory() -> Iterator[object]:
    receivers: list[Receiver] = []

    def make(tls: ssl.SSLContext | None = None) -> Receiver:
        receiver = Receiver(tls=tls)
        receivers.append(receiver)
        return receiver

    yield make
    for receiver in receivers:
        receiver.stop()


@pytest.fixture
def receiver(receiver_factory) -> Receiver:
    return receiver_factory()


class MailHandler:
    """aiosmtpd handler that keeps every message; refuses recipients at refused.example."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.endswith("@refused.example"):
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 Message accepted for delivery"


@pytest.fixture
def mail_server(settings) -> Iterator[MailHandler]:
    """A real SMTP server on 127.0.0.1, and Slipway's email settings pointing at it."""
    handler = MailHandler()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    settings.SMTP_URL = f"smtp://127.0.0.1:{port}"
    settings.EMAIL_FROM = "Slipway <deploys@slipway.test>"
    settings.EMAIL_HOST = "127.0.0.1"
    settings.EMAIL_PORT = port
    settings.EMAIL_USE_TLS = False
    settings.EMAIL_USE_SSL = False
    # pytest-django swaps in the in-memory backend for every test; these tests want the wire.
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    yield handler
    controller.stop()


@pytest.fixture
def allow_private(settings):
    """The administrator's on-premise switch: loopback receivers become allowed."""
    settings.ALLOW_PRIVATE_NOTIFICATION_TARGETS = True
    return settings


@pytest.fixture(autouse=True)
def private_targets_refused_by_default(settings):
    # Whatever the environment running the tests says, each test starts with the default.
    settings.ALLOW_PRIVATE_NOTIFICATION_TARGETS = False
    settings.SMTP_URL = ""
    settings.EMAIL_FROM = ""


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def shop(alice):
    return project_create(
        owner=alice, name="Shop", repository_url="https://git.example.com/acme/shop.git"
    )


@pytest.fixture
def make_server():
    def make(project, name):
        return Server.objects.create(
            project=project,
            name=name,
            hostname=f"{name}.example.com",
            username="deploy",
            deploy_path=f"/srv/{name}",
            host_key_fingerprint=TRUSTED,
        )

    return make


@pytest.fixture
def web1(shop, make_server):
    return make_server(shop, "web1")


@pytest.fixture
def web2(shop, make_server):
    return make_server(shop, "web2")


@pytest.fixture
def make_deployment(alice):
    """A deployment as the runner leaves it, written straight to the database."""

    def make(
        project,
        servers,
        *,
        status=Status.SUCCEEDED,
        target_status=TargetStatus.SUCCEEDED,
        kind=Kind.DEPLOY,
        error="",
        reason="",
    ):
        now = timezone.now()
        deployment = Deployment.objects.create(
            project=project,
            kind=kind,
            status=status,
            branch="main",
            start_revision="1" * 40,
            end_revision="2" * 40,
            trigger=Trigger.MANUAL,
            triggered_by=alice,
            error=error,
            started_at=now,
            finished_at=None if status == Status.RUNNING else now,
        )
        for position, server in enumerate(servers):
            DeploymentTarget.objects.create(
                deployment=deployment,
                server=server,
                position=position,
                status=target_status,
                release="20260101120000" if target_status == TargetStatus.SUCCEEDED else "",
                reason=reason,
            )
        return deployment

    return make


@pytest.fixture
def make_due():
    """Move a delivery's next attempt into the past, as if its back-off had gone by."""

    def move(delivery: NotificationDelivery, seconds_ago: int = 3600) -> None:
        NotificationDelivery.objects.filter(pk=delivery.pk).update(
            next_attempt_at=timezone.now() - timedelta(seconds=seconds_ago)
        )

    return move
