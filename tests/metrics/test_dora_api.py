"""The metrics API and its CSV export over the fixture history stored in PostgreSQL: the
figures worked out in tests/metrics/history.py, for members only."""

from __future__ import annotations

import csv
import io

import pytest
from django.test import Client
from django.utils import timezone

from builds import dora
from projects.models import Membership, Role
from tests.api.conftest import client_for
from tests.metrics.history import NOW, create_history

pytestmark = pytest.mark.django_db

MINUTE = 60.0


@pytest.fixture
def shop(alice, bob, charlie, monkeypatch):
    """Alice's project Shop with the fixture history; Bob on her team as a viewer; Charlie
    owns a project of his own. The clock reads 6 November 2026, 12:00 UTC."""
    from projects.services import project_create

    shop = project_create(
        owner=alice, name="Shop", repository_url="https://git.example.com/shop.git"
    )
    Membership.objects.create(project=shop, user=bob, role=Role.VIEWER)
    project_create(owner=charlie, name="Blog", repository_url="https://git.example.com/blog.git")
    ids = create_history(shop)
    monkeypatch.setattr(timezone, "now", lambda: NOW)
    return shop, ids


def test_it_answers_the_four_keys_of_production_to_a_member(shop, bob):
    project, _ = shop

    response = client_for(bob).get(
        f"/api/v1/projects/{project.slug}/metrics/", {"environment": "production", "days": "7"}
    )

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["environment"] == "production"
    assert body["environments"] == ["production", "staging"]
    assert body["since"] == "2026-10-31T00:00:00Z"
    assert (body["deployments"], body["successful_deployments"]) == (10, 8)
    assert body["deployments_per_week"] == 8.0
    assert body["lead_time_seconds"] == 120 * MINUTE
    assert body["lead_time_unmeasured"] == 1
    assert (body["failed_changes"], body["change_failure_rate"]) == (4, 0.4)
    assert body["time_to_restore_seconds"] == 62.5 * MINUTE
    assert body["unrestored_failures"] == 0
    assert body["fix_window_hours"] == 24
    assert [day["day"] for day in body["per_day"]][:3] == ["2026-10-31", "2026-11-01", "2026-11-02"]
    assert body["per_day"][5] == {
        "day": "2026-11-05",
        "deployments": 2,
        "live": 1,
        "live_then_failed": 1,
        "failed": 0,
        "rollbacks": 0,
        "change_failure_rate": 0.5,
        "lead_time_seconds": 45 * MINUTE,
        "duration_seconds": 10 * MINUTE,
    }


def test_every_server_is_the_default_and_the_window_is_30_days(shop, alice):
    project, _ = shop

    body = client_for(alice).get(f"/api/v1/projects/{project.slug}/metrics/").json()

    assert (body["environment"], body["days"]) == ("", 30)
    assert (body["deployments"], body["successful_deployments"]) == (12, 10)


def test_another_teams_user_gets_a_404_and_so_does_nobody(shop, charlie):
    project, _ = shop

    for url in (
        f"/api/v1/projects/{project.slug}/metrics/",
        f"/api/v1/projects/{project.slug}/metrics/deployments.csv",
    ):
        assert client_for(charlie).get(url).status_code == 404
        assert Client().get(url).status_code in (401, 403)


def test_bad_query_values_are_refused_naming_the_field(shop, alice):
    project, _ = shop
    api = client_for(alice)

    for query, field in (
        ({"days": "0"}, "days"),
        ({"days": "x"}, "days"),
        ({"days": "400"}, "days"),
        ({"environment": "e" * 51}, "environment"),
    ):
        response = api.get(f"/api/v1/projects/{project.slug}/metrics/", query)
        assert response.status_code == 400, query
        assert field in response.json(), response.json()
        response = api.get(f"/api/v1/projects/{project.slug}/metrics/days.csv", query)
        assert response.status_code == 400, query


def test_the_deployments_csv_has_a_row_per_deployment_with_the_figures_used(shop, bob):
    project, ids = shop

    response = client_for(bob).get(
        f"/api/v1/projects/{project.slug}/metrics/deployments.csv",
        {"environment": "production", "days": "7"},
    )

    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="shop-deployments-7d.csv"'
    text = response.content.decode()
    assert text.startswith(",".join(dora.DEPLOYMENT_COLUMNS) + "\r\n")
    rows = {int(row["deployment"]): row for row in csv.DictReader(io.StringIO(text))}
    by_key = {key: rows[pk] for key, pk in ids.items() if pk in rows}
    assert list(by_key) == [
        "d1",
        "d2",
        "d3",
        "d4",
        "d5",
        "r6",
        "d7",
        "d8",
        "d9",
        "d10",
        "d11",
        "d12",
    ]
    assert by_key["d5"] == {
        "deployment": str(ids["d5"]),
        "kind": "deploy",
        "environment": "production",
        "outcome": "live",
        "created_at": "2026-11-04T09:00:00Z",
        "started_at": "2026-11-04T09:00:00Z",
        "finished_at": "2026-11-04T09:10:00Z",
        "duration_seconds": "600",
        "first_commit_at": "2026-11-04T06:10:00Z",
        "lead_time_seconds": "10800",
        "change_failed": "true",
        "failure_reason": "rolled_back",
        "restored_by": str(ids["r6"]),
        "restored_at": "2026-11-04T09:42:00Z",
        "time_to_restore_seconds": "1920",
        "revision": by_key["d5"]["revision"],
    }
    assert (by_key["d10"]["outcome"], by_key["d10"]["failure_reason"]) == ("reverted", "reverted")
    assert (by_key["d11"]["first_commit_at"], by_key["d11"]["lead_time_seconds"]) == ("", "")
    assert (by_key["d12"]["outcome"], by_key["d12"]["change_failed"]) == ("cancelled", "false")


def test_the_days_csv_has_a_row_per_day(shop, alice):
    project, _ = shop

    response = client_for(alice).get(
        f"/api/v1/projects/{project.slug}/metrics/days.csv",
        {"environment": "production", "days": "7"},
    )

    lines = response.content.decode().split("\r\n")
    assert lines[0] == ",".join(dora.DAY_COLUMNS)
    assert lines[1] == "2026-10-31,0,0,0,0,0,,,"
    assert lines[4] == "2026-11-03,2,1,0,1,0,0.5,7200,450"
    assert len([line for line in lines if line]) == 8


def test_an_environment_label_cannot_become_a_spreadsheet_formula(shop, alice):
    project, _ = shop
    project.servers.filter(name="stage1").update(environment="=HYPERLINK(1)")

    text = (
        client_for(alice)
        .get(
            f"/api/v1/projects/{project.slug}/metrics/deployments.csv",
            {"environment": "=HYPERLINK(1)", "days": "7"},
        )
        .content.decode()
    )

    assert "'=HYPERLINK(1)" in text
    assert ",=HYPERLINK" not in text


def test_the_schema_lists_the_metrics_endpoints(alice):
    schema = client_for(alice).get("/api/schema/", HTTP_ACCEPT="application/json").json()

    assert "/api/v1/projects/{slug}/metrics/" in schema["paths"]
    assert "/api/v1/projects/{slug}/metrics/{rows}.csv" in schema["paths"]
