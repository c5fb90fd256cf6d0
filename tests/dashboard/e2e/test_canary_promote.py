"""A canary group promoted by hand: deploy it from the dashboard, see the second server wait
while the first has the release, press Promote, and find the release live on both."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.dashboard.e2e.conftest import create_project, screenshots_dir, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.timeout(150)]

CANARY_GROUP = """
from servers.models import GroupMember, Server, ServerGroup
from projects.models import Project
project = Project.objects.get(slug={slug!r})
web1 = Server.objects.get(project=project, name='web1')
web2 = Server.objects.create(project=project, name='web2', hostname={host!r}, port={port},
    username={user!r}, deploy_path={path!r}, environment='production',
    host_key_fingerprint={fingerprint!r}, position=1)
group = ServerGroup.objects.create(project=project, name='production', strategy='canary',
    canary_count=1, promotion='manual')
GroupMember.objects.create(group=group, server=web1, position=0)
GroupMember.objects.create(group=group, server=web2, position=1)
print([group.pk, web1.pk, web2.pk])
"""


def test_a_canary_waits_for_promote_then_reaches_every_server(
    page, slipway_app, sshd_factory, git_repo_factory
):
    repo = git_repo_factory()
    repo.commit({"index.html": "canary release\n"}, "First page")
    web1, web2 = sshd_factory(), sshd_factory()
    project = create_project(slipway_app, name="Canary shop", repository_url=repo.url, target=web1)
    web2.authorize(project["public_key"])
    slug = project["slug"]
    group, web1_id, web2_id = slipway_app.shell(
        CANARY_GROUP.format(
            slug=slug,
            host=web2.hostname,
            port=web2.port,
            user=web2.username,
            path=str(web2.deploy_path),
            fingerprint=web2.host_key_fingerprint,
        )
    )
    sign_in(page)

    page.goto(f"/projects/{slug}/deploy/")
    page.get_by_label("Group", exact=True).select_option(str(group))
    page.get_by_role("button", name="Deploy", exact=True).click()

    # The canary gets the release; the other server waits for a person, live on the page.
    canary = page.locator(f'[data-target="{web1_id}"] .badge')
    waiting = page.locator(f'[data-target="{web2_id}"] .badge')
    expect(waiting).to_have_text("Waiting", timeout=60_000)
    expect(page.locator(f'[data-target="{web2_id}"] .target-result')).to_have_text(
        "Waiting for promotion"
    )
    expect(page.locator("#deployment-status")).to_have_text("Running")
    expect(page.locator("#deployment-strategy")).to_contain_text("Canary first, then the rest")
    assert (web1.deploy_path / "current" / "index.html").read_text() == "canary release\n"
    assert not (web2.deploy_path / "current").exists()
    folder = screenshots_dir()
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(folder / "deployment-canary-waiting.png"), full_page=True)

    confirmations = []

    def confirm(dialog):
        confirmations.append(dialog.message)
        dialog.accept()

    page.once("dialog", confirm)
    page.get_by_role("button", name="Promote", exact=True).click()
    expect(page.get_by_text("Promoted: the other servers get the release now.")).to_be_visible()
    assert confirmations and "web2" in confirmations[0]

    expect(page.locator("#deployment-status")).to_have_text("Succeeded", timeout=60_000)
    expect(canary).to_have_text("Succeeded")
    expect(waiting).to_have_text("Succeeded")
    expect(page.get_by_role("button", name="Promote", exact=True)).to_have_count(0)
    for target in (web1, web2):
        assert (target.deploy_path / "current" / "index.html").read_text() == "canary release\n"
