"""A viewer, on a phone: everything is there to read, nothing to change, and a forged
request is refused."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.dashboard.e2e.conftest import BOB_PASSWORD, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.timeout(90)]

CHANGES = re.compile(
    r"deploy|roll back|cancel|redeploy|trust|test connection|edit|add|remove", re.I
)

HISTORY = """
import json
from django.contrib.auth.models import User
from django.utils import timezone
from builds.models import Deployment, DeploymentTarget, Status, TargetStatus
from projects.models import Membership
from projects.services import project_create
from servers.models import Release, Server
admin = User.objects.get(username='admin')
project = project_create(owner=admin, name='Viewed', repository_url='https://git.example.com/viewed.git')
Membership.objects.create(project=project, user=User.objects.get(username='bob'), role='viewer')
server = Server.objects.create(project=project, name='web1', hostname='web1.example.com',
    username='deploy', deploy_path='/srv/viewed', environment='production',
    host_key_fingerprint='SHA256:' + 'k' * 43)
out = {'slug': project.slug, 'server': server.pk, 'releases': []}
for n, sha in enumerate(['1' * 40, '2' * 40]):
    now = timezone.now()
    d = Deployment.objects.create(project=project, status=Status.SUCCEEDED, triggered_by=admin,
        end_revision=sha, started_at=now, finished_at=now)
    DeploymentTarget.objects.create(deployment=d, server=server, status=TargetStatus.SUCCEEDED,
        release=f'2026112{n}-000000000-{sha[:7]}')
    Release.objects.filter(server=server).update(live=False)
    Release.objects.create(server=server, name=f'2026112{n}-000000000-{sha[:7]}', revision=sha,
        deployment=d, live=True)
    out['releases'].append(f'2026112{n}-000000000-{sha[:7]}')
    out['finished'] = d.pk
running = Deployment.objects.create(project=project, status=Status.RUNNING, triggered_by=admin,
    started_at=timezone.now(), heartbeat_at=timezone.now())
DeploymentTarget.objects.create(deployment=running, server=server, status=TargetStatus.QUEUED)
out['running'] = running.pk
print(json.dumps(out))
"""


def test_a_viewer_on_a_phone_reads_everything_and_changes_nothing(new_page, slipway_app):
    made = slipway_app.shell(HISTORY)
    slug, server = made["slug"], made["server"]
    page = new_page(width=375, height=740)
    sign_in(page, "bob", BOB_PASSWORD)

    pages = {
        "/": "Viewed",
        f"/projects/{slug}/": "web1",
        f"/projects/{slug}/servers/{server}/": made["releases"][0],
        f"/projects/{slug}/deployments/{made['finished']}/": "Succeeded",
        f"/projects/{slug}/deployments/{made['running']}/": "Running",
        f"/projects/{slug}/settings/": "General",
    }
    for path, sign in pages.items():
        page.goto(path)
        expect(page.locator("main")).to_contain_text(sign)
        buttons = page.locator("main").get_by_role("button").all_inner_texts()
        links = page.locator("main a.button").all_inner_texts()
        assert not [label for label in buttons + links if CHANGES.search(label)], (
            path,
            buttons,
            links,
        )
        # It fits a phone: nothing wider than the screen.
        assert page.evaluate("document.documentElement.scrollWidth") <= 375, path

    token = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    forged = {
        f"/projects/{slug}/servers/{server}/rollback/": {"release": made["releases"][0]},
        f"/projects/{slug}/deployments/{made['running']}/cancel/": {},
        f"/projects/{slug}/deployments/{made['finished']}/redeploy/": {},
        f"/projects/{slug}/deploy/": {"servers": str(server), "action": "deploy"},
        f"/projects/{slug}/servers/{server}/trust/": {"fingerprint": "SHA256:" + "x" * 43},
    }
    for path, form in forged.items():
        response = page.request.post(path, form={**form, "csrfmiddlewaretoken": token})
        assert response.status == 403, (path, response.status)
