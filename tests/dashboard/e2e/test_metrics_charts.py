"""The metrics page's charts and the project page's deployment history, drawn by the vendored
Chart.js in Chromium under the Content-Security-Policy, from the fixture history
(tests/metrics/history.py) moved so that it ends yesterday."""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import expect

from tests.dashboard.e2e.conftest import App, create_project, sign_in

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

SEED = """
from datetime import timedelta
from django.utils import timezone
from projects.models import Project
from tests.metrics.history import create_history
create_history(Project.objects.get(slug={slug!r}), ending=timezone.now().date() - timedelta(days=1))
print(1)
"""
# Pixels of a canvas that are not fully transparent: a drawn chart has many.
PAINTED = """canvas => {
  const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let painted = 0;
  for (let i = 3; i < data.length; i += 4) if (data[i] !== 0) painted++;
  return painted;
}"""
DATASETS = "canvas => Chart.getChart(canvas).data.datasets.map(d => [d.label, d.data])"


def project_with_history(app: App, name: str) -> str:
    slug: str = create_project(app, name=name, repository_url="https://git.example.com/shop.git")[
        "slug"
    ]
    app.shell(SEED.format(slug=slug))
    return slug


def watch_console(page: Any) -> list[str]:
    """Errors the page logs (a CSP violation, a script error)."""
    errors: list[str] = []

    def on_console(message: Any) -> None:
        if message.type == "error":
            errors.append(message.text)

    page.on("console", on_console)
    page.on("pageerror", lambda error: errors.append(str(error)))
    return errors


def test_the_metrics_page_draws_its_four_charts(page, slipway_app):
    slug = project_with_history(slipway_app, "Metrics shop")
    errors = watch_console(page)
    sign_in(page)

    page.goto(f"/projects/{slug}/metrics/?environment=production&days=7")

    expect(page.locator("#metric-failure-rate .metric-value")).to_have_text("40%")
    expect(page.locator("#metric-lead-time .metric-value")).to_have_text("2 h 00 min")
    for chart in ("deployments", "failure-rate", "lead-time", "durations"):
        canvas = page.locator(f"#chart-{chart}")
        expect(canvas).to_have_attribute("data-drawn", "4" if chart == "deployments" else "1")
        assert canvas.evaluate(PAINTED) > 2000, chart
    datasets = dict(page.locator("#chart-deployments").evaluate(DATASETS))
    # Six days ago to today; the history's five days end yesterday.
    assert datasets["Live"] == [0, 2, 1, 1, 1, 1, 0]
    assert datasets["Live, then rolled back or fixed"] == [0, 0, 0, 1, 1, 0, 0]
    assert datasets["Failed or reverted"] == [0, 0, 1, 0, 0, 1, 0]
    assert datasets["Rollbacks"] == [0, 0, 0, 1, 0, 0, 0]
    assert errors == []


def test_the_project_page_charts_its_deployment_history(page, slipway_app):
    slug = project_with_history(slipway_app, "History shop")
    errors = watch_console(page)
    sign_in(page)

    page.goto(f"/projects/{slug}/")

    canvas = page.locator("#chart-history")
    expect(canvas).to_have_attribute("data-drawn", "4")
    assert canvas.evaluate(PAINTED) > 2000
    datasets = dict(canvas.evaluate(DATASETS))
    assert sum(datasets["Live"]) + sum(datasets["Live, then rolled back or fixed"]) == 10
    page.get_by_role("link", name="DORA metrics").click()
    expect(page.locator("#chart-deployments")).to_have_attribute("data-drawn", "4")
    assert errors == []
