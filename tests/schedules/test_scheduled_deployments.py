"""A scheduled slot deploys through the same service as a push (trigger "schedule") to a real
sshd target; a slot with nothing new since the last deployment is skipped with the reason; a
freeze window skips it too, and the next slot after a new commit deploys."""

from __future__ import annotations

from datetime import UTC, datetime, time

import pytest

from builds import schedules
from builds.models import Deployment, ScheduleKind, ScheduleOutcome, Status, Trigger
from builds.tasks import run_deployment
from projects.models import FreezeWindow

pytestmark = pytest.mark.django_db(transaction=True)


def at(hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 12, 2, hour, minute, tzinfo=UTC)


def slot(now: datetime):
    (run,) = schedules.schedules_tick(now=now)
    decided = schedules.schedule_run(run.pk, now=now)
    assert decided is not None
    return decided


def test_slots_deploy_what_is_new_and_skip_what_is_not(
    git_repo_factory, sshd_target, project_factory, server_factory, alice
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    server = server_factory(project, sshd_target)
    schedules.schedule_create(
        project=project,
        actor=alice,
        now=at(9, 30),
        name="hourly",
        kind=ScheduleKind.CRON,
        cron="0 * * * *",
        servers=[server],
    )

    first = slot(at(10))
    assert first.outcome == ScheduleOutcome.DEPLOYED, first.reason
    deployment = Deployment.objects.get(pk=first.deployment_id)
    assert deployment.trigger == Trigger.SCHEDULE and deployment.triggered_by is None
    run_deployment.apply(args=(deployment.pk,))
    deployment.refresh_from_db()
    assert deployment.status == Status.SUCCEEDED, deployment.error
    assert (sshd_target.deploy_path / "current" / "index.html").read_text() == "A\n"

    unchanged = slot(at(11))
    assert (unchanged.outcome, unchanged.reason_code) == (ScheduleOutcome.SKIPPED, "unchanged")
    assert f"every server already runs main at {repo.head()[:7]}" in unchanged.reason
    assert f"(deployment #{deployment.pk})" in unchanged.reason

    repo.commit({"index.html": "B\n"}, "B")
    FreezeWindow.objects.create(
        project=project,
        name="lunch",
        weekdays=[2],  # Wednesday, 2026-12-02
        start_time=time(11, 30),
        end_time=time(12, 30),
    )
    frozen = slot(at(12))
    assert (frozen.outcome, frozen.reason_code) == (ScheduleOutcome.SKIPPED, "frozen")
    assert "frozen by “lunch” until Wed 2026-12-02 12:30 UTC" in frozen.reason

    second = slot(at(13))
    assert second.outcome == ScheduleOutcome.DEPLOYED, second.reason
    run_deployment.apply(args=(second.deployment_id,))
    assert (sshd_target.deploy_path / "current" / "index.html").read_text() == "B\n"
