"""Scheduled deployments (docs/schedules.md): the rules, the next slot, the tick that claims
due slots, and the run that deploys through deployment_create or records why it did not.

- Rules: once (an instant), daily and weekly (turned into cron expressions), or a cron
  expression; all recurring ones are read by cronsim in the schedule's IANA time zone, so a
  slot follows daylight saving time: a local time the clock skips fires at the first minute
  after the gap, one it passes twice fires once (cronsim's rules, as healthchecks uses them).
- Claim: ``schedules_tick`` (celery beat's ``tick-schedules``, or the embedded loop) moves a
  due schedule's ``next_run_at`` forward with a conditional UPDATE and inserts the slot's
  ScheduleRun (unique per schedule and slot) in the same transaction, with the run's task
  message in the outbox: two ticks racing on one slot (two beat processes, a restart) make
  one run, and a run's message is sent once the claim committed.
- Catching up: a schedule whose slots passed while Slipway was down runs its first missed
  slot once; ``next_run_at`` then jumps to the first slot after now (the others are counted
  in the run's reason, not run).
- Run: ``schedule_run`` (the ``run_schedule`` task) deploys unless the project or a server is
  locked, a freeze window is in force, or (``skip_unchanged``) every server already runs the
  revision's current commit; each of those is recorded on the run with its reason.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from django.utils import timezone

from builds import gates
from builds.engine.errors import InvalidInput
from builds.engine.git import validate_ref
from builds.models import (
    Deployment,
    Schedule,
    ScheduleKind,
    ScheduleOutcome,
    ScheduleRun,
    Trigger,
)
from builds.services import (
    DeploymentFrozen,
    DeploymentGated,
    DeploymentLocked,
    DeploymentRefused,
    FreezeOverrideForbidden,
    deployment_create,
    freeze_in_force,
    lock_refusal,
)
from deployer import outbox
from deployer.db import retrying
from projects.freeze import weekdays_clean, zone
from projects.models import Project
from projects.services import audit_record, model_update
from servers.models import Release, Server, ServerGroup

logger = logging.getLogger(__name__)

#: The Celery task that runs one claimed slot (builds.tasks registers it; deployer/settings.py
#: routes it to the `webhooks` queue, whose tasks also create deployments).
RUN_SCHEDULE_TASK = "builds.tasks.run_schedule"
#: Due schedules claimed by one tick at most; the next tick takes the rest.
TICK_BATCH = 500
#: Missed slots counted for the run's reason at most (a rule firing every minute, down a week).
MISSED_COUNT_LIMIT = 10_000
#: A run this late or later says so in its reason.
LATE_NOTICE = timedelta(minutes=2)

RULE_FIELDS = ("kind", "run_at", "time_of_day", "weekdays", "cron", "time_zone")


# --------------------------------------------------------------------------- rules


def cron_clean(expression: str, *, field: str = "cron") -> str:
    """A cron expression cronsim accepts (five fields: minute hour day month weekday, with
    ranges, steps, names, L and #; https://github.com/cuu508/cronsim), whitespace
    normalised; InvalidInput naming ``field`` with cronsim's reason otherwise."""
    expression = " ".join(str(expression or "").split())
    if not expression:
        raise InvalidInput(field, "is empty: give five fields, such as 0 4 * * 1-5.")
    try:
        CronSim(expression, datetime(2000, 1, 1, tzinfo=UTC))
    except (CronSimError, ValueError) as exc:
        raise InvalidInput(
            field,
            f"{expression!r} is not a cron expression ({exc}). Give five fields: minute hour "
            "day-of-month month day-of-week, such as 0 4 * * 1-5.",
        ) from None
    return expression


def cron_expression(schedule: Schedule) -> str:
    """The cron expression of a recurring schedule: daily at 04:30 is ``30 4 * * *``,
    weekly on Monday and Friday (0 and 4 here) ``30 4 * * 1,5`` (cron counts from Sunday),
    on weekdays ``30 4 * * 1-5``."""
    if schedule.kind == ScheduleKind.CRON:
        return schedule.cron
    at = schedule.time_of_day or time(0)
    days = "*"
    if schedule.kind == ScheduleKind.WEEKLY:
        days = _cron_days(sorted({(day + 1) % 7 for day in schedule.weekdays}))
    return f"{at.minute} {at.hour} * * {days}"


def _cron_days(days: list[int]) -> str:
    """Cron day numbers (0 = Sunday), runs of three or more as ranges: [1, 2, 3, 4, 5] is
    "1-5", [0, 1, 5] "0,1,5"."""
    parts: list[str] = []
    start = 0
    while start < len(days):
        end = start
        while end + 1 < len(days) and days[end + 1] == days[end] + 1:
            end += 1
        if end - start >= 2:
            parts.append(f"{days[start]}-{days[end]}")
        else:
            parts.extend(str(day) for day in days[start : end + 1])
        start = end + 1
    return ",".join(parts)


def next_slot(schedule: Schedule, after: datetime) -> datetime | None:
    """The schedule's first slot strictly after ``after`` (aware), in UTC; None when there
    is none (a one-off whose instant passed)."""
    if schedule.kind == ScheduleKind.ONCE:
        if schedule.run_at is not None and schedule.run_at > after:
            return schedule.run_at.astimezone(UTC)
        return None
    local = after.astimezone(ZoneInfo(schedule.time_zone))
    try:
        return next(iter(CronSim(cron_expression(schedule), local))).astimezone(UTC)
    except StopIteration:  # an expression that never matches (30 February)
        return None


def slots_between(schedule: Schedule, after: datetime, until: datetime) -> int:
    """How many slots fall in (``after``, ``until``], counted up to MISSED_COUNT_LIMIT."""
    if schedule.kind == ScheduleKind.ONCE:
        return 0
    count = 0
    for slot in CronSim(cron_expression(schedule), after.astimezone(ZoneInfo(schedule.time_zone))):
        if slot.astimezone(UTC) > until or count >= MISSED_COUNT_LIMIT:
            break
        count += 1
    return count


def describe_rule(schedule: Schedule) -> str:
    """The rule in words: "Once at 2026-12-24 18:00 CET", "At 04:30 every day (Europe/Paris)"."""
    tz = ZoneInfo(schedule.time_zone)
    if schedule.kind == ScheduleKind.ONCE:
        if schedule.run_at is None:
            return "Once"
        local = schedule.run_at.astimezone(tz)
        return f"Once at {local:%Y-%m-%d %H:%M} {local.tzname()}"
    expression = cron_expression(schedule)
    try:
        words = CronSim(expression, datetime.now(tz)).explain()
    except Exception:  # explain() is best effort; the expression itself is shown then
        words = expression
    return f"{words} ({schedule.time_zone})"


# --------------------------------------------------------------------------- life cycle


def _clean(
    project: Project, data: Mapping[str, Any], instance: Schedule | None
) -> tuple[dict[str, Any], list[Server] | None]:
    fields = dict(data)
    servers: list[Server] | None = None
    if "servers" in fields:
        servers = list(fields.pop("servers") or [])
        for server in servers:
            if server.project_id != project.pk:
                raise InvalidInput("servers", f"server {server.pk} is not part of {project.slug}.")
        if len({server.pk for server in servers}) != len(servers):
            raise InvalidInput("servers", "lists a server twice.")
    if "name" in fields or instance is None:
        fields["name"] = str(fields.get("name") or "").strip()
        if not fields["name"]:
            raise InvalidInput("name", "is empty.")
    group = fields.get("group", getattr(instance, "group", None))
    if isinstance(group, ServerGroup) and group.project_id != project.pk:
        raise InvalidInput("group", f"group {group.pk} is not part of {project.slug}.")
    chosen = (
        servers
        if servers is not None
        else (list(instance.servers.all()) if instance is not None else [])
    )
    if group is None and not chosen:
        raise InvalidInput("servers", "choose a group or at least one server to deploy to.")
    if group is not None and chosen:
        raise InvalidInput("group", "give a group or servers, not both.")
    if fields.get("revision"):
        fields["revision"] = validate_ref(str(fields["revision"]).strip(), field="revision")

    def value(name: str) -> Any:
        return fields.get(name, getattr(instance, name, None))

    tz = zone(str(value("time_zone") or "UTC"))
    fields["time_zone"] = tz.key
    kind = value("kind")
    if kind not in ScheduleKind.values:
        raise InvalidInput("kind", f"must be one of {', '.join(ScheduleKind.values)}.")
    if kind == ScheduleKind.ONCE:
        run_at = value("run_at")
        if not isinstance(run_at, datetime):
            raise InvalidInput("run_at", "give the date and time to deploy at.")
        if run_at.tzinfo is None:
            # A wall-clock time in the schedule's zone (zoneinfo's fold 0 when it is ambiguous).
            run_at = run_at.replace(tzinfo=tz)
        fields["run_at"] = run_at.astimezone(UTC)
        fields.update(time_of_day=None, weekdays=[], cron="")
    elif kind == ScheduleKind.CRON:
        fields["cron"] = cron_clean(str(value("cron") or ""))
        fields.update(run_at=None, time_of_day=None, weekdays=[])
    else:
        if not isinstance(value("time_of_day"), time):
            raise InvalidInput("time_of_day", "give the time of day (HH:MM) to deploy at.")
        fields["weekdays"] = (
            weekdays_clean(value("weekdays")) if kind == ScheduleKind.WEEKLY else []
        )
        fields.update(run_at=None, cron="")
    return fields, servers


def _plan_next(schedule: Schedule, now: datetime) -> None:
    schedule.next_run_at = next_slot(schedule, now) if schedule.enabled else None
    if schedule.enabled and schedule.kind == ScheduleKind.ONCE and schedule.next_run_at is None:
        raise InvalidInput("run_at", "is in the past: choose a date and time to come.")


@retrying
def schedule_create(
    *, project: Project, actor: User | None, now: datetime | None = None, **data: Any
) -> Schedule:
    """Record a schedule and its first slot. ``data``: name, kind, run_at (aware, or naive
    for a wall-clock time in time_zone), time_of_day, weekdays (0 = Monday), cron, time_zone,
    group or servers, revision, skip_unchanged, enabled. Raises InvalidInput naming the
    field."""
    fields, servers = _clean(project, data, None)
    schedule = Schedule(project=project, created_by=actor if actor and actor.pk else None)
    for name, field_value in fields.items():
        setattr(schedule, name, field_value)
    _plan_next(schedule, now or timezone.now())
    with transaction.atomic():
        schedule.save()
        if servers is not None:
            schedule.servers.set(servers)
        audit_record(
            project=project,
            actor=actor,
            action="schedule.created",
            target=f"schedule {schedule.name}",
            rule=describe_rule(schedule),
        )
    return schedule


@retrying
def schedule_update(
    *, schedule: Schedule, actor: User | None, now: datetime | None = None, **data: Any
) -> Schedule:
    """Change a schedule; a changed rule, or pausing and resuming, plans its next slot anew
    from ``now`` (a paused schedule catches up nothing when resumed)."""
    project = schedule.project
    fields, servers = _clean(project, data, schedule)
    with transaction.atomic():
        replan = any(
            name in fields and fields[name] != getattr(schedule, name)
            for name in (*RULE_FIELDS, "enabled")
        )
        changed = model_update(instance=schedule, data=fields)
        if replan:
            _plan_next(schedule, now or timezone.now())
            schedule.save(update_fields=["next_run_at"])
            changed.append("next_run_at")
        if servers is not None:
            schedule.servers.set(servers)
            changed.append("servers")
        if changed:
            audit_record(
                project=project,
                actor=actor,
                action="schedule.updated",
                target=f"schedule {schedule.name}",
                fields=sorted(set(changed)),
            )
    return schedule


def schedule_delete(*, schedule: Schedule, actor: User | None) -> None:
    with transaction.atomic():
        audit_record(
            project=schedule.project,
            actor=actor,
            action="schedule.deleted",
            target=f"schedule {schedule.name}",
        )
        schedule.delete()


# --------------------------------------------------------------------------- the tick


def schedules_tick(*, now: datetime | None = None) -> list[ScheduleRun]:
    """Claim every due slot (at most TICK_BATCH) and queue its run; return the runs claimed
    by this call. Safe to call from any number of processes at once."""
    now = now or timezone.now()
    due = list(
        Schedule.objects.due(now)
        .order_by("next_run_at", "pk")
        .values_list("pk", flat=True)[:TICK_BATCH]
    )
    claimed = []
    for schedule_id in due:
        run = schedule_claim(schedule_id, now=now)
        if run is not None:
            claimed.append(run)
    return claimed


@retrying
def schedule_claim(schedule_id: int, *, now: datetime) -> ScheduleRun | None:
    """Claim the due slot of one schedule: None when it is not due (any more), or when
    another process claimed it first."""
    with transaction.atomic():
        schedule = Schedule.objects.due(now).filter(pk=schedule_id).first()
        if schedule is None or schedule.next_run_at is None:
            return None
        slot = schedule.next_run_at
        following = next_slot(schedule, now)
        # Conditional: of two ticks that read the same slot, one changes the row; on
        # PostgreSQL the second waits for the first to commit, then matches nothing.
        if not Schedule.objects.filter(pk=schedule.pk, enabled=True, next_run_at=slot).update(
            next_run_at=following
        ):
            return None
        notes = []
        missed = slots_between(schedule, slot, now)
        if missed:
            notes.append(
                f"{missed}{'+' if missed >= MISSED_COUNT_LIMIT else ''} later slot(s) passed "
                "while Slipway was not running: only this one was run."
            )
        if now - slot >= LATE_NOTICE:
            notes.append(f"Started {_duration(now - slot)} late.")
        try:
            with transaction.atomic():
                run = ScheduleRun.objects.create(
                    schedule=schedule, slot=slot, reason=" ".join(notes)
                )
        except IntegrityError:
            # The slot ran already (the rule was changed back to it): never twice.
            return None
        outbox.enqueue(RUN_SCHEDULE_TASK, run.pk)
    return run


def _duration(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} days"


# --------------------------------------------------------------------------- the run


def schedule_targets(schedule: Schedule) -> tuple[ServerGroup | None, list[Server]]:
    """The group, or the servers in order, a schedule deploys to."""
    if schedule.group_id is not None and schedule.group is not None:
        return schedule.group, schedule.group.ordered_servers()
    return None, list(schedule.servers.order_by("position", "name"))


def schedule_revision(
    schedule: Schedule, group: ServerGroup | None, servers: Sequence[Server]
) -> str:
    """What the deployment asks for: the schedule's revision, else the group's branch, else
    the servers' branch (builds.runner deploys one revision to all of them: the first by
    name, as for any deployment without a revision)."""
    if schedule.revision:
        return schedule.revision
    if group is not None and group.branch:
        return group.branch
    return sorted({server.effective_branch for server in servers})[0] if servers else ""


def _unchanged(servers: Sequence[Server], commit: str) -> Release | None:
    """A live release of ``commit`` when every server runs it; None otherwise."""
    live = {
        release.server_id: release
        for release in Release.objects.filter(server__in=list(servers), live=True)
    }
    if len(live) != len(servers) or any(r.revision != commit for r in live.values()):
        return None
    return next(iter(live.values()), None)


def _finish(run: ScheduleRun, outcome: str, code: str, reason: str) -> bool:
    text = " ".join(part for part in (reason, run.reason) if part)
    return bool(
        ScheduleRun.objects.filter(pk=run.pk, outcome=ScheduleOutcome.PENDING).update(
            outcome=outcome, reason_code=code, reason=text, finished_at=timezone.now()
        )
    )


def schedule_run(run_id: int, *, now: datetime | None = None) -> ScheduleRun | None:
    """Deploy one claimed slot, or record why not; None when the run is unknown or was
    decided already (a second message for it). ``now`` decides freeze windows."""
    run = (
        ScheduleRun.objects.select_related("schedule__project", "schedule__group")
        .filter(pk=run_id, outcome=ScheduleOutcome.PENDING)
        .first()
    )
    if run is None:
        return None
    now = now or timezone.now()
    schedule = run.schedule
    project = schedule.project
    group, servers = schedule_targets(schedule)
    if not servers:
        _finish(run, ScheduleOutcome.SKIPPED, "no_servers", "Not deployed: no server to deploy to.")
        return _fresh(run)
    # The cheap refusals first, so that a locked or frozen project costs no ls-remote.
    refusal: DeploymentRefused | None = lock_refusal(project=project, servers=servers)
    if refusal is None:
        freeze = freeze_in_force(project=project, servers=servers, group=group, now=now)
        if freeze is not None:
            refusal = DeploymentFrozen("freeze", f"Project {project.slug} is {freeze.describe()}.")
    if refusal is not None:
        _finish(run, ScheduleOutcome.SKIPPED, _code(refusal), f"Not deployed: {refusal}")
        return _fresh(run)
    revision = schedule_revision(schedule, group, servers)
    note = ""
    if schedule.skip_unchanged:
        commit = gates.commit_of(project, revision)
        if commit is None:
            note = f"Could not read what {revision} is now, so it was deployed anyway."
        else:
            live = _unchanged(servers, commit)
            if live is not None:
                _finish(
                    run,
                    ScheduleOutcome.SKIPPED,
                    "unchanged",
                    f"Nothing new: every server already runs {revision} at {commit[:7]}"
                    + (f" (deployment #{live.deployment_id})." if live.deployment_id else "."),
                )
                return _fresh(run)
    _deploy(
        run, project=project, group=group, servers=servers, revision=revision, note=note, now=now
    )
    return _fresh(run)


@retrying
def _deploy(
    run: ScheduleRun,
    *,
    project: Project,
    group: ServerGroup | None,
    servers: list[Server],
    revision: str,
    note: str,
    now: datetime,
) -> None:
    with transaction.atomic():
        # One decision per run: a second worker holding its message waits here, then finds
        # it decided.
        if (
            not ScheduleRun.objects.select_for_update()
            .filter(pk=run.pk, outcome=ScheduleOutcome.PENDING)
            .exists()
        ):
            return
        try:
            with transaction.atomic():
                deployment: Deployment = deployment_create(
                    project=project,
                    group=group,
                    servers=[] if group is not None else servers,
                    revision=revision,
                    trigger=Trigger.SCHEDULE,
                    now=now,
                )
        except DeploymentRefused as refused:
            outcome = (
                ScheduleOutcome.SKIPPED
                if isinstance(refused, DeploymentLocked | DeploymentFrozen | DeploymentGated)
                else ScheduleOutcome.FAILED
            )
            _finish(run, outcome, _code(refused), f"Not deployed: {refused}")
            return
        ScheduleRun.objects.filter(pk=run.pk).update(
            outcome=ScheduleOutcome.DEPLOYED,
            deployment=deployment,
            reason=" ".join(part for part in (note, run.reason) if part),
            finished_at=timezone.now(),
        )


def _code(refused: DeploymentRefused) -> str:
    if isinstance(refused, DeploymentLocked):
        return "locked"
    if isinstance(refused, DeploymentFrozen | FreezeOverrideForbidden):
        return "frozen"
    if isinstance(refused, DeploymentGated):
        return "gates"
    return "refused"


def _fresh(run: ScheduleRun) -> ScheduleRun:
    run.refresh_from_db()
    return run
