"""DORA's four keys per project and environment: deployment frequency, lead time for changes,
change failure rate and time to restore (docs/metrics.md has the definitions).

Source of the metrics: DORA, "DORA's software delivery metrics: the four keys",
https://dora.dev/guides/dora-metrics-four-keys/. Not to be confused with builds.metrics,
which are Prometheus gauges and counters about Slipway itself.

Two halves: ``deployment_records`` reads a project's finished deployments into plain
``DeploymentRecord`` values (one query for the deployments, one for their targets), and
``dora_report`` is a pure function over such records, so a fixture history has exact answers.
"""

from __future__ import annotations

import csv
import io
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from django.conf import settings
from django.utils import timezone

from builds.models import FINAL, Deployment, DeploymentTarget, Kind, TargetStatus
from projects.models import Project
from servers.models import Server

#: The windows the dashboard offers; the API takes any number of days up to MAX_DAYS.
WINDOWS = (7, 30, 90)
DEFAULT_DAYS = 30
MAX_DAYS = 366


class Outcome:
    """What a deployment did in the environment looked at (from its targets there)."""

    #: At least one server took the release (and none failed): it went live.
    LIVE = "live"
    #: A server failed (the build, the transfer, a command...).
    FAILED = "failed"
    #: A health check failed after the switch and the server went back (TargetStatus
    #: rolled_back).
    REVERTED = "reverted"
    #: Cancelled or skipped everywhere: no change was attempted there; not counted.
    CANCELLED = "cancelled"


class FailureReason:
    FAILED = "failed"
    REVERTED = "reverted"
    ROLLED_BACK = "rolled_back"
    FIXED = "fixed"


#: A commit subject that says it repairs something: Conventional Commits' ``fix:`` and
#: ``fix(scope):``, "Fix ...", "Hotfix ...", and git revert's default "Revert "..."".
FIX_SUBJECT = re.compile(r"^(fix|hotfix|revert)\b", re.IGNORECASE)
FIX_BRANCH = re.compile(r"^(fix|hotfix)[/-]", re.IGNORECASE)

ROLLBACK_KINDS = (Kind.ROLLBACK, Kind.SWITCH)
#: What counts as a deployment: a promotion (docs/promote.md) puts a release live like one.
DEPLOY_KINDS = (Kind.DEPLOY, Kind.PROMOTE)


def is_fix(subjects: Iterable[str], branch: str) -> bool:
    """Whether a deployment looks like a fix: one of its commit subjects starts with "fix",
    "hotfix" or "revert" (a word, any case), or its branch starts with "fix/" or "hotfix/"
    (or "-"). The rule of docs/metrics.md#change-failure-rate."""
    return bool(FIX_BRANCH.match(branch)) or any(FIX_SUBJECT.match(s) for s in subjects)


@dataclass(frozen=True)
class DeploymentRecord:
    """One finished deployment, rollback or switch back, as seen in one environment.

    Times are timezone-aware; ``finished_at`` is when it ended (for a deployment that went
    live: when its last server was switched and checked)."""

    id: int
    kind: str
    outcome: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime
    first_commit_at: datetime | None = None
    rollback_of: int | None = None
    fix: bool = False
    revision: str = ""

    @property
    def is_rollback(self) -> bool:
        return self.kind in ROLLBACK_KINDS

    @property
    def is_deploy(self) -> bool:
        return self.kind in DEPLOY_KINDS

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()

    @property
    def lead_time_seconds(self) -> float | None:
        """Live time minus the first commit's time, for a deployment that went live."""
        if not self.is_deploy or self.outcome != Outcome.LIVE or self.first_commit_at is None:
            return None
        return (self.finished_at - self.first_commit_at).total_seconds()


@dataclass(frozen=True)
class DeploymentFigures:
    """A deployment with what the metrics made of it: one row of the CSV export."""

    record: DeploymentRecord
    change_failed: bool = False
    failure_reason: str = ""
    restored_at: datetime | None = None
    restored_by: int | None = None

    @property
    def time_to_restore_seconds(self) -> float | None:
        if self.restored_at is None:
            return None
        return (self.restored_at - self.record.finished_at).total_seconds()


@dataclass
class DayFigures:
    """One UTC day of the window. Deployments are counted on the day they finished."""

    day: date
    #: Went live and stayed (not rolled back, not fixed within the window).
    live: int = 0
    #: Went live, then rolled back or fixed.
    live_then_failed: int = 0
    #: Failed, or reverted by a failed health check.
    failed: int = 0
    rollbacks: int = 0
    lead_times: list[float] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)

    @property
    def deployments(self) -> int:
        """Deployments attempted that day (live, live then failed, failed)."""
        return self.live + self.live_then_failed + self.failed

    @property
    def change_failure_rate(self) -> float | None:
        total = self.deployments
        return (self.live_then_failed + self.failed) / total if total else None

    @property
    def lead_time_seconds(self) -> float | None:
        return statistics.median(self.lead_times) if self.lead_times else None

    @property
    def duration_seconds(self) -> float | None:
        return statistics.median(self.durations) if self.durations else None


@dataclass(frozen=True)
class DoraReport:
    """The four keys over one window (``since`` to ``until``) in one environment ("" = all
    of the project's servers). Durations are seconds; rates are fractions (0.25 = 25%)."""

    environment: str
    days: int
    since: datetime
    until: datetime
    fix_window_hours: int
    rows: list[DeploymentFigures]
    per_day: list[DayFigures]

    def _deploys(self) -> list[DeploymentFigures]:
        return [
            row
            for row in self.rows
            if row.record.is_deploy and row.record.outcome != Outcome.CANCELLED
        ]

    @property
    def deployments(self) -> int:
        """Deployments attempted: went live, failed or reverted (cancelled ones are not)."""
        return len(self._deploys())

    @property
    def successful_deployments(self) -> int:
        """Deployments that went live: what deployment frequency counts."""
        return sum(1 for row in self._deploys() if row.record.outcome == Outcome.LIVE)

    @property
    def deployments_per_day(self) -> float:
        return self.successful_deployments / self.days

    @property
    def deployments_per_week(self) -> float:
        return self.successful_deployments * 7 / self.days

    @property
    def lead_times(self) -> list[float]:
        return [
            lead for row in self._deploys() if (lead := row.record.lead_time_seconds) is not None
        ]

    @property
    def lead_time_seconds(self) -> float | None:
        """Median lead time for changes; None when no deployment in the window has one."""
        return statistics.median(self.lead_times) if self.lead_times else None

    @property
    def lead_time_unmeasured(self) -> int:
        """Deployments that went live without a first commit time (first deployments,
        redeployments, rows recorded before Slipway kept it): left out of the lead time."""
        return self.successful_deployments - len(self.lead_times)

    @property
    def failed_changes(self) -> int:
        return sum(1 for row in self._deploys() if row.change_failed)

    @property
    def change_failure_rate(self) -> float | None:
        return self.failed_changes / self.deployments if self.deployments else None

    @property
    def restore_times(self) -> list[float]:
        return [
            restore
            for row in self._deploys()
            if (restore := row.time_to_restore_seconds) is not None
        ]

    @property
    def time_to_restore_seconds(self) -> float | None:
        """Median time to restore over the failures restored so far."""
        return statistics.median(self.restore_times) if self.restore_times else None

    @property
    def unrestored_failures(self) -> int:
        return self.failed_changes - len(self.restore_times)


def window_start(now: datetime, days: int) -> datetime:
    """The start of a window of ``days`` UTC calendar days that ends with ``now``'s day:
    midnight UTC ``days - 1`` days before it."""
    today = now.astimezone(UTC).date()
    first = today - timedelta(days=days - 1)
    return datetime.combine(first, time.min, tzinfo=UTC)


def dora_report(
    records: Sequence[DeploymentRecord],
    *,
    now: datetime,
    days: int,
    environment: str = "",
    fix_window_hours: int = 24,
) -> DoraReport:
    """The four keys from ``records`` (one environment's finished deployments, rollbacks and
    switches back; any order), over the ``days`` UTC days ending with ``now``'s.

    Each deployment in the window that was attempted (went live, failed or reverted) counts
    once; it is a failed change when it failed, was reverted by a failed health check, or
    went live and the next change that went live (or rollback) in the environment was a
    rollback (or a rollback names it), or was a fix that went live within
    ``fix_window_hours`` (0: the fix rule is off). A failed change is restored by the next
    deployment or rollback that went live after it ended. Definitions: docs/metrics.md,
    after https://dora.dev/guides/dora-metrics-four-keys/.
    """
    since = window_start(now, days)
    ordered = sorted(
        (r for r in records if since <= r.finished_at <= now),
        key=lambda r: (r.finished_at, r.id),
    )
    rolled_back_ids = {
        r.rollback_of
        for r in ordered
        if r.is_rollback and r.outcome != Outcome.CANCELLED and r.rollback_of is not None
    }
    fix_window = timedelta(hours=fix_window_hours)
    rows = []
    for index, record in enumerate(ordered):
        later = ordered[index + 1 :]
        reason = _failure_reason(record, later, rolled_back_ids, fix_window)
        restored = None
        if reason:
            restored = next((r for r in later if r.outcome == Outcome.LIVE), None)
        rows.append(
            DeploymentFigures(
                record=record,
                change_failed=bool(reason),
                failure_reason=reason,
                restored_at=restored.finished_at if restored else None,
                restored_by=restored.id if restored else None,
            )
        )
    return DoraReport(
        environment=environment,
        days=days,
        since=since,
        until=now,
        fix_window_hours=fix_window_hours,
        rows=rows,
        per_day=_per_day(rows, since, days),
    )


def _failure_reason(
    record: DeploymentRecord,
    later: Sequence[DeploymentRecord],
    rolled_back_ids: set[int],
    fix_window: timedelta,
) -> str:
    if not record.is_deploy or record.outcome == Outcome.CANCELLED:
        return ""
    if record.outcome == Outcome.FAILED:
        return FailureReason.FAILED
    if record.outcome == Outcome.REVERTED:
        return FailureReason.REVERTED
    if record.id in rolled_back_ids:
        return FailureReason.ROLLED_BACK
    # The next change of the environment: a deployment that went live, or a rollback tried.
    following = next(
        (
            r
            for r in later
            if (r.is_rollback and r.outcome != Outcome.CANCELLED)
            or (r.is_deploy and r.outcome == Outcome.LIVE)
        ),
        None,
    )
    if following is None:
        return ""
    if following.is_rollback:
        return FailureReason.ROLLED_BACK
    if fix_window and following.fix and following.finished_at - record.finished_at <= fix_window:
        return FailureReason.FIXED
    return ""


def _per_day(rows: Sequence[DeploymentFigures], since: datetime, days: int) -> list[DayFigures]:
    first = since.date()
    per_day = [DayFigures(day=first + timedelta(days=n)) for n in range(days)]
    for row in rows:
        record = row.record
        if record.outcome == Outcome.CANCELLED:
            continue
        index = (record.finished_at.astimezone(UTC).date() - first).days
        if not 0 <= index < days:
            continue
        bucket = per_day[index]
        if record.is_rollback:
            bucket.rollbacks += 1
            continue
        if record.outcome != Outcome.LIVE:
            bucket.failed += 1
        elif row.change_failed:
            bucket.live_then_failed += 1
        else:
            bucket.live += 1
        if (lead := record.lead_time_seconds) is not None:
            bucket.lead_times.append(lead)
        if (duration := record.duration_seconds) is not None:
            bucket.durations.append(duration)
    return per_day


# --------------------------------------------------------------------------- from the database


def outcome_of(statuses: Sequence[str]) -> str:
    """A deployment's outcome from its targets' statuses in the environment looked at: failed
    if one failed, else reverted if one was rolled back after a failed check, else live if
    one succeeded, else cancelled (nothing was attempted there)."""
    if TargetStatus.FAILED in statuses:
        return Outcome.FAILED
    if TargetStatus.ROLLED_BACK in statuses:
        return Outcome.REVERTED
    if TargetStatus.SUCCEEDED in statuses:
        return Outcome.LIVE
    return Outcome.CANCELLED


def deployment_records(
    project: Project, *, environment: str, since: datetime, until: datetime
) -> list[DeploymentRecord]:
    """The project's deployments, rollbacks and switches back that finished between
    ``since`` and ``until``, each with its outcome on the servers of ``environment`` (their
    ``environment`` label; "" = every server). A deployment with no server there is left
    out. Previews are never included (they change nothing)."""
    finished = Deployment.objects.filter(
        project=project,
        kind__in=(*DEPLOY_KINDS, *ROLLBACK_KINDS),
        status__in=FINAL,
        finished_at__gte=since,
        finished_at__lte=until,
    ).only(
        "id",
        "kind",
        "branch",
        "commits",
        "created_at",
        "started_at",
        "finished_at",
        "first_commit_at",
        "rollback_of_id",
        "end_revision",
    )
    deployments = list(finished)
    # A subquery, not a list of ids: a year of deployments stays one statement on SQLite.
    targets = DeploymentTarget.objects.filter(deployment__in=finished.values("pk"))
    if environment:
        targets = targets.filter(server__environment=environment)
    statuses: dict[int, list[str]] = {}
    for deployment_id, status in targets.values_list("deployment_id", "status"):
        statuses.setdefault(deployment_id, []).append(status)
    records = []
    for deployment in deployments:
        if deployment.pk not in statuses or deployment.finished_at is None:
            continue
        subjects = [
            str(commit.get("subject", ""))
            for commit in deployment.commits
            if isinstance(commit, dict)
        ]
        records.append(
            DeploymentRecord(
                id=deployment.pk,
                kind=deployment.kind,
                outcome=outcome_of(statuses[deployment.pk]),
                created_at=deployment.created_at,
                started_at=deployment.started_at,
                finished_at=deployment.finished_at,
                first_commit_at=deployment.first_commit_at,
                rollback_of=deployment.rollback_of_id,
                fix=deployment.kind == Kind.DEPLOY and is_fix(subjects, deployment.branch),
                revision=deployment.end_revision,
            )
        )
    return records


def project_environments(project: Project) -> list[str]:
    """The environment labels of the project's servers, sorted ("" left out)."""
    return sorted(
        set(
            Server.objects.filter(project=project)
            .exclude(environment="")
            .values_list("environment", flat=True)
        )
    )


def project_dora(
    project: Project,
    *,
    environment: str = "",
    days: int = DEFAULT_DAYS,
    now: datetime | None = None,
) -> DoraReport:
    """The four keys of ``project`` in ``environment`` ("" = all its servers) over the last
    ``days`` UTC days (1..MAX_DAYS, the caller checks), with the fix window of
    SLIPWAY_METRICS_FIX_WINDOW_HOURS."""
    now = now or timezone.now()
    since = window_start(now, days)
    records = deployment_records(project, environment=environment, since=since, until=now)
    return dora_report(
        records,
        now=now,
        days=days,
        environment=environment,
        fix_window_hours=settings.METRICS_FIX_WINDOW_HOURS,
    )


# --------------------------------------------------------------------------- CSV export

DEPLOYMENT_COLUMNS = (
    "deployment",
    "kind",
    "environment",
    "outcome",
    "created_at",
    "started_at",
    "finished_at",
    "duration_seconds",
    "first_commit_at",
    "lead_time_seconds",
    "change_failed",
    "failure_reason",
    "restored_by",
    "restored_at",
    "time_to_restore_seconds",
    "revision",
)
DAY_COLUMNS = (
    "day",
    "deployments",
    "live",
    "live_then_failed",
    "failed",
    "rollbacks",
    "change_failure_rate",
    "lead_time_seconds",
    "duration_seconds",
)


def _cell(value: object) -> str:
    """RFC 4180 cell text: times in ISO 8601 UTC, None as an empty cell, booleans true/false. A
    text starting with = + - @ is quoted with ' so a spreadsheet does not run it (OWASP,
    CSV injection); only the environment label is free text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, float):
        return f"{value:g}" if value != int(value) else str(int(value))
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def _csv(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(value) for value in row])
    return buffer.getvalue()


def deployments_csv(report: DoraReport) -> str:
    """One row per deployment, rollback and switch back of the report (oldest first) with
    every figure the metrics used: DEPLOYMENT_COLUMNS. RFC 4180 (CRLF line ends)."""
    return _csv(
        DEPLOYMENT_COLUMNS,
        (
            (
                row.record.id,
                row.record.kind,
                report.environment,
                row.record.outcome,
                row.record.created_at,
                row.record.started_at,
                row.record.finished_at,
                row.record.duration_seconds,
                row.record.first_commit_at,
                row.record.lead_time_seconds,
                row.change_failed,
                row.failure_reason,
                row.restored_by,
                row.restored_at,
                row.time_to_restore_seconds,
                row.record.revision,
            )
            for row in report.rows
        ),
    )


def days_csv(report: DoraReport) -> str:
    """One row per UTC day of the window: DAY_COLUMNS. RFC 4180 (CRLF line ends)."""
    return _csv(
        DAY_COLUMNS,
        (
            (
                day.day.isoformat(),
                day.deployments,
                day.live,
                day.live_then_failed,
                day.failed,
                day.rollbacks,
                day.change_failure_rate,
                day.lead_time_seconds,
                day.duration_seconds,
            )
            for day in report.per_day
        ),
    )
