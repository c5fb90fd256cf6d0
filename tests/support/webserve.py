"""A tiny web server per target that serves the target's `current` release on loopback, as
the application behind a deploy path would: each request reads through the symlink, so a
switch (or a rollback) shows at once."""

from __future__ import annotations

import http.server
import socket
import socketserver
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# How often a server run by serve_in_background looks for shutdown(): the default (0.5 s) made
# each stop cost a quarter of a second on average.
_SHUTDOWN_POLL_SECONDS = 0.05


def serve_in_background(server: socketserver.BaseServer) -> threading.Thread:
    """Run ``server.serve_forever`` in a daemon thread (started); ``server.shutdown()`` stops
    it within ~50 ms."""
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": _SHUTDOWN_POLL_SECONDS}, daemon=True
    )
    thread.start()
    return thread


class _Handler(http.server.BaseHTTPRequestHandler):
    root: Path

    def do_GET(self) -> None:
        path = (self.root / "current" / self.path.lstrip("/").split("?")[0]).resolve()
        try:
            body = path.read_bytes()
        except OSError:
            self.send_response(404)
            self.end_headers()
            return
        # A release whose health file says so answers 503, as a broken app would.
        status = 503 if body.strip().startswith(b"unhealthy") else 200
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    """A client that hangs up mid-answer (a health check past its timeout, a test that has
    seen enough) is no error of the server's: socketserver would print a traceback."""

    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class ReleaseServer:
    def __init__(self, deploy_path: Path) -> None:
        handler = type("Handler", (_Handler,), {"root": deploy_path})
        self.httpd = _QuietServer(("127.0.0.1", 0), handler)
        self.port = self.httpd.server_address[1]
        self.thread = serve_in_background(self.httpd)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def release_server_factory() -> Iterator[object]:
    servers: list[ReleaseServer] = []

    def make(deploy_path: Path) -> ReleaseServer:
        server = ReleaseServer(deploy_path)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()
