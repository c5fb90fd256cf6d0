"""Schedules in the API: admins create, change, pause and remove them; members read them and
their runs; a field that cannot be read is a 400 naming it; every change is audited."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from builds import schedules
from builds.models import Schedule
from projects.models import AuditEvent
from servers.models import Server

pytestmark = pytest.mark.django_db


@pytest.fixture
def web1(project):
    return Server.objects.create(
        project=project,
        name="web1",
        hostname="web1.example.com",
        username="deploy",
        deploy_path="/srv/web1",
        host_key_fingerprint="SHA256:" + "k" * 43,
    )


def url(project, suffix=""):
    return f"/api/v1/projects/{project.slug}/schedules/{suffix}"


def test_an_admin_creates_a_weekly_schedule_in_her_time_zone(alice_api, project, web1):
    answer = alice_api.post(
        url(project),
        {
            "name": "weeknights",
            "kind": "weekly",
            "weekdays": [0, 1, 2, 3, 4],
            "time_of_day": "04:30",
            "time_zone": "Europe/Paris",
            "servers": [web1.pk],
        },
        format="json",
    )

    assert answer.status_code == 201, answer.content
    data = answer.json()
    assert data["rule"] == "At 04:30 on Monday through Friday (Europe/Paris)"
    assert data["time_of_day"] == "04:30"
    schedule = Schedule.objects.get()
    assert schedule.next_run_at is not None
    assert schedule.next_run_at.astimezone(schedule.next_run_at.tzinfo).minute == 30
    assert AuditEvent.objects.filter(action="schedule.created").exists()


def test_a_one_off_time_without_an_offset_is_read_in_the_schedules_zone(alice_api, project, web1):
    answer = alice_api.post(
        url(project),
        {
            "name": "launch",
            "kind": "once",
            "run_at": "2036-12-24T18:00:00",
            "time_zone": "Europe/Paris",
            "servers": [web1.pk],
        },
        format="json",
    )
    assert answer.status_code == 201, answer.content
    assert Schedule.objects.get().next_run_at == datetime(2036, 12, 24, 17, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "cron", "cron": "61 * * * *"}, "cron"),
        ({"kind": "daily"}, "time_of_day"),
        ({"kind": "daily", "time_of_day": "04:00", "time_zone": "Mars/Base"}, "time_zone"),
        ({"kind": "once", "run_at": "2001-01-01T00:00:00Z"}, "run_at"),
        ({"kind": "weekly", "time_of_day": "04:00", "weekdays": []}, "weekdays"),
    ],
)
def test_a_rule_it_cannot_read_is_a_400_naming_the_field(alice_api, project, web1, body, field):
    answer = alice_api.post(
        url(project), {"name": "x", "servers": [web1.pk], **body}, format="json"
    )
    assert answer.status_code == 400, answer.content
    assert field in answer.json()
    assert not Schedule.objects.exists()


def test_a_schedule_needs_servers_or_a_group(alice_api, project):
    answer = alice_api.post(
        url(project), {"name": "x", "kind": "daily", "time_of_day": "04:00"}, format="json"
    )
    assert answer.status_code == 400 and "servers" in answer.json()


def test_pausing_and_the_runs_list(alice_api, bob_api, project, web1, alice):
    schedule = schedules.schedule_create(
        project=project,
        actor=alice,
        now=datetime(2026, 12, 2, 10, 0, tzinfo=UTC),
        name="hourly",
        kind="cron",
        cron="0 * * * *",
        servers=[web1],
        skip_unchanged=False,
    )
    schedules.schedules_tick(now=datetime(2026, 12, 2, 11, 0, tzinfo=UTC))

    paused = alice_api.patch(url(project, f"{schedule.pk}/"), {"enabled": False}, format="json")
    assert paused.status_code == 200 and paused.json()["next_run_at"] is None

    runs = bob_api.get(url(project, f"{schedule.pk}/runs/"))
    assert runs.status_code == 200
    assert [run["slot"] for run in runs.json()["results"]] == ["2026-12-02T11:00:00Z"]
    assert bob_api.patch(url(project, f"{schedule.pk}/"), {"enabled": True}).status_code == 403
    assert alice_api.delete(url(project, f"{schedule.pk}/")).status_code == 204
    assert not Schedule.objects.exists()
