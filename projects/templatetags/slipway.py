"""Template filters for the dashboard: durations, revisions, plain text from terminal output."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import yaml
from django import template
from django.utils import timezone

from builds.dora import FailureReason
from builds.models import Schedule
from builds.schedules import describe_rule
from projects.freeze import describe_weekdays, window_end
from projects.models import FreezeKind, FreezeWindow

register = template.Library()

FAILURE_REASONS = {
    FailureReason.FAILED: "It failed",
    FailureReason.REVERTED: "A health check failed: reverted",
    FailureReason.ROLLED_BACK: "Rolled back",
    FailureReason.FIXED: "A fix went live soon after",
}

# ANSI escape sequences (CSI, OSC, and two-character escapes) and other control characters.
# Commit messages and the like are shown as plain text: colours belong to the live log only.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@register.filter
def plain(value: object) -> str:
    """Text without terminal escape sequences or control characters (autoescaped as usual)."""
    return _CONTROL.sub("", _ESCAPES.sub("", str(value or "")))


@register.filter
def as_yaml(value: object) -> str:
    """A setting's value (settings as code: lists, mappings, text) as block YAML, the way
    .slipway.yml writes it; "[]" or "{}" when empty."""
    return plain(yaml.safe_dump(value, sort_keys=False, allow_unicode=True, width=100)).replace(
        "\n...\n", "\n"
    )


@register.filter
def short_sha(value: object) -> str:
    text = str(value or "")
    return text[:7] if re.fullmatch(r"[0-9a-f]{40}|[0-9a-f]{64}", text) else text


@register.filter
def duration(seconds: float | int | None) -> str:
    """4.2 s, 1 min 05 s, 2 h 03 min."""
    if seconds is None:
        return "—"
    seconds = max(0.0, float(seconds))
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, rest = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@register.filter
def between(start: datetime | None, end: datetime | None) -> float | None:
    """Seconds from ``start`` to ``end`` (or to now while it is still going)."""
    if start is None:
        return None
    return ((end or timezone.now()) - start).total_seconds()


@register.filter
def percent(done: int | None, total: int | None) -> int:
    if not total:
        return 0
    return max(0, min(100, int(100 * (done or 0) / total)))


@register.filter
def detail_items(detail: Any) -> list[tuple[str, str]]:
    """An audit event's details as (key, value) pairs, lists joined with commas."""
    if not isinstance(detail, dict):
        return []
    items = []
    for key, value in detail.items():
        if isinstance(value, list | tuple):
            value = ", ".join(str(item) for item in value)
        if value in ("", None):
            continue
        items.append((str(key).replace("_", " "), str(value)))
    return items


@register.filter
def field_label(field_name: str) -> str:
    return field_name.replace("_", " ").capitalize()


_STATUS_LABELS = {
    "queued": "Queued",
    "running": "Running",
    "waiting": "Waiting",
    "succeeded": "Succeeded",
    "failed": "Failed",
    "cancelled": "Cancelled",
    "skipped": "Skipped",
    "rolled_back": "Rolled back",
}


@register.filter
def status_label(status: str) -> str:
    return _STATUS_LABELS.get(status, str(status).replace("_", " ").capitalize())


@register.filter
def redacted(url: str) -> str:
    """A repository URL without any credentials typed into it."""
    from builds.engine.git import redact_url

    return redact_url(str(url or ""))


@register.filter
def ago(value: datetime | None) -> str:
    """ "just now", "5 minutes ago", "2 days ago": one unit is enough at a glance."""
    if value is None:
        return ""
    from django.utils.timesince import timesince

    if (timezone.now() - value).total_seconds() < 60:
        return "just now"
    return f"{timesince(value, depth=1)} ago"


@register.filter
def schedule_rule(schedule: Schedule) -> str:
    """A schedule's rule in words (builds.schedules.describe_rule)."""
    return describe_rule(schedule)


@register.filter
def freeze_rule(window: FreezeWindow) -> str:
    """ "Friday, Saturday 16:00 to 08:00 Europe/Paris", "2026-12-24 → 2027-01-01 UTC" """
    if window.kind == FreezeKind.DATES:
        return f"{window.start_date} → {window.end_date} {window.time_zone}"
    start = window.start_time.strftime("%H:%M") if window.start_time else "?"
    end = window.end_time.strftime("%H:%M") if window.end_time else "?"
    return f"{describe_weekdays(window.weekdays)} {start} to {end} {window.time_zone}"


@register.filter
def freeze_active(window: FreezeWindow) -> bool:
    return window_end(window, timezone.now()) is not None


@register.filter
def rate(fraction: float | None) -> str:
    """0.4 -> "40%", 0.125 -> "12.5%"; None (nothing to divide) -> "—"."""
    if fraction is None:
        return "—"
    percent = round(fraction * 100, 1)
    return f"{percent:g}%"


@register.filter
def failure_reason(reason: str) -> str:
    """Why a deployment counts as a failed change (builds.dora.FailureReason), in words."""
    return FAILURE_REASONS.get(reason, reason)
