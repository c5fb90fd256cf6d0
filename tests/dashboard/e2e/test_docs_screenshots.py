"""The screenshots in docs/dashboard.md, taken from a real run: `make screenshots`.

Marked `docs`, which `make test` deselects: it writes into docs/ rather than testing anything.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.dashboard.e2e.conftest import create_project, screenshots_dir, sign_in
from tests.dashboard.e2e.test_metrics_charts import project_with_history

pytestmark = [pytest.mark.browser, pytest.mark.docs, pytest.mark.timeout(240)]

BUILD_SCRIPT = """\
printf '\\033[1m> storefront@2.4.0 build\\033[0m\\n'
for step in 'Resolving packages' 'Compiling 214 modules' 'Optimising images' 'Writing dist/'; do
  printf '\\033[36m[build]\\033[0m %s…\\n' "$step"
  sleep 0.8
done
printf '\\033[33mwarning\\033[0m: 2 images are larger than 500 KB\\n'
printf '\\033[32m✔ built in 3.2s\\033[0m\\n'
"""
WEBHOOKS = """
import json
from builds.models import WebhookDelivery
from projects.models import Project
project = Project.objects.get(slug={slug!r})
WebhookDelivery.objects.create(project=project, provider='github', event='ping', outcome='ignored', reason='Ping: the webhook reaches Slipway')
WebhookDelivery.objects.create(project=project, provider='github', event='push', ref='refs/heads/main', head={head!r}, outcome='queued', summary=['Faster product images'])
WebhookDelivery.objects.create(project=project, provider='github', event='push', ref='refs/heads/experiment', head={head!r}, outcome='ignored', reason='No server or group deploys branch experiment')
print(1)
"""
SECOND_SERVER = """
from servers.models import Server, ServerGroup, GroupMember
from projects.models import Project, BuildCommand
project = Project.objects.get(slug={slug!r})
web1 = Server.objects.get(project=project, name='web1')
web2 = Server.objects.create(project=project, name='web2', hostname={host!r}, port={port}, username={user!r},
    deploy_path={path!r}, environment='production', host_key_fingerprint={fingerprint!r})
staging = Server.objects.create(project=project, name='staging', hostname='staging.internal', port=22, username='deploy',
    deploy_path='/srv/storefront', environment='staging', auto_deploy=True)
group = ServerGroup.objects.create(project=project, name='production', environment='production')
GroupMember.objects.create(group=group, server=web1, position=0)
GroupMember.objects.create(group=group, server=web2, position=1)
print(group.pk)
"""


def test_docs_screenshots(new_page, slipway_app, sshd_factory, git_repo_factory):
    folder = screenshots_dir()
    assert folder is not None
    folder.mkdir(parents=True, exist_ok=True)
    repo = git_repo_factory()
    repo.commit(
        {"index.html": "<h1>Storefront</h1>\n", "app.css": "body{}\n", "build.sh": BUILD_SCRIPT},
        "First storefront",
    )
    repo.commit({"app.css": "body{margin:0}\n"}, "Tidy the layout")
    web1, web2 = sshd_factory(), sshd_factory()
    project = create_project(
        slipway_app,
        name="Storefront",
        repository_url=repo.url,
        target=web1,
        build_commands=("sh build.sh",),
    )
    web2.authorize(project["public_key"])
    slug = project["slug"]
    group = slipway_app.shell(
        SECOND_SERVER.format(
            slug=slug,
            host=web2.hostname,
            port=web2.port,
            user=web2.username,
            path=str(web2.deploy_path),
            fingerprint=web2.host_key_fingerprint,
        )
    )
    create_project(
        slipway_app, name="Docs site", repository_url="https://git.example.com/acme/docs.git"
    )
    page = new_page()
    sign_in(page)

    def deploy_group() -> None:
        page.goto(f"/projects/{slug}/deploy/")
        page.get_by_label("Group", exact=True).select_option(str(group))
        page.get_by_role("button", name="Deploy", exact=True).click()

    deploy_group()
    expect(page.locator("#deployment-status")).to_have_text("Succeeded", timeout=60_000)

    repo.commit(
        {"index.html": "<h1>Storefront</h1><img src=hero.webp>\n", "hero.webp": "x" * 4000},
        "Faster product images",
    )
    deploy_group()
    expect(page.locator("#log .txt", has_text="[build] Optimising images")).to_be_visible(
        timeout=30_000
    )
    page.screenshot(path=str(folder / "deployment-live.png"), full_page=True)
    expect(page.locator("#deployment-status")).to_have_text("Succeeded", timeout=60_000)
    page.screenshot(path=str(folder / "deployment-finished.png"), full_page=True)

    repo.commit({"app.css": "body{margin:0;font-family:system-ui}\n"}, "Use the system font")
    slipway_app.shell(WEBHOOKS.format(slug=slug, head=repo.head()))
    page.goto(f"/projects/{slug}/deploy/")
    page.get_by_role("checkbox", name="web1 (production)").check()
    page.get_by_role("button", name="Preview changes").click()
    expect(page.locator("#preview-status")).to_have_text("Succeeded", timeout=60_000)
    page.screenshot(path=str(folder / "new-deployment.png"), full_page=True)

    page.goto(f"/projects/{slug}/")
    server_link = page.locator(".servers-table a", has_text=re.compile(r"^web1$"))
    server_url = server_link.get_attribute("href")
    page.screenshot(path=str(folder / "project.png"), full_page=True)
    page.goto(server_url)
    page.screenshot(path=str(folder / "server-releases.png"), full_page=True)
    page.goto("/")
    page.screenshot(path=str(folder / "overview.png"), full_page=True)
    page.goto(f"/projects/{slug}/settings/config-files/")
    page.get_by_label("Path", exact=True).fill("config/app.env")
    page.get_by_label("Contents").fill("APP_URL=https://%server%.example.com\nRELEASE=%release%\n")
    page.screenshot(path=str(folder / "config-files.png"), full_page=True)

    phone = new_page(width=375, height=800)
    sign_in(phone)
    phone.goto("/")
    phone.screenshot(path=str(folder / "overview-phone.png"), full_page=True)
    phone.goto(f"/projects/{slug}/deployments/")
    phone.locator(".deployments-table a.strong").first.click()
    expect(phone.locator("#log")).to_contain_text("built in")
    phone.screenshot(path=str(folder / "deployment-phone.png"), full_page=True)


def test_docs_screenshots_of_the_metrics(new_page, slipway_app):
    """docs/metrics.md's pictures: the metrics page and the project page's history chart,
    from the fixture history of tests/metrics/history.py (ending yesterday)."""
    folder = screenshots_dir()
    assert folder is not None
    folder.mkdir(parents=True, exist_ok=True)
    slug = project_with_history(slipway_app, "Shop")
    page = new_page()
    sign_in(page)

    page.goto(f"/projects/{slug}/metrics/?environment=production&days=7")
    expect(page.locator("#chart-durations")).to_have_attribute("data-drawn", "1")
    page.screenshot(path=str(folder / "metrics.png"), full_page=True)
    page.goto(f"/projects/{slug}/")
    expect(page.locator("#chart-history")).to_have_attribute("data-drawn", "4")
    page.locator("#deployment-history").screenshot(path=str(folder / "deployment-history.png"))
