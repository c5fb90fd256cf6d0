"""The dashboard under its Content-Security-Policy, in Chromium: every main page, the live log
(a WebSocket) and the API docs (Swagger UI) load and work without a single violation."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from tests.dashboard.e2e.conftest import sign_in

pytestmark = [pytest.mark.browser, pytest.mark.timeout(180)]

# Injected by Playwright before any page script (not subject to the page's CSP): it records
# every violation the browser reports, whatever the page itself does.
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", function (event) {
  window.__cspViolations.push(
    event.effectiveDirective + " blocked " + (event.blockedURI || "inline") +
    " at " + event.sourceFile + ":" + event.lineNumber
  );
});
"""

HISTORY = """
import json
from django.contrib.auth.models import User
from django.utils import timezone
from builds.models import Deployment, DeploymentTarget, LogLine, Status, TargetStatus
from projects.models import Command
from projects.services import project_create
from servers.models import Release, Server, ServerGroup
admin = User.objects.get(username='admin')
project = project_create(owner=admin, name='Guarded', repository_url='https://git.example.com/g.git')
server = Server.objects.create(project=project, name='web1', hostname='web1.example.com',
    username='deploy', deploy_path='/srv/guarded', environment='production',
    host_key_fingerprint='SHA256:' + 'k' * 43)
now = timezone.now()
done = Deployment.objects.create(project=project, status=Status.SUCCEEDED, triggered_by=admin,
    end_revision='1' * 40, started_at=now, finished_at=now)
DeploymentTarget.objects.create(deployment=done, server=server, status=TargetStatus.SUCCEEDED,
    release='20261120-000000000-1111111')
Release.objects.create(server=server, name='20261120-000000000-1111111', revision='1' * 40,
    deployment=done, live=True)
running = Deployment.objects.create(project=project, status=Status.RUNNING, triggered_by=admin,
    started_at=now, heartbeat_at=now, log_seq=2)
DeploymentTarget.objects.create(deployment=running, server=server, status=TargetStatus.RUNNING,
    files_total=10, files_done=4)
LogLine.objects.create(deployment=running, seq=1, text='\\x1b[32mcompiling\\x1b[0m')
LogLine.objects.create(deployment=running, seq=2, text='uploading')
command = Command.objects.create(project=project, command='php artisan migrate')
group = ServerGroup.objects.create(project=project, name='all')
print(json.dumps({'slug': project.slug, 'server': server.pk, 'done': done.pk,
    'running': running.pk, 'command': command.pk, 'group': group.pk}))
"""

SETTING_KINDS = (
    "commands",
    "config-files",
    "excluded-files",
    "environment",
    "build-commands",
    "groups",
    "health-checks",
    "notifications",
)


def _violations(page: Any) -> list[str]:
    return list(page.evaluate("window.__cspViolations || []"))


def test_every_main_page_passes_the_csp(new_page, slipway_app):
    made = slipway_app.shell(HISTORY)
    slug, server = made["slug"], made["server"]
    page = new_page()
    page.add_init_script(RECORD_VIOLATIONS)
    console: list[str] = []
    page.on(
        "console",
        lambda message: (
            console.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )

    login = page.goto("/login/")
    assert login is not None
    assert "script-src 'self'" in login.headers["content-security-policy"]
    sign_in(page)

    paths = [
        "/",
        "/projects/new/",
        f"/projects/{slug}/",
        f"/projects/{slug}/deployments/",
        f"/projects/{slug}/deployments/{made['done']}/",
        f"/projects/{slug}/deploy/",
        f"/projects/{slug}/settings/",
        f"/projects/{slug}/members/",
        f"/projects/{slug}/audit/",
        f"/projects/{slug}/servers/new/",
        f"/projects/{slug}/servers/{server}/",
        f"/projects/{slug}/servers/{server}/edit/",
        f"/projects/{slug}/settings/commands/{made['command']}/",
        f"/projects/{slug}/settings/groups/{made['group']}/",
        *[f"/projects/{slug}/settings/{kind}/" for kind in SETTING_KINDS],
        "/account/tokens/",
        "/account/password/",
    ]
    for path in paths:
        response = page.goto(path)
        assert response is not None and response.status == 200, path
        assert "default-src 'self'" in response.headers["content-security-policy"], path
        page.wait_for_load_state("load")
        assert _violations(page) == [], path

    # The live log: its script runs, its WebSocket connects and draws the stored lines, and
    # the upload's progress bar shows without a style attribute.
    page.goto(f"/projects/{slug}/deployments/{made['running']}/")
    expect(page.locator("#log")).to_contain_text("uploading")
    expect(page.locator("#log-state")).to_have_text("Live")
    assert page.locator("progress.bar").first.evaluate("bar => bar.value") == 40
    assert _violations(page) == []

    # The API docs: Swagger UI from Slipway's own static files, started by a script file.
    page.goto("/api/docs/")
    expect(page.locator(".swagger-ui .info")).to_contain_text("Slipway API")
    assert _violations(page) == []
    assert console == []

    # The recorder does catch a violation: an inline handler the policy refuses.
    page.goto("/")
    page.evaluate(
        "document.body.insertAdjacentHTML('beforeend', "
        '\'<img src="data:," onerror="document.title=1" onload="document.title=1">\')'
    )
    page.wait_for_function("window.__cspViolations.length > 0")
    assert "script-src" in _violations(page)[0]
    assert page.title() != "1"
