"""A real nginx on 127.0.0.1, the router of blue-green tests (a pytest plugin).

The router is a server like any other: Slipway reaches it over SSH (an sshd target) and runs
``nginx -t`` and ``nginx -s reload`` there as the target's login user. So the test harness
starts this nginx *as that user* (``slipway-test`` when the tests run as root, as in CI),
with everything it writes (pid file, error log, temporary paths, the include file Slipway
rewrites) in a directory that user owns, and a port above 1024: the login user can test and
reload it without root. ``nginx_command`` is how that user runs it (the group's router
setting). A real server would log in as a user allowed ``sudo -n nginx`` instead.

Needs Debian's ``nginx`` package (``/usr/sbin/nginx``), which the Makefile installs with the
other system packages; a missing nginx fails the test with what to install rather than
skipping it, as a missing sshd does.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

NGINX_PATH = Path("/usr/sbin/nginx")
INSTALL_HINT = "install Debian's nginx package: apt-get install -y nginx"
UPSTREAM = "slipway_app"


@dataclass
class Nginx:
    root: Path
    port: int
    username: str
    upstream: str = UPSTREAM
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def include_path(self) -> Path:
        return self.root / "conf.d" / "slipway-app.conf"

    @property
    def nginx_command(self) -> str:
        """How the router's login user runs this nginx (``RouterSpec.nginx_command``)."""
        return f"{NGINX_PATH} -p {self.root}/ -c {self.root}/nginx.conf -e {self.root}/error.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def write_config(self, first_upstream: str) -> None:
        (self.root / "conf.d").mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(exist_ok=True)
        self.include_path.write_text(
            f"upstream {self.upstream} {{\n    server {first_upstream};\n}}\n"
        )
        temp = self.root / "tmp"
        (self.root / "nginx.conf").write_text(
            f"""daemon off;
worker_processes 2;
pid {self.root}/nginx.pid;
error_log {self.root}/error.log;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {self.root}/conf.d/*.conf;
    server {{
        listen 127.0.0.1:{self.port};
        location / {{
            proxy_pass http://{self.upstream};
        }}
    }}
}}
"""
        )
        for path in [self.root, *self.root.rglob("*")]:
            shutil.chown(path, self.username)

    def start(self) -> None:
        log = (self.root / "stderr.log").open("ab")
        self.process = subprocess.Popen(
            [*self.nginx_command.split()],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            user=self.username if os.geteuid() == 0 else None,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"nginx exited with {self.process.returncode}:\n{self.logs()}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.02)
        pytest.fail(f"nginx did not listen on {self.url}:\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(
            path.read_text(errors="replace")
            for path in (self.root / "stderr.log", self.root / "error.log")
            if path.exists()
        )

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture
def nginx_factory() -> Iterator[Callable[..., Nginx]]:
    """Start an nginx in ``directory`` (made, owned by ``username``) proxying to the upstream
    ``upstream`` of its include file, first ``first_upstream`` (host:port)."""
    if not NGINX_PATH.exists():
        pytest.fail(f"{NGINX_PATH} is missing: {INSTALL_HINT}", pytrace=False)
    started: list[Nginx] = []

    def start(
        directory: Path, username: str, first_upstream: str, upstream: str = UPSTREAM
    ) -> Nginx:
        pwd.getpwnam(username)
        directory.mkdir(parents=True, exist_ok=True)
        nginx = Nginx(root=directory, port=_free_port(), username=username, upstream=upstream)
        nginx.write_config(first_upstream)
        started.append(nginx)
        nginx.start()
        return nginx

    yield start
    for nginx in started:
        nginx.stop()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port
