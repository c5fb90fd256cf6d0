"""A fixture history with known DORA answers (docs/metrics.md works through it).

Shop has web1 and web2 in production and stage1 in staging. Over five days (2-6 November
2026, UTC) production gets ten deployments and one rollback:

| day    | deployment                         | first commit | outcome                          |
| ------ | ---------------------------------- | ------------ | -------------------------------- |
| 2 Nov  | d1 09:00-09:10                     | 08:00        | live (lead 70 min)               |
| 2 Nov  | d2 15:00-15:10                     | 13:10        | live (lead 2 h)                  |
| 3 Nov  | d3 10:00-10:05                     | 09:00        | failed (restored by d4: 65 min)  |
| 3 Nov  | d4 11:00-11:10                     | 09:10        | live (lead 2 h)                  |
| 4 Nov  | d5 09:00-09:10                     | 06:10        | live (lead 3 h), rolled back     |
| 4 Nov  | r6 rollback 09:40-09:42            |              | restores d5 after 32 min         |
| 4 Nov  | d7 14:00-14:10                     | 12:10        | live (lead 2 h)                  |
| 5 Nov  | d8 10:00-10:10 "Add the basket"    | 09:10        | live (lead 1 h), fixed by d9     |
| 5 Nov  | d9 12:00-12:10 "fix: basket total" | 11:40        | live (lead 30 min), restores d8 (2 h) |
| 6 Nov  | d10 08:00-08:10                    | 07:00        | web1's health check failed: reverted |
| 6 Nov  | d11 09:00-09:10                    | (not kept)   | live, restores d10 (1 h)         |

Left out of production's figures: a cancelled deployment (d12), a staging deployment (s1,
which "all environments" counts), a deployment before the window (old) and a preview.
With now = 6 November 12:00 UTC and a 7-day window (31 October to 6 November):

- deployment frequency: 8 deployments went live, 8/7 a day, 8 a week;
- lead time: median of 70 min, 2 h, 2 h, 3 h, 2 h, 1 h, 30 min = 2 h (d11 unmeasured);
- change failure rate: d3, d5, d8 and d10 failed out of 10 = 40%;
- time to restore: median of 65, 32, 120 and 60 minutes = 62.5 minutes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

NOW = datetime(2026, 11, 6, 12, 0, tzinfo=UTC)
SERVERS = {"web1": "production", "web2": "production", "stage1": "staging"}
PRODUCTION = ("web1", "web2")


@dataclass(frozen=True)
class Entry:
    key: str
    kind: str
    started: str  # "MM-DD HH:MM" in November (October for "10-..") 2026, UTC
    finished: str
    targets: dict[str, str]
    first_commit: str | None = None
    subjects: tuple[str, ...] = ()
    rollback_of: str | None = None
    status: str = "succeeded"


def at(text: str) -> datetime:
    month_day, clock = text.split(" ")
    month, day = (int(part) for part in month_day.split("-"))
    hour, minute = (int(part) for part in clock.split(":"))
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


def _both(status: str) -> dict[str, str]:
    return {"web1": status, "web2": status}


HISTORY = (
    Entry("old", "deploy", "10-20 09:00", "10-20 09:10", _both("succeeded"), "10-20 08:00"),
    Entry("d1", "deploy", "11-02 09:00", "11-02 09:10", _both("succeeded"), "11-02 08:00"),
    Entry("d2", "deploy", "11-02 15:00", "11-02 15:10", _both("succeeded"), "11-02 13:10"),
    Entry(
        "d3",
        "deploy",
        "11-03 10:00",
        "11-03 10:05",
        _both("failed"),
        "11-03 09:00",
        status="failed",
    ),
    Entry("d4", "deploy", "11-03 11:00", "11-03 11:10", _both("succeeded"), "11-03 09:10"),
    Entry("d5", "deploy", "11-04 09:00", "11-04 09:10", _both("succeeded"), "11-04 06:10"),
    Entry("r6", "rollback", "11-04 09:40", "11-04 09:42", _both("succeeded")),
    Entry("d7", "deploy", "11-04 14:00", "11-04 14:10", _both("succeeded"), "11-04 12:10"),
    Entry(
        "d8",
        "deploy",
        "11-05 10:00",
        "11-05 10:10",
        _both("succeeded"),
        "11-05 09:10",
        subjects=("Add the basket page",),
    ),
    Entry(
        "d9",
        "deploy",
        "11-05 12:00",
        "11-05 12:10",
        _both("succeeded"),
        "11-05 11:40",
        subjects=("fix: basket total rounding", "Tidy the basket styles"),
    ),
    Entry("s1", "deploy", "11-05 13:00", "11-05 13:05", {"stage1": "succeeded"}, "11-05 12:00"),
    Entry(
        "d10",
        "deploy",
        "11-06 08:00",
        "11-06 08:10",
        {"web1": "rolled_back", "web2": "succeeded"},
        "11-06 07:00",
        status="failed",
    ),
    Entry("d11", "deploy", "11-06 09:00", "11-06 09:10", _both("succeeded")),
    Entry("d12", "deploy", "11-06 10:00", "11-06 10:01", _both("cancelled"), status="cancelled"),
    Entry("preview", "preview", "11-06 10:30", "11-06 10:31", _both("skipped")),
)


def create_history(project, *, ending: date | None = None) -> dict[str, int]:
    """Make the servers and the deployments of HISTORY in ``project``; returns key -> id.
    ``ending``: the day 6 November moves to, every time moved by as many days (a browser
    test's app reads the real clock)."""
    from builds.models import Deployment, DeploymentTarget
    from servers.models import Server

    shift = timedelta(days=(ending - NOW.date()).days) if ending else timedelta(0)

    def moved(text: str) -> datetime:
        return at(text) + shift

    servers = {
        name: Server.objects.create(
            project=project,
            name=name,
            hostname=f"{name}.internal",
            username="deploy",
            deploy_path="/srv/shop",
            environment=environment,
        )
        for name, environment in SERVERS.items()
    }
    ids: dict[str, int] = {}
    for entry in HISTORY:
        deployment = Deployment.objects.create(
            project=project,
            kind=entry.kind,
            status=entry.status,
            branch="main",
            end_revision=f"{len(ids):040x}",
            created_at=moved(entry.started),
            started_at=moved(entry.started),
            finished_at=moved(entry.finished),
            first_commit_at=moved(entry.first_commit) if entry.first_commit else None,
            commits=[
                {
                    "sha": "0" * 40,
                    "author": "Alice",
                    "date": moved(entry.started).isoformat(),
                    "subject": subject,
                }
                for subject in entry.subjects
            ],
            rollback_of_id=ids[entry.rollback_of] if entry.rollback_of else None,
        )
        for position, (name, status) in enumerate(entry.targets.items()):
            DeploymentTarget.objects.create(
                deployment=deployment, server=servers[name], status=status, position=position
            )
        ids[entry.key] = deployment.pk
    return ids


def records(environment: str = ""):
    """HISTORY as builds.dora sees it in ``environment`` ("" = every server), no database."""
    from builds.dora import DeploymentRecord, is_fix, outcome_of

    ids = {entry.key: number for number, entry in enumerate(HISTORY, start=1)}
    made = []
    for entry in HISTORY:
        statuses = [
            status
            for name, status in entry.targets.items()
            if not environment or SERVERS[name] == environment
        ]
        if not statuses or entry.kind == "preview":
            continue
        made.append(
            DeploymentRecord(
                id=ids[entry.key],
                kind=entry.kind,
                outcome=outcome_of(statuses),
                created_at=at(entry.started),
                started_at=at(entry.started),
                finished_at=at(entry.finished),
                first_commit_at=at(entry.first_commit) if entry.first_commit else None,
                rollback_of=ids[entry.rollback_of] if entry.rollback_of else None,
                fix=entry.kind == "deploy" and is_fix(entry.subjects, "main"),
            )
        )
    return made


def key_of(deployment_id: int) -> str:
    """The HISTORY key of a record made by ``records``."""
    return HISTORY[deployment_id - 1].key
