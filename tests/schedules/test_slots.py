"""When a schedule's slots fall: one-off instants, daily and weekly rules and cron expressions,
read in the schedule's time zone, across daylight saving time changes (cronsim's rules)."""

from __future__ import annotations

from datetime import UTC, datetime, time
from zoneinfo import ZoneInfo

import pytest

from builds.engine.errors import InvalidInput
from builds.models import Schedule, ScheduleKind
from builds.schedules import cron_clean, cron_expression, next_slot, slots_between

PARIS = ZoneInfo("Europe/Paris")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0):
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def test_it_turns_a_weekly_rule_into_cron_days_counted_from_sunday():
    schedule = Schedule(
        kind=ScheduleKind.WEEKLY, time_of_day=time(4, 30), weekdays=[0, 4, 6], time_zone="UTC"
    )
    assert cron_expression(schedule) == "30 4 * * 0,1,5"
    schedule.weekdays = [0, 1, 2, 3, 4]
    assert cron_expression(schedule) == "30 4 * * 1-5"


def test_it_fires_a_daily_rule_at_the_local_time_in_winter_and_in_summer():
    schedule = Schedule(kind=ScheduleKind.DAILY, time_of_day=time(4, 0), time_zone="Europe/Paris")
    assert next_slot(schedule, utc(2026, 1, 10, 12, 0)) == utc(2026, 1, 11, 3, 0)  # CET, +01
    assert next_slot(schedule, utc(2026, 7, 10, 12, 0)) == utc(2026, 7, 11, 2, 0)  # CEST, +02


def test_it_fires_a_local_time_the_clock_skips_once_at_the_end_of_the_gap():
    # 2026-03-29: Paris goes from 02:00 to 03:00; 02:30 does not exist that night.
    schedule = Schedule(kind=ScheduleKind.DAILY, time_of_day=time(2, 30), time_zone="Europe/Paris")
    first = next_slot(schedule, utc(2026, 3, 28, 12, 0))
    assert first == datetime(2026, 3, 29, 3, 0, tzinfo=PARIS).astimezone(UTC)
    assert next_slot(schedule, first) == datetime(2026, 3, 30, 2, 30, tzinfo=PARIS).astimezone(UTC)


def test_it_fires_a_local_time_the_clock_passes_twice_only_once():
    # 2026-10-25: Paris goes back from 03:00 to 02:00; 02:30 happens twice.
    schedule = Schedule(kind=ScheduleKind.DAILY, time_of_day=time(2, 30), time_zone="Europe/Paris")
    first = next_slot(schedule, utc(2026, 10, 24, 12, 0))
    assert first == utc(2026, 10, 25, 0, 30)  # the first 02:30, CEST
    assert next_slot(schedule, first) == utc(2026, 10, 26, 1, 30)  # the next day, CET


def test_it_fires_a_cron_expression_in_its_time_zone():
    schedule = Schedule(kind=ScheduleKind.CRON, cron="0 9 * * 1-5", time_zone="America/New_York")
    # Friday 2026-12-04 15:00 UTC is 10:00 in New York: the next slot is Monday 09:00 EST.
    assert next_slot(schedule, utc(2026, 12, 4, 15, 0)) == utc(2026, 12, 7, 14, 0)


def test_it_fires_a_one_off_schedule_at_its_instant_and_never_again():
    schedule = Schedule(kind=ScheduleKind.ONCE, run_at=utc(2026, 12, 24, 17, 0))
    assert next_slot(schedule, utc(2026, 12, 24, 16, 59)) == utc(2026, 12, 24, 17, 0)
    assert next_slot(schedule, utc(2026, 12, 24, 17, 0)) is None


def test_it_counts_the_slots_missed_during_a_downtime():
    schedule = Schedule(kind=ScheduleKind.CRON, cron="0 * * * *", time_zone="UTC")
    assert slots_between(schedule, utc(2026, 1, 1, 10, 0), utc(2026, 1, 1, 13, 30)) == 3


@pytest.mark.parametrize("expression", ["61 * * * *", "* * *", "0 4 * * funday", ""])
def test_it_refuses_a_cron_expression_cronsim_cannot_read_naming_the_field(expression):
    with pytest.raises(InvalidInput) as refused:
        cron_clean(expression)
    assert refused.value.field == "cron"
    assert "0 4 * * 1-5" in str(refused.value)


def test_it_normalises_the_spaces_of_a_cron_expression():
    assert cron_clean("  0   4 * *   1-5 ") == "0 4 * * 1-5"
