"""A tiny web server per target that serves the target's `current` release on loopback, as
the application behind a deploy path would: each request reads through the symlink, so a
switch (or a rollback) shows at once."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest


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


class ReleaseServer:
    def __init__(self, deploy_path: Path) -> None:
        handler = type("Handler", (_Handler,), {"root": deploy_path})
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

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
