"""The settings pages at a phone's, a tablet's and a laptop's width: the settings menu sits
beside the list, or above it on narrow screens, never over it; SSH commands in run order."""

from __future__ import annotations

import re

import pytest

from tests.dashboard.e2e.conftest import ARTIFACTS, create_project, sign_in
from tests.support.gitrepos import GitRepoFactory

SECTIONS = [
    "",
    "build-commands/",
    "commands/",
    "config-files/",
    "excluded-files/",
    "environment/",
    "groups/",
    "health-checks/",
    "notifications/",
]
LONG = "php artisan config:cache && php artisan route:cache && php artisan view:cache " * 3


def _boxes(page):
    nav = page.locator("nav.subnav").bounding_box()
    body = page.locator(".subnav-body").bounding_box()
    assert nav is not None and body is not None
    return nav, body


def _check_layout(page, label: str, width: int) -> None:
    try:
        _assert_layout(page, label, width)
    except AssertionError:
        # What the layout looked like, for the one that failed (about 0.3 s a screenshot).
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"settings-{label}-{width}.png"), full_page=True)
        raise


def _assert_layout(page, label: str, width: int) -> None:
    nav, body = _boxes(page)
    assert not _overlap(nav, body), (label, nav, body)
    if width > 640:
        assert nav["x"] + nav["width"] <= body["x"], f"{label}: the menu is beside it"
        assert abs(nav["y"] - body["y"]) < 40, label
    else:
        assert nav["y"] + nav["height"] <= body["y"], f"{label}: the menu is above it"
    for link in page.locator("nav.subnav a").all():
        box = link.bounding_box()
        assert box is not None and box["x"] + box["width"] <= width, (
            f"{label}: every entry of the menu is in view"
        )
    overflow = page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, f"{label}: nothing pushes the page sideways"


def _overlap(a, b) -> bool:
    return not (
        a["x"] + a["width"] <= b["x"]
        or b["x"] + b["width"] <= a["x"]
        or a["y"] + a["height"] <= b["y"]
        or b["y"] + b["height"] <= a["y"]
    )


@pytest.fixture(scope="module")
def project(slipway_app, tmp_path_factory):
    """One project for every width: the pages only read it (each `manage.py shell` takes
    ~1.5 s)."""
    repo = GitRepoFactory(tmp_path_factory.mktemp("layout-repos"))()
    repo.commit({"index.html": "hi\n"}, "first")
    project = create_project(slipway_app, name="Layout", repository_url=repo.url)
    slipway_app.shell(
        "\n".join(
            [
                "from projects.models import Command, Project",
                f"project = Project.objects.get(slug={project['slug']!r})",
                # Saved out of order: the page lists them in the order they run.
                f"Command.objects.create(project=project, stage='after_switch', position=0, description='reload', command={LONG!r})",
                "Command.objects.create(project=project, stage='before_switch', position=1, description='migrate', command='php artisan migrate --force')",
                "Command.objects.create(project=project, stage='before_transfer', position=0, description='maintenance', command='php artisan down')",
                "Command.objects.create(project=project, stage='before_switch', position=0, description='composer', command='composer install')",
                "print(1)",
            ]
        )
    )
    return project


@pytest.mark.parametrize("width", [375, 768, 1024, 1280])
def test_the_settings_menu_never_covers_the_list(new_page, project, width):
    page = new_page(width=width, height=900)
    sign_in(page)
    for section in SECTIONS:
        page.goto(f"/projects/{project['slug']}/settings/{section}")
        _check_layout(page, section.strip("/") or "general", width)
    page.goto(f"/projects/{project['slug']}/settings/commands/")
    page.get_by_role("link", name="Edit").first.click()
    page.wait_for_url(re.compile(r"/settings/commands/\d+/$"))
    _check_layout(page, "command-edit", width)
    page.goto(f"/projects/{project['slug']}/settings/commands/")
    listed = page.locator("table tbody tr").all_inner_texts()
    order = [
        next(i for i, row in enumerate(listed) if name in row)
        for name in ("maintenance", "composer", "migrate", "reload")
    ]
    assert order == sorted(order), listed
