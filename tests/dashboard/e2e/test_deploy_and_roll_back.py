"""A person's way through Slipway: sign in, make a project and a server, trust its host key,
deploy while watching the log, deploy again, and roll back from the server's page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.dashboard.e2e.conftest import deployment_id_of, screenshots_dir, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.timeout(150)]

# Five lines a second apart: the first ones must reach the page while the build still runs.
# Only the first commit builds slowly: nobody watches the second deployment's log.
SLOW_BUILD = (
    "for i in 1 2 3 4 5; do echo step $i; if grep -q first index.html; then sleep 1; fi; done"
)


def _shoot(page, name: str) -> None:
    folder = screenshots_dir()
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(folder / name))


def test_it_deploys_watching_the_log_and_rolls_back_from_the_server_page(
    page, sshd_target, git_repo_factory
):
    repo = git_repo_factory()
    repo.commit({"index.html": "first\n"}, "First page")
    sign_in(page)

    # A project, made as a person makes one; its public key goes to the server.
    page.get_by_role("link", name="New project").click()
    page.get_by_label("Name", exact=True).fill("Brochure")
    page.get_by_label("Repository URL").fill(repo.url)
    page.get_by_role("button", name="Create project").click()
    expect(page.get_by_role("heading", name="Brochure", exact=True)).to_be_visible()
    slug = page.url.split("/projects/", 1)[1].split("/", 1)[0]
    sshd_target.authorize(page.locator("[data-public-key]").inner_text())

    page.goto(f"/projects/{slug}/settings/build-commands/")
    page.get_by_label("Command", exact=True).fill(SLOW_BUILD)
    page.get_by_role("button", name="Add build command").click()
    expect(page.get_by_text("Added the build command")).to_be_visible()

    # A server: test the connection, compare the key, trust it.
    page.goto(f"/projects/{slug}/servers/new/")
    page.get_by_label("Name", exact=True).fill("web1")
    page.get_by_label("Environment", exact=True).fill("production")
    page.get_by_label("Hostname", exact=True).fill(sshd_target.hostname)
    page.get_by_label("Port", exact=True).fill(str(sshd_target.port))
    page.get_by_label("Username", exact=True).fill(sshd_target.username)
    page.get_by_label("Deploy path", exact=True).fill(str(sshd_target.deploy_path))
    page.get_by_role("button", name="Add server").click()
    expect(page.get_by_text("The host key is not trusted yet")).to_be_visible()
    page.get_by_role("button", name="Test connection").click()
    expect(page.locator("#offered-fingerprint")).to_have_text(sshd_target.host_key_fingerprint)
    page.get_by_role("button", name="Trust this key").click()
    expect(page.locator("#check-result")).to_contain_text("Connected.")
    server_url = page.url.split("#")[0].removesuffix("trust/")

    # Deploy, and see the build's lines while it runs.
    page.get_by_role("link", name="Deploy to web1…").click()
    page.get_by_role("button", name="Deploy", exact=True).click()
    first = deployment_id_of(page)
    log = page.locator("#log")
    expect(log.get_by_text("step 1", exact=True)).to_be_visible()
    assert log.get_by_text("step 5", exact=True).count() == 0, "the log arrived only at the end"
    expect(page.locator("#deployment-status")).to_have_text("Running")
    expect(log.get_by_text("step 2", exact=True)).to_be_visible()
    _shoot(page, "deployment-live.png")
    expect(page.locator("#deployment-status")).to_have_text("Succeeded", timeout=60_000)
    expect(log.get_by_text("step 5", exact=True)).to_be_visible()
    expect(page.locator("[data-target] .target-result")).to_contain_text("Live: release")

    # A second deployment makes a second release.
    repo.commit({"index.html": "second\n"}, "Second page")
    page.goto(f"/projects/{slug}/deploy/")
    page.get_by_role("button", name="Deploy", exact=True).click()
    second = deployment_id_of(page)
    assert second != first
    expect(page.locator("#deployment-status")).to_have_text("Succeeded", timeout=60_000)
    current = sshd_target.deploy_path / "current"
    assert (current / "index.html").read_text() == "second\n"

    # The server's page lists both; one click and one confirmation roll back to the first.
    page.goto(server_url)
    releases = page.locator("#releases tbody tr")
    expect(releases).to_have_count(2)
    older = page.locator("#releases tbody tr:not(.live)")
    first_release = older.get_attribute("data-release")
    assert Path(current.resolve()).name != first_release
    confirmations = []

    # The plain Roll back says where it goes before anything happens (dismissed here).
    expect(page.locator("#rollback-target")).to_have_text(f"releases/{first_release}")

    def dismiss(dialog):
        confirmations.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", dismiss)
    page.locator("form.rollback-plain button").click()
    expect(page.locator("#releases")).to_be_visible()
    assert confirmations and f"current → releases/{first_release}" in confirmations.pop()

    def confirm(dialog):
        confirmations.append(dialog.message)
        dialog.accept()

    page.once("dialog", confirm)
    older.get_by_role("button", name="Roll back to this release").click()
    page.wait_for_url(re.compile(r"/deployments/\d+/$"))
    assert confirmations and first_release in confirmations[0]
    expect(page.locator("#deployment-status")).to_have_text("Succeeded", timeout=60_000)
    expect(page.locator("[data-target] .target-result")).to_contain_text(
        f"Rolled back: current → releases/{first_release}"
    )
    assert current.resolve().name == first_release
    assert (current / "index.html").read_text() == "first\n"

    page.goto(server_url)
    expect(page.locator("#releases tr.live")).to_have_attribute("data-release", first_release)
    _shoot(page, "server-releases.png")
    page.goto(f"/projects/{slug}/")
    expect(page.locator(".servers-table")).to_contain_text("web1")
    _shoot(page, "project.png")
    page.goto("/")
    _shoot(page, "overview.png")
