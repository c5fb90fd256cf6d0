"""The metrics page and the project page's deployment history, rendered on the server from
the fixture history (tests/metrics/history.py): Bob on Alice's team sees them, Charlie does
not. The charts themselves are drawn in Chromium (tests/dashboard/e2e/test_metrics_charts.py).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from django.utils import timezone

from projects.models import Membership, Role
from projects.services import project_create
from tests.metrics.history import NOW, create_history

pytestmark = pytest.mark.django_db


@pytest.fixture
def shop(alice, bob, monkeypatch):
    project = project_create(
        owner=alice, name="Shop", repository_url="https://git.example.com/shop.git"
    )
    Membership.objects.create(project=project, user=bob, role=Role.VIEWER)
    create_history(project)
    monkeypatch.setattr(timezone, "now", lambda: NOW)
    return project


def _chart_data(html: str) -> dict[str, Any]:
    match = re.search(r'<script id="metrics-data" type="application/json">(.*?)</script>', html)
    assert match, "no chart data on the page"
    return json.loads(match.group(1))


def test_a_member_sees_the_four_keys_of_production(shop, bob_client):
    response = bob_client.get(f"/projects/{shop.slug}/metrics/?environment=production&days=7")

    assert response.status_code == 200
    html = response.content.decode()
    assert re.search(r'id="metric-frequency">.*?8 <span>a week</span>', html, re.S)
    assert re.search(r'id="metric-lead-time">.*?2 h 00 min', html, re.S)
    assert re.search(r'id="metric-failure-rate">.*?40%.*?4 of 10 deployments', html, re.S)
    assert re.search(r'id="metric-restore">.*?1 h 02 min', html, re.S)
    assert "1 without a first commit time left out" in html
    assert "A fix went live soon after" in html and "Rolled back" in html
    assert "environment=production&amp;days=7" in html  # the CSV links keep the query
    data = _chart_data(html)
    assert data["labels"][0] == "2026-10-31" and len(data["labels"]) == 7
    assert (data["live"], data["live_then_failed"], data["failed"], data["rollbacks"]) == (
        [0, 0, 2, 1, 1, 1, 1],
        [0, 0, 0, 0, 1, 1, 0],
        [0, 0, 0, 1, 0, 0, 1],
        [0, 0, 0, 0, 1, 0, 0],
    )
    assert data["failure_rate"][3] == 50.0
    assert data["lead_time_hours"][2] == 1.58  # (70 min + 2 h) / 2


def test_another_teams_user_gets_a_404(shop, charlie_client):
    assert charlie_client.get(f"/projects/{shop.slug}/metrics/").status_code == 404


def test_a_bad_window_is_named_and_the_default_shown(shop, bob_client):
    response = bob_client.get(f"/projects/{shop.slug}/metrics/?days=forever")

    assert response.status_code == 400
    html = response.content.decode()
    assert re.search(r'id="metrics-errors">.*?days: A valid integer is required', html, re.S)
    assert "Showing the last 30 days of every server instead" in html


def test_the_project_page_charts_30_days_of_deployments_by_outcome(shop, bob_client):
    html = bob_client.get(f"/projects/{shop.slug}/").content.decode()

    assert 'id="chart-history" data-chart="deployments"' in html
    data = _chart_data(html)
    assert len(data["labels"]) == 30 and data["labels"][-1] == "2026-11-06"
    assert sum(data["live"]) + sum(data["live_then_failed"]) == 10  # with staging and October
    assert "/static/vendor/chart-4.6.1.umd.min.js" in html
