"""The webhook endpoint under ASGI: ``POST /hooks/<token>/`` answered without Django's request
cycle.

A Git host waits for the answer (GitHub gives up after 10 s) and a busy repository sends
bursts, so the door must be cheap. Through Django's ASGI handler every request starts a
thread of its own and crosses between the event loop and threads four times on its way
through the middleware (sessions, sign-in, two-factor, CSP...), none of which a delivery
uses: it is authenticated by its URL token and its signature. This ASGI layer answers those
requests itself: it checks the Host header against ALLOWED_HOSTS as Django would, reads the
body (bounded), and runs builds.webhooks.answer, the same function as the Django view, on a
fixed pool of threads. Every other request, a GET to the same URL included, goes to Django.

Database errors of deployer.db.UNAVAILABLE_ERRORS answer 503 with Retry-After, as
deployer.views.server_error does for the Django path, and for RETRY_AFTER_SECONDS after one
every delivery is answered 503 at once (rather than each waiting out the database pool's
timeout in turn for a thread); anything else is logged and answers 500. A delivery whose
sender disconnects before the end of its body is dropped unrecorded; when the bodies waiting
for a thread pass WAITING_BYTES, the next delivery is answered 503 at once.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.conf import settings
from django.db import close_old_connections, connections
from django.http.request import split_domain_port, validate_host
from django.utils.datastructures import CaseInsensitiveMapping
from django.utils.http import parse_header_parameters

from builds.webhooks import MAX_BODY_BYTES, Rejected, answer
from deployer.db import RETRY_AFTER_SECONDS, UNAVAILABLE_ERRORS, UNAVAILABLE_MESSAGE

logger = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[Mapping[str, Any]]]
Send = Callable[[Mapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# deployer/urls.py's `hooks/<token:token>/`: one segment of token characters (anything else
# goes on to Django, which answers 404).
_HOOK_PATH = re.compile(r"/hooks/(?P<token>[A-Za-z0-9_-]{1,128})/")
# What Django's security, clickjacking and CSP middleware add to every answer
# (deployer/settings.py's SECURE_*, X_FRAME_OPTIONS); the policy is the strictest, since a
# JSON answer loads nothing.
_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", settings.SECURE_REFERRER_POLICY.encode()),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"x-frame-options", settings.X_FRAME_OPTIONS.encode()),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
]
#: Bytes of bodies that may wait for the door's threads at once; a delivery that would go
#: beyond is answered 503 at once (a Git host's push is a few kB, a body at most 1 MB). One
#: delivery is always let in.
WAITING_BYTES = 64 * 1024 * 1024


class WebhookDoor:
    """ASGI middleware: answers webhook deliveries, hands everything else to ``app``.

    ``threads`` bounds the deliveries answered at once; more wait for a thread, never for a
    new one. The default, half the web process's database pool (SLIPWAY_DB_POOL_SIZE), leaves
    the other half to the dashboard and the API during a burst of pushes.
    """

    def __init__(self, app: ASGIApp, *, threads: int | None = None) -> None:
        self.app = app
        self.threads = threads or max(1, settings.DB_POOL_SIZE // 2)
        self._executor = ThreadPoolExecutor(
            max_workers=self.threads, thread_name_prefix="slipway-hooks"
        )
        # Bytes of the bodies read and waiting for a thread or in one (the event loop's own).
        self._waiting_bytes = 0
        # Until when (time.monotonic()) the database counts as away: deliveries meanwhile are
        # answered 503 at once instead of each waiting out the pool's timeout in turn.
        self._unavailable_until = 0.0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        token = _delivery_token(scope)
        if token is None:
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        # A Host header that is there but empty is refused, as Django refuses it; only a
        # request without one (HTTP/1.0) falls back to the server's name.
        host = headers["Host"] if "Host" in headers else _server_name(scope)
        if not _host_allowed(host):
            # Django's CommonMiddleware refuses such a request with 400 (DisallowedHost).
            await _respond(send, 400, {"detail": "Bad Request: the Host header is not allowed"})
            return
        body, too_large, complete = await _read_body(headers, receive)
        if not complete:
            # The sender went away before its body ended: nothing is recorded, nobody hears.
            return
        if time.monotonic() < self._unavailable_until:
            await _respond(send, *_unavailable())
            return
        if self._waiting_bytes and self._waiting_bytes + len(body) > WAITING_BYTES:
            await _respond(send, *_busy())
            return
        content_type = parse_header_parameters(headers.get("Content-Type", ""))[0]
        loop = asyncio.get_running_loop()
        work = functools.partial(
            self._answer_in_thread, token, headers, body, too_large, content_type
        )
        self._waiting_bytes += len(body)
        try:
            status, payload, extra = await loop.run_in_executor(self._executor, work)
        finally:
            self._waiting_bytes -= len(body)
        await _respond(send, status, payload, extra)

    def _answer_in_thread(
        self,
        token: str,
        headers: CaseInsensitiveMapping[str],
        body: bytes,
        too_large: bool,
        content_type: str,
    ) -> tuple[int, dict[str, Any], list[tuple[bytes, bytes]]]:
        if time.monotonic() < self._unavailable_until:
            # It went away while this delivery waited for a thread.
            return _unavailable()

        def read() -> bytes:
            if too_large:
                raise Rejected(413, f"The body is larger than {MAX_BODY_BYTES} bytes")
            return body

        # What Django's request_started / request_finished do: drop a connection that broke or
        # outlived CONN_MAX_AGE first; hand this thread's connection back to the pool after.
        close_old_connections()
        try:
            status, payload = answer(
                token=token, headers=headers, read=read, content_type=content_type
            )
            return status, payload, []
        except UNAVAILABLE_ERRORS:
            logger.warning("Webhook delivery refused with 503: the database is unavailable")
            self._unavailable_until = time.monotonic() + RETRY_AFTER_SECONDS
            return _unavailable()
        except Exception:
            logger.exception("Internal error while answering a webhook delivery")
            return 500, {"detail": "Internal error: the delivery was not recorded."}, []
        finally:
            connections.close_all()


def _unavailable() -> tuple[int, dict[str, Any], list[tuple[bytes, bytes]]]:
    retry = [(b"retry-after", str(RETRY_AFTER_SECONDS).encode())]
    return 503, {"detail": UNAVAILABLE_MESSAGE}, retry


def _busy() -> tuple[int, dict[str, Any], list[tuple[bytes, bytes]]]:
    retry = [(b"retry-after", str(RETRY_AFTER_SECONDS).encode())]
    detail = "Slipway is answering too many deliveries at once; nothing was recorded. Try again."
    return 503, {"detail": detail}, retry


def _delivery_token(scope: Scope) -> str | None:
    if scope["type"] != "http" or scope["method"] != "POST":
        return None
    path = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    match = _HOOK_PATH.fullmatch(path)
    return match["token"] if match else None


def _headers(scope: Scope) -> CaseInsensitiveMapping[str]:
    # As Django's ASGIRequest reads them: latin-1, repeated headers joined with a comma.
    joined: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", ()):
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        joined[name] = f"{joined[name]},{value}" if name in joined else value
    return CaseInsensitiveMapping(joined)


def _server_name(scope: Scope) -> str:
    # Without a Host header Django takes the server's own name, as WSGI's SERVER_NAME.
    server = scope.get("server") or ("", None)
    return str(server[0] or "")


def _host_allowed(host: str) -> bool:
    domain, _port = split_domain_port(host)
    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    return bool(domain) and validate_host(domain, allowed)


async def _read_body(
    headers: CaseInsensitiveMapping[str], receive: Receive
) -> tuple[bytes, bool, bool]:
    """(body, over MAX_BODY_BYTES, complete). Over the limit, nothing is kept (the answer is a
    413); the declared Content-Length is checked before anything is read. Not complete: the
    sender disconnected before the body's end, so the request is dropped, as Django drops it
    (a body cut short must never be taken for the whole delivery)."""
    try:
        declared = int(headers.get("Content-Length") or 0)
    except ValueError:
        declared = 0
    if declared > MAX_BODY_BYTES:
        return b"", True, True
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"", False, False
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return b"", True, True
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), False, True


async def _respond(
    send: Send,
    status: int,
    payload: dict[str, Any],
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = json.dumps(payload).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *_SECURITY_HEADERS,
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
