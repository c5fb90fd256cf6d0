"""A slot is claimed once in the database: ticks racing on one slot (two beat processes, a
restart while it was due) make one run and one deployment; the next slot survives a restart
because it is stored; after a downtime one missed slot runs, not each of them."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, time, timedelta

import pytest
from django.db import connection

from builds import schedules
from builds.engine.errors import InvalidInput
from builds.models import Deployment, ScheduleKind, ScheduleOutcome, ScheduleRun, Trigger
from deployer.models import OutboxMessage
from servers.models import Server

pytestmark = pytest.mark.django_db(transaction=True)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0):
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


@pytest.fixture
def project(git_repo_factory, project_factory):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    return project_factory(repo)


@pytest.fixture
def web1(project):
    return Server.objects.create(
        project=project,
        name="web1",
        hostname="127.0.0.1",
        username="deploy",
        deploy_path="/srv/web1",
        host_key_fingerprint="SHA256:not-contacted-in-this-test",
    )


def hourly(project, web1, alice, *, now):
    return schedules.schedule_create(
        project=project,
        actor=alice,
        now=now,
        name="hourly",
        kind=ScheduleKind.CRON,
        cron="0 * * * *",
        time_zone="UTC",
        servers=[web1],
        skip_unchanged=False,
    )


def tick_at_once(count: int, now: datetime) -> list[list[ScheduleRun]]:
    """``count`` ticks in threads of their own (each its own PostgreSQL connection), released
    at the same instant."""
    start = threading.Barrier(count, timeout=30)
    results: list[object] = [None] * count

    def tick(index: int) -> None:
        try:
            start.wait()
            results[index] = schedules.schedules_tick(now=now)
        except BaseException as exc:  # reported below
            results[index] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=tick, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not [r for r in results if isinstance(r, BaseException)], results
    return results  # type: ignore[return-value]


def test_it_stores_the_first_slot_when_a_schedule_is_created(project, web1, alice):
    schedule = hourly(project, web1, alice, now=utc(2026, 12, 2, 10, 20))
    schedule.refresh_from_db()
    assert schedule.next_run_at == utc(2026, 12, 2, 11, 0)


def test_ticks_racing_on_one_slot_make_one_run_and_one_deployment(project, web1, alice):
    hourly(project, web1, alice, now=utc(2026, 12, 2, 10, 20))

    results = tick_at_once(6, utc(2026, 12, 2, 11, 0, 5))

    assert sorted(len(runs) for runs in results) == [0, 0, 0, 0, 0, 1]
    run = ScheduleRun.objects.get()
    assert run.slot == utc(2026, 12, 2, 11, 0)
    assert OutboxMessage.objects.filter(task=schedules.RUN_SCHEDULE_TASK).count() == 1
    # Two workers handed the run's message (a redelivery) decide it once.
    first = schedules.schedule_run(run.pk, now=utc(2026, 12, 2, 11, 0, 6))
    assert schedules.schedule_run(run.pk, now=utc(2026, 12, 2, 11, 0, 7)) is None
    assert first is not None and first.outcome == ScheduleOutcome.DEPLOYED
    deployment = Deployment.objects.get()
    assert (deployment.trigger, first.deployment_id) == (Trigger.SCHEDULE, deployment.pk)


def test_a_slot_due_while_the_service_restarts_fires_once(project, web1, alice):
    schedule = hourly(project, web1, alice, now=utc(2026, 12, 2, 10, 20))
    # The process that was running claims the 11:00 slot, then stops; the new process reads
    # the stored schedule and ticks at the same minute: nothing is left to claim.
    assert len(schedules.schedules_tick(now=utc(2026, 12, 2, 11, 0, 1))) == 1
    connection.close()
    assert schedules.schedules_tick(now=utc(2026, 12, 2, 11, 0, 20)) == []
    schedule.refresh_from_db()
    assert schedule.next_run_at == utc(2026, 12, 2, 12, 0)
    assert ScheduleRun.objects.count() == 1


def test_after_a_downtime_it_runs_one_missed_slot_and_says_how_many_it_dropped(
    project, web1, alice
):
    schedule = hourly(project, web1, alice, now=utc(2026, 12, 2, 10, 20))

    # Down from 10:30 to 14:10: the 11:00, 12:00, 13:00 and 14:00 slots passed.
    runs = schedules.schedules_tick(now=utc(2026, 12, 2, 14, 10))

    assert [run.slot for run in runs] == [utc(2026, 12, 2, 11, 0)]
    assert "3 later slot(s) passed while Slipway was not running" in runs[0].reason
    assert "3 h 10 min late" in runs[0].reason
    schedule.refresh_from_db()
    assert schedule.next_run_at == utc(2026, 12, 2, 15, 0)
    assert schedules.schedules_tick(now=utc(2026, 12, 2, 14, 11)) == []


def test_a_one_off_schedule_runs_once_and_then_has_no_next_slot(project, web1, alice):
    schedule = schedules.schedule_create(
        project=project,
        actor=alice,
        now=utc(2026, 12, 2, 10, 0),
        name="release night",
        kind=ScheduleKind.ONCE,
        run_at=datetime(2026, 12, 24, 18, 0),  # wall-clock time in Paris: 17:00 UTC
        time_zone="Europe/Paris",
        servers=[web1],
    )
    assert schedule.next_run_at == utc(2026, 12, 24, 17, 0)
    assert schedules.schedules_tick(now=utc(2026, 12, 24, 16, 59)) == []
    assert len(schedules.schedules_tick(now=utc(2026, 12, 24, 17, 0))) == 1
    schedule.refresh_from_db()
    assert schedule.next_run_at is None
    assert schedules.schedules_tick(now=utc(2026, 12, 25, 17, 0)) == []


def test_a_paused_schedule_is_not_claimed_and_catches_nothing_up_when_resumed(project, web1, alice):
    schedule = hourly(project, web1, alice, now=utc(2026, 12, 2, 10, 20))
    schedules.schedule_update(schedule=schedule, actor=alice, enabled=False)
    assert schedules.schedules_tick(now=utc(2026, 12, 2, 13, 0)) == []

    schedules.schedule_update(
        schedule=schedule, actor=alice, enabled=True, now=utc(2026, 12, 2, 13, 30)
    )

    schedule.refresh_from_db()
    assert schedule.next_run_at == utc(2026, 12, 2, 14, 0)
    assert ScheduleRun.objects.count() == 0


def test_a_one_off_time_in_the_past_is_refused_naming_the_field(project, web1, alice):
    with pytest.raises(InvalidInput) as refused:
        schedules.schedule_create(
            project=project,
            actor=alice,
            now=utc(2026, 12, 2, 10, 0),
            name="yesterday",
            kind=ScheduleKind.ONCE,
            run_at=utc(2026, 12, 1, 10, 0),
            servers=[web1],
        )
    assert refused.value.field == "run_at"


def test_a_daily_schedule_needs_its_time_of_day(project, web1, alice):
    with pytest.raises(InvalidInput) as refused:
        schedules.schedule_create(
            project=project, actor=alice, name="nightly", kind=ScheduleKind.DAILY, servers=[web1]
        )
    assert refused.value.field == "time_of_day"
    schedule = schedules.schedule_create(
        project=project,
        actor=alice,
        now=utc(2026, 12, 2, 10, 0),
        name="nightly",
        kind=ScheduleKind.DAILY,
        time_of_day=time(3, 0),
        servers=[web1],
    )
    assert schedule.next_run_at == utc(2026, 12, 3, 3, 0)
    assert schedule.next_run_at - utc(2026, 12, 2, 10, 0) == timedelta(hours=17)
