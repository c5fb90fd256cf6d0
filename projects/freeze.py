"""Freeze windows: whether a project's servers are frozen at an instant, and until when.

A window covers an instant when, in the window's time zone (IANA, so daylight saving time
follows the place), the instant falls on one of its weekdays between its start and end times
(an end at or before the start runs into the next day), or on a day of its date range. A
window with an environment covers only servers (or groups) of that environment. What a
freeze refuses is decided by builds.services.deployment_create (docs/freeze-windows.md).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from builds.engine.errors import InvalidInput
from projects.models import WEEKDAY_NAMES, FreezeKind, FreezeWindow

#: Windows that follow on from one another counted at most when working out when a freeze
#: ends (a year of daily windows back to back).
MAX_CHAINED_WINDOWS = 400


def zone(name: str, *, field: str = "time_zone") -> ZoneInfo:
    """The IANA time zone ``name`` ("Europe/Paris", "UTC"); InvalidInput naming ``field``
    when the system's tz database has no such zone."""
    name = (name or "").strip()
    if not name or "\x00" in name or name not in _zone_names():
        raise InvalidInput(
            field,
            f"{name!r} is not a time zone. Give an IANA name such as UTC, Europe/Paris or "
            "America/New_York.",
        )
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(field, f"{name!r} is not a time zone.") from None


_ZONES: frozenset[str] | None = None


def _zone_names() -> frozenset[str]:
    global _ZONES
    if _ZONES is None:
        _ZONES = frozenset(available_timezones() | {"UTC"})
    return _ZONES


def weekdays_clean(value: object, *, field: str = "weekdays") -> list[int]:
    """Days as numbers 0 (Monday) to 6 (Sunday), sorted, none twice; InvalidInput otherwise."""
    if not isinstance(value, list | tuple) or not value:
        raise InvalidInput(field, "choose at least one day (0 = Monday … 6 = Sunday).")
    days: set[int] = set()
    for item in value:
        try:
            day = int(item)
        except (TypeError, ValueError):
            raise InvalidInput(
                field, f"{item!r} is not a day number (0 = Monday … 6 = Sunday)."
            ) from None
        if not 0 <= day <= 6:
            raise InvalidInput(field, f"{day} is not a day number (0 = Monday … 6 = Sunday).")
        days.add(day)
    return sorted(days)


def freeze_window_clean(data: dict[str, Any], *, instance: FreezeWindow | None = None) -> None:
    """Check a freeze window's fields in place (the whole window once merged with
    ``instance``'s stored values); InvalidInput naming the field."""
    merged = {
        name: data.get(name, getattr(instance, name, None))
        for name in (
            "name",
            "kind",
            "weekdays",
            "start_time",
            "end_time",
            "start_date",
            "end_date",
            "time_zone",
        )
    }
    if "name" in data or instance is None:
        data["name"] = str(data.get("name") or "").strip()
        if not data["name"]:
            raise InvalidInput("name", "is empty.")
    if "environment" in data:
        data["environment"] = str(data["environment"] or "").strip()
    data["time_zone"] = zone(str(merged["time_zone"] or "UTC")).key
    kind = merged["kind"] or FreezeKind.WEEKLY
    if kind not in FreezeKind.values:
        raise InvalidInput("kind", f"must be one of {', '.join(FreezeKind.values)}.")
    if kind == FreezeKind.WEEKLY:
        data["weekdays"] = weekdays_clean(merged["weekdays"])
        for name in ("start_time", "end_time"):
            if not isinstance(merged[name], time):
                raise InvalidInput(name, "give a time of day (HH:MM) for a weekly window.")
        data["start_date"] = data["end_date"] = None
    else:
        start, end = merged["start_date"], merged["end_date"]
        for name, value in (("start_date", start), ("end_date", end)):
            if not isinstance(value, date):
                raise InvalidInput(name, "give a date (YYYY-MM-DD) for a window of dates.")
        assert isinstance(start, date) and isinstance(end, date)
        if end < start:
            raise InvalidInput("end_date", "is before the start date.")
        data["weekdays"] = []
        data["start_time"] = data["end_time"] = None


@dataclass(frozen=True)
class Freeze:
    """A freeze in force: the window, and when it ends (UTC)."""

    window: FreezeWindow
    until: datetime

    def describe(self) -> str:
        """ "frozen by “Friday afternoons” (production) until Mon 2026-12-07 08:00 CET" """
        local = self.until.astimezone(ZoneInfo(self.window.time_zone))
        scope = f" ({self.window.environment})" if self.window.environment else ""
        return (
            f"frozen by “{self.window.name}”{scope} until "
            f"{local:%a %Y-%m-%d %H:%M} {local.tzname()}"
        )


def window_end(window: FreezeWindow, now: datetime) -> datetime | None:
    """When ``window`` stops covering ``now`` (an aware datetime), as a UTC datetime; None
    when it does not cover ``now``. Comparisons are made in UTC, so a wall-clock time that
    occurs twice (the hour a clock goes back) or never (the hour it skips) is read as
    zoneinfo reads it (fold 0: the earlier offset)."""
    tz = ZoneInfo(window.time_zone)
    instant = now.astimezone(UTC)
    today = instant.astimezone(tz).date()
    if window.kind == FreezeKind.DATES:
        if window.start_date is None or window.end_date is None:
            return None
        if window.start_date <= today <= window.end_date:
            return _utc(window.end_date + timedelta(days=1), time(0), tz)
        return None
    if window.start_time is None or window.end_time is None:
        return None
    days = set(window.weekdays or ())
    # A window that runs past midnight may have started the day before.
    for day in (today, today - timedelta(days=1)):
        if day.weekday() not in days:
            continue
        begin = _utc(day, window.start_time, tz)
        end_day = day if window.end_time > window.start_time else day + timedelta(days=1)
        end = _utc(end_day, window.end_time, tz)
        if begin <= instant < end:
            return end
    return None


def _utc(day: date, at: time, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, at, tzinfo=tz).astimezone(UTC)


def active_freeze(
    windows: Iterable[FreezeWindow], now: datetime, environments: Collection[str] | None = None
) -> Freeze | None:
    """The freeze in force at ``now`` for servers of ``environments`` (None: any server of
    the project, for the dashboard's badge): the window covering ``now`` that ends last, and
    when the freeze really ends, windows that follow on without a gap included (a weekly
    window on Friday, Saturday and Sunday ends on Monday)."""
    relevant = [
        window
        for window in windows
        if environments is None or not window.environment or window.environment in environments
    ]
    found: Freeze | None = None
    for window in relevant:
        end = window_end(window, now)
        if end is not None and (found is None or end > found.until):
            found = Freeze(window=window, until=end)
    if found is None:
        return None
    until = found.until
    for _ in range(MAX_CHAINED_WINDOWS):
        ends = [end for window in relevant if (end := window_end(window, until)) is not None]
        if not ends:
            break
        until = max(ends)
    return Freeze(window=found.window, until=until)


def project_freeze(
    project_id: int, now: datetime, environments: Collection[str] | None = None
) -> Freeze | None:
    """active_freeze over the project's windows."""
    return active_freeze(FreezeWindow.objects.filter(project_id=project_id), now, environments)


def describe_weekdays(days: Iterable[int]) -> str:
    """ "Monday, Friday" from [0, 4]."""
    return ", ".join(WEEKDAY_NAMES[day] for day in sorted(days) if 0 <= day <= 6)


def frozen_projects(project_ids: Iterable[int], now: datetime) -> Mapping[int, Freeze]:
    """The freeze in force on each of ``project_ids`` (any environment), for the project
    list: one query for all the windows."""
    by_project: dict[int, list[FreezeWindow]] = {}
    for window in FreezeWindow.objects.filter(project_id__in=list(project_ids)):
        by_project.setdefault(window.project_id, []).append(window)
    result = {}
    for project_id, windows in by_project.items():
        freeze = active_freeze(windows, now)
        if freeze is not None:
            result[project_id] = freeze
    return result
