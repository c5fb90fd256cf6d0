"""When a freeze window covers an instant: weekdays and hours in its time zone (past midnight
too, across daylight saving time), date ranges for holidays, and environments."""

from __future__ import annotations

from datetime import UTC, date, datetime, time

import pytest

from builds.engine.errors import InvalidInput
from projects.freeze import active_freeze, freeze_window_clean, window_end
from projects.models import FreezeKind, FreezeWindow


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0):
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def friday_evenings(**fields) -> FreezeWindow:
    # Friday 16:00 to Monday 08:00 would be three windows; this one is Friday 16:00 → 08:00.
    return FreezeWindow(
        name="Friday evening",
        kind=FreezeKind.WEEKLY,
        weekdays=[4],
        start_time=time(16, 0),
        end_time=time(8, 0),
        time_zone="Europe/Paris",
        **fields,
    )


def test_it_covers_its_hours_in_its_time_zone_and_ends_past_midnight():
    window = friday_evenings()
    # Friday 2026-12-04 15:30 UTC is 16:30 in Paris (CET).
    assert window_end(window, utc(2026, 12, 4, 15, 30)) == utc(2026, 12, 5, 7, 0)
    # Saturday 06:59 UTC is 07:59 in Paris: still the Friday window.
    assert window_end(window, utc(2026, 12, 5, 6, 59)) == utc(2026, 12, 5, 7, 0)
    assert window_end(window, utc(2026, 12, 5, 7, 0)) is None
    assert window_end(window, utc(2026, 12, 4, 14, 59)) is None  # 15:59 in Paris


def test_it_follows_daylight_saving_time():
    window = friday_evenings()
    # In July Paris is UTC+2: 16:00 local is 14:00 UTC.
    assert window_end(window, utc(2026, 7, 3, 14, 0)) == utc(2026, 7, 4, 6, 0)
    assert window_end(window, utc(2026, 7, 3, 13, 59)) is None


def test_a_window_with_equal_start_and_end_covers_its_whole_days():
    window = FreezeWindow(
        name="weekend",
        weekdays=[5, 6],
        start_time=time(0, 0),
        end_time=time(0, 0),
        time_zone="UTC",
    )
    assert window_end(window, utc(2026, 12, 5, 0, 0)) == utc(2026, 12, 6, 0, 0)
    assert window_end(window, utc(2026, 12, 6, 23, 59)) == utc(2026, 12, 7, 0, 0)
    assert window_end(window, utc(2026, 12, 7, 0, 0)) is None


def test_a_date_range_covers_every_day_of_it_in_its_time_zone():
    window = FreezeWindow(
        name="holidays",
        kind=FreezeKind.DATES,
        start_date=date(2026, 12, 24),
        end_date=date(2027, 1, 1),
        time_zone="America/New_York",
    )
    # 2026-12-24 04:59 UTC is still the 23rd in New York.
    assert window_end(window, utc(2026, 12, 24, 4, 59)) is None
    assert window_end(window, utc(2026, 12, 24, 5, 0)) == utc(2027, 1, 2, 5, 0)
    assert window_end(window, utc(2027, 1, 2, 4, 59)) == utc(2027, 1, 2, 5, 0)


def test_an_environment_window_covers_only_servers_of_that_environment():
    production = friday_evenings(environment="production")
    friday = utc(2026, 12, 4, 16, 0)
    assert active_freeze([production], friday, {"staging"}) is None
    assert active_freeze([production], friday, {"staging", "production"}) is not None
    # The dashboard's badge asks about any environment.
    assert active_freeze([production], friday, None) is not None


def test_windows_that_follow_on_end_the_freeze_when_the_last_of_them_ends():
    evening = friday_evenings()
    weekend = FreezeWindow(
        name="weekend", weekdays=[4, 5, 6], start_time=time(0), end_time=time(0), time_zone="UTC"
    )
    freeze = active_freeze([evening, weekend], utc(2026, 12, 4, 16, 0))
    # Friday evening covers now and ends later today than Friday's part of the weekend; the
    # weekend's days follow on from it until Monday.
    assert freeze is not None and freeze.window.name == "Friday evening"
    assert freeze.until == utc(2026, 12, 7, 0, 0)
    assert freeze.describe() == "frozen by “Friday evening” until Mon 2026-12-07 01:00 CET"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"name": "x", "weekdays": [], "start_time": time(1), "end_time": time(2)}, "weekdays"),
        ({"name": "x", "weekdays": [7], "start_time": time(1), "end_time": time(2)}, "weekdays"),
        ({"name": "x", "weekdays": [1], "end_time": time(2)}, "start_time"),
        ({"name": "x", "kind": "dates", "start_date": date(2026, 1, 2)}, "end_date"),
        (
            {
                "name": "x",
                "kind": "dates",
                "start_date": date(2026, 1, 2),
                "end_date": date(2026, 1, 1),
            },
            "end_date",
        ),
        (
            {
                "name": "x",
                "weekdays": [1],
                "start_time": time(1),
                "end_time": time(2),
                "time_zone": "Mars/Olympus",
            },
            "time_zone",
        ),
        ({"name": " ", "weekdays": [1], "start_time": time(1), "end_time": time(2)}, "name"),
    ],
)
def test_it_refuses_a_window_it_cannot_read_naming_the_field(data, field):
    with pytest.raises(InvalidInput) as refused:
        freeze_window_clean(dict(data))
    assert refused.value.field == field
