"""The end-to-end bed: a real `manage.py serve` (embedded mode: SQLite in a temporary data
directory, the in-process worker running the deployments), driven by Debian's Chromium
through Playwright.

The served app always runs embedded, whatever DATABASE_URL and REDIS_URL the test run has:
it gets a clean environment (tests.support.processes.clean_env). Tests set up what is not
under test through `manage.py shell`, and read the results like a user would, from pages.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import ROOT, clean_env, free_port, manage, wait_for_http

ADMIN_PASSWORD = "admin-password-e2e-1"
BOB_PASSWORD = "bob-password-e2e-1"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Playwright waits this long for an element or a condition before a test fails.
WAIT_MS = 20_000


@dataclass
class App:
    """The served Slipway: its address, environment and log."""

    base_url: str
    env: dict[str, str]
    data_dir: Path
    log_path: Path

    def shell(self, code: str) -> Any:
        """Run Python in `manage.py shell` against the app's database; the last line printed
        is read as JSON."""
        result = manage("shell", "-c", code, env=self.env, timeout=60)
        assert result.returncode == 0, result.stderr
        lines = [line for line in result.stdout.splitlines() if line.strip()]
        return json.loads(lines[-1]) if lines else None

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


@pytest.fixture(scope="session")
def slipway_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    data_dir = tmp_path_factory.mktemp("slipway-e2e")
    port = free_port()
    env = clean_env(
        SLIPWAY_DATA_DIR=str(data_dir),
        SLIPWAY_BIND=f"127.0.0.1:{port}",
        SLIPWAY_ALLOW_LOCAL_REPOSITORIES="true",
        SLIPWAY_ADMIN_PASSWORD=ADMIN_PASSWORD,
        SLIPWAY_WORKER_CONCURRENCY="2",
    )
    for command in (("migrate", "--noinput"), ("ensure_admin",)):
        result = manage(*command, env=env)
        assert result.returncode == 0, result.stderr
    app = App(
        base_url=f"http://127.0.0.1:{port}",
        env=env,
        data_dir=data_dir,
        log_path=data_dir / "serve.log",
    )
    app.shell(
        "from django.contrib.auth.models import User; "
        f"User.objects.create_user('bob', password={BOB_PASSWORD!r}); print(1)"
    )
    with app.log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "manage.py", "serve"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        wait_for_http(app.base_url + "/healthz", process)
        yield app
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    # Started once for these browser tests and stopped after the last of them: Playwright's
    # sync API keeps an event loop running in this thread, which Django's ORM (in the test
    # modules outside this package) would refuse. Each test still gets fresh contexts.
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        yield browser
        browser.close()


@pytest.fixture
def new_page(browser, slipway_app, request) -> Iterator[Any]:
    """Open pages in fresh browser contexts (one per persona); on failure, each is saved
    as a screenshot in test-artifacts/ and the app's log is printed."""
    contexts = []

    def open_page(*, width: int = 1280, height: int = 900) -> Any:
        context = browser.new_context(
            viewport={"width": width, "height": height}, base_url=slipway_app.base_url
        )
        context.set_default_timeout(WAIT_MS)
        contexts.append(context)
        return context.new_page()

    yield open_page

    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        ARTIFACTS.mkdir(exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)
        for number, context in enumerate(contexts):
            for index, page in enumerate(context.pages):
                path = ARTIFACTS / f"{name}-{number}-{index}.png"
                try:
                    page.screenshot(path=str(path), full_page=True)
                except Exception as exc:  # a crashed page must not hide the real failure
                    print(f"screenshot {path} failed: {exc}")
                else:
                    print(f"screenshot: {path}")
        print("--- the app's log ---\n" + slipway_app.log_tail())
    for context in contexts:
        context.close()


@pytest.fixture
def page(new_page) -> Any:
    return new_page()


def sign_in(page: Any, username: str = "admin", password: str = ADMIN_PASSWORD) -> None:
    page.goto("/login/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/$"))


def create_project(
    app: App,
    *,
    name: str,
    repository_url: str,
    target: Any = None,
    build_commands: tuple[str, ...] = (),
    members: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A project owned by admin, with one trusted server on ``target`` (authorised for the
    project's key), made directly in the database: for tests that are not about set-up."""
    server = ""
    if target is not None:
        server = (
            "server = Server.objects.create(project=project, name='web1', "
            f"hostname={target.hostname!r}, port={target.port}, username={target.username!r}, "
            f"deploy_path={str(target.deploy_path)!r}, environment='production', "
            f"host_key_fingerprint={target.host_key_fingerprint!r}); out['server'] = server.pk"
        )
    code = "\n".join(
        [
            "import json",
            "from django.contrib.auth.models import User",
            "from projects.models import BuildCommand, Membership",
            "from projects.services import project_create",
            "from servers.models import Server",
            "owner = User.objects.get(username='admin')",
            f"project = project_create(owner=owner, name={name!r}, repository_url={repository_url!r})",
            "out = {'slug': project.slug, 'public_key': project.public_key}",
            server,
            *[
                f"BuildCommand.objects.create(project=project, position={n}, command={c!r})"
                for n, c in enumerate(build_commands)
            ],
            *[
                f"Membership.objects.create(project=project, user=User.objects.get(username={u!r}), role={r!r})"
                for u, r in (members or {}).items()
            ],
            "print(json.dumps(out))",
        ]
    )
    created: dict[str, Any] = app.shell(code)
    if target is not None:
        target.authorize(created["public_key"])
    return created


def stored_log(page: Any, deployment_id: int) -> list[dict[str, Any]]:
    """The deployment's stored log, read from the API with the page's session."""
    lines: list[dict[str, Any]] = []
    after = 0
    while True:
        response = page.request.get(f"/api/v1/deployments/{deployment_id}/log/?after={after}")
        assert response.ok, response.text()
        body = response.json()
        lines += body["lines"]
        if not body["lines"]:
            return lines
        after = body["next_after"]


def deployment_id_of(page: Any) -> int:
    match = re.search(r"/deployments/(\d+)/", page.url)
    assert match, page.url
    return int(match.group(1))


def screenshots_dir() -> Path | None:
    """Where to save the documentation's screenshots (SLIPWAY_SCREENSHOTS=docs/screenshots)."""
    value = os.environ.get("SLIPWAY_SCREENSHOTS")
    return (ROOT / value) if value else None
