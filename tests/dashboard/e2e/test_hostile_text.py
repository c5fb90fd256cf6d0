"""Commit messages and log lines are text, never markup: an <img onerror> shows as written,
ANSI colour codes become colours, and nothing runs."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.dashboard.e2e.conftest import create_project, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

HOSTILE = "<img src=x onerror=alert(1)>"
PRINT_HOSTILE = (
    r"printf '\033[31mred\033[0m <img src=x onerror=alert(1)> \033[1;32mbold green\033[0m\n'; "
    "echo '<script>alert(2)</script>'"
)


def test_it_shows_markup_and_escapes_from_commits_and_logs_as_text(
    page, slipway_app, sshd_target, git_repo_factory
):
    repo = git_repo_factory()
    repo.commit({"index.html": "hello\n"}, f"{HOSTILE} \x1b[31mred\x1b[0m subject")
    project = create_project(
        slipway_app,
        name="Hostile",
        repository_url=repo.url,
        target=sshd_target,
        build_commands=(PRINT_HOSTILE,),
    )
    dialogs: list[str] = []

    def record(dialog):
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", record)
    sign_in(page)

    # The preview lists the commit.
    page.goto(f"/projects/{project['slug']}/deploy/")
    page.get_by_role("button", name="Preview changes").click()
    preview = page.locator("#preview")
    expect(preview.locator("#preview-status")).to_have_text("Succeeded", timeout=60_000)
    expect(preview.locator(".commits")).to_contain_text(f"{HOSTILE} red subject")

    # The deployment's log shows the printed markup as text, in colour.
    preview.get_by_role("button", name=re.compile(r"^Deploy \w+ now$")).click()
    expect(page.locator("#deployment-status")).to_have_text("Succeeded", timeout=60_000)
    log = page.locator("#log")
    expect(log).to_contain_text(f"red {HOSTILE} bold green")
    expect(log).to_contain_text("<script>alert(2)</script>")
    red = log.locator(".fg-1", has_text="red")
    expect(red).to_have_count(1)
    assert red.evaluate("span => getComputedStyle(span).color") == "rgb(255, 123, 114)"
    expect(log.locator(".fg-2.b", has_text="bold green")).to_have_count(1)
    printed = log.locator(".line", has_text="bold green").filter(has_not_text="printf")
    expect(printed).to_have_text(re.compile(rf"^\d+red {re.escape(HOSTILE)} bold green$"))
    escapes = [line for line in log.locator(".txt").all_text_contents() if "\x1b" in line]
    assert escapes == []
    expect(page.locator(".commits")).to_contain_text(HOSTILE)

    # Now that the mirror exists, the new deployment page lists the commit too.
    page.goto(f"/projects/{project['slug']}/deploy/")
    expect(page.locator(".commit-list")).to_contain_text(f"{HOSTILE} red subject")
    for where in ("/", f"/projects/{project['slug']}/", f"/projects/{project['slug']}/audit/"):
        page.goto(where)

    expect(page.locator("img[src='x']")).to_have_count(0)
    assert dialogs == []
