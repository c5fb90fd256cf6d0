"""Abort and roll back a rolling deployment while it pauses between batches, against real
sshd targets: the servers it had switched go back by a rollback of their own, recorded like
any rollback; the servers it had not reached were never touched."""

from __future__ import annotations

import threading
import time

import pytest
from django.db import connection

from builds import services
from builds.models import Deployment, Kind, LogLine, Status, TargetStatus
from builds.tasks import run_deployment
from projects.models import AuditEvent, BuildCommand
from servers.models import GroupMember, Release, ServerGroup

pytestmark = pytest.mark.django_db(transaction=True)
WAIT_SECONDS = 60


def _run(deployment: Deployment) -> Deployment:
    run_deployment.apply(args=(deployment.pk,))
    deployment.refresh_from_db()
    return deployment


def _run_in_thread(deployment_id: int) -> None:
    try:
        run_deployment.apply(args=(deployment_id,))
    finally:
        connection.close()


def _wait_for_line(deployment: Deployment, start: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not LogLine.objects.filter(deployment=deployment, text__startswith=start).exists():
        assert time.monotonic() < deadline, f"no line starting {start!r}"
        time.sleep(0.1)


@pytest.fixture
def rolling(git_repo_factory, sshd_factory, project_factory, server_factory):
    """Three servers on release A, in a rolling group: batches of 2, a minute apart."""
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    targets = [sshd_factory() for _ in range(3)]
    servers = [server_factory(project, target) for target in targets]
    group = ServerGroup.objects.create(
        project=project, name="production", strategy="rolling", batch_size="2", pause_seconds=60
    )
    for position, server in enumerate(servers):
        GroupMember.objects.create(group=group, server=server, position=position)
    first = _run(services.deployment_create(project=project, servers=servers))
    assert first.status == Status.SUCCEEDED, first.error
    return repo, project, group, servers, targets


def test_abort_in_the_pause_rolls_back_the_first_batch_and_leaves_the_rest(rolling, alice):
    repo, project, group, servers, targets = rolling
    a_names = [(t.deploy_path / "current").resolve().name for t in targets]
    repo.commit({"index.html": "B\n"}, "B")
    deployment = services.deployment_start(project=project, user=alice, group=group)
    worker = threading.Thread(target=_run_in_thread, args=(deployment.pk,), daemon=True)
    worker.start()
    try:
        _wait_for_line(deployment, "Pausing 60 s before the next batch")
        assert [(t.deploy_path / "current" / "index.html").read_text() for t in targets] == [
            "B\n",
            "B\n",
            "A\n",
        ]
        services.deployment_request_abort(deployment=deployment, user=alice)
        worker.join(timeout=WAIT_SECONDS)
        assert not worker.is_alive(), "the abort did not stop the pause"
    finally:
        if worker.is_alive():
            services.deployment_request_cancel(deployment)
            worker.join(timeout=WAIT_SECONDS)

    deployment.refresh_from_db()
    assert (deployment.status, deployment.error_code) == (Status.CANCELLED, "aborted")
    statuses = [deployment.targets.get(server=s).status for s in servers]
    assert statuses == [TargetStatus.SUCCEEDED, TargetStatus.SUCCEEDED, TargetStatus.CANCELLED]
    # The first batch was live on B when it stopped, and is recorded so.
    b_names = [Release.objects.get(server=s, live=True).name for s in servers[:2]]
    assert [(t.deploy_path / "current").resolve().name for t in targets[:2]] == b_names

    rollback = Deployment.objects.get(rollback_of=deployment)
    assert (rollback.kind, rollback.status, rollback.triggered_by) == (
        Kind.ROLLBACK,
        Status.QUEUED,
        alice,
    )
    assert [t.server for t in rollback.targets.order_by("position")] == servers[:2]
    assert LogLine.objects.filter(
        deployment=deployment,
        text=f"Aborted: rolling back web1, web2 to the release each had before, in deployment "
        f"#{rollback.pk}",
    ).exists()
    assert AuditEvent.objects.filter(action="deployment.aborted", actor=alice).exists()
    assert AuditEvent.objects.filter(
        action="rollback.created", actor=alice, target=f"deployment #{rollback.pk}"
    ).exists()

    rollback = _run(rollback)
    assert rollback.status == Status.SUCCEEDED, rollback.error
    assert [(t.deploy_path / "current").resolve().name for t in targets] == a_names
    assert [(t.deploy_path / "current" / "index.html").read_text() for t in targets] == ["A\n"] * 3
    assert [Release.objects.get(server=s, live=True).name for s in servers] == a_names
    # web3's batch never started: no release of B was made there.
    assert sorted(p.name for p in (targets[2].deploy_path / "releases").iterdir()) == [a_names[2]]
    lines = list(LogLine.objects.filter(deployment=rollback).values_list("text", flat=True))
    assert (
        f"Rolling back web1, web2: switched by deployment #{deployment.pk} before it was aborted"
        in lines
    )
    assert any(f"current → releases/{a_names[0]}" in line for line in lines)
    # The deployments list shows the rollback, newest first.
    assert list(project.deployments.values_list("pk", "kind")[:2]) == [
        (rollback.pk, Kind.ROLLBACK),
        (deployment.pk, Kind.DEPLOY),
    ]
    # web3 never got B, but retrying the aborted deployment would leave A, A, B: refused.
    with pytest.raises(services.DeploymentWrongState, match="it was aborted"):
        services.deployment_retry(deployment=deployment, user=alice)


def test_a_cancel_in_the_pause_keeps_the_first_batch_live_and_recorded_so(rolling, alice):
    repo, project, group, servers, targets = rolling
    repo.commit({"index.html": "B\n"}, "B")
    deployment = services.deployment_start(project=project, user=alice, group=group)
    worker = threading.Thread(target=_run_in_thread, args=(deployment.pk,), daemon=True)
    worker.start()
    _wait_for_line(deployment, "Pausing 60 s before the next batch")
    services.deployment_cancel(deployment=deployment, user=alice)
    worker.join(timeout=WAIT_SECONDS)
    assert not worker.is_alive(), "the cancel did not stop the pause"
    deployment.refresh_from_db()
    assert (deployment.status, deployment.error_code) == (Status.CANCELLED, "cancelled")
    statuses = [deployment.targets.get(server=s).status for s in servers]
    assert statuses == [TargetStatus.SUCCEEDED, TargetStatus.SUCCEEDED, TargetStatus.CANCELLED]
    # What `current` says on each server is what the database says is live.
    for server, target in zip(servers, targets, strict=True):
        live = Release.objects.get(server=server, live=True)
        assert (target.deploy_path / "current").resolve().name == live.name
    assert not Deployment.objects.filter(rollback_of=deployment).exists()


def test_abort_before_any_switch_records_no_rollback(rolling, alice):
    repo, project, group, _servers, targets = rolling
    repo.commit({"index.html": "B\n"}, "B")
    BuildCommand.objects.create(project=project, command="echo building; sleep 30")
    deployment = services.deployment_start(project=project, user=alice, group=group)
    worker = threading.Thread(target=_run_in_thread, args=(deployment.pk,), daemon=True)
    worker.start()
    _wait_for_line(deployment, "building")
    services.deployment_request_abort(deployment=deployment, user=alice)
    worker.join(timeout=WAIT_SECONDS)
    assert not worker.is_alive()
    deployment.refresh_from_db()
    assert (deployment.status, deployment.error_code) == (Status.CANCELLED, "aborted")
    assert not Deployment.objects.filter(rollback_of=deployment).exists()
    assert LogLine.objects.filter(
        deployment=deployment, text="Aborted before any server switched: nothing to roll back"
    ).exists()
    assert [(t.deploy_path / "current" / "index.html").read_text() for t in targets] == ["A\n"] * 3


def test_abort_of_a_waiting_canary_rolls_the_canary_back_by_a_rollback(rolling, alice):
    repo, project, group, servers, targets = rolling
    a_names = [(t.deploy_path / "current").resolve().name for t in targets]
    ServerGroup.objects.filter(pk=group.pk).update(
        strategy="canary", canary_count=1, promotion="manual", pause_seconds=0
    )
    group.refresh_from_db()
    repo.commit({"index.html": "B\n"}, "B")
    deployment = services.deployment_start(project=project, user=alice, group=group)
    worker = threading.Thread(target=_run_in_thread, args=(deployment.pk,), daemon=True)
    worker.start()
    _wait_for_line(deployment, "Waiting for someone to promote")
    services.deployment_request_abort(deployment=deployment, user=alice)
    worker.join(timeout=WAIT_SECONDS)
    assert not worker.is_alive(), "the abort did not end the wait for promotion"

    deployment.refresh_from_db()
    assert (deployment.status, deployment.error_code) == (Status.CANCELLED, "aborted")
    statuses = [deployment.targets.get(server=s).status for s in servers]
    assert statuses == [TargetStatus.SUCCEEDED, TargetStatus.CANCELLED, TargetStatus.CANCELLED]
    rollback = Deployment.objects.get(rollback_of=deployment)
    # A canary group's rollback does not wait for a second Promote.
    assert rollback.strategy == "parallel"
    assert [t.server for t in rollback.targets.all()] == servers[:1]
    rollback = _run(rollback)
    assert rollback.status == Status.SUCCEEDED, rollback.error
    assert [(t.deploy_path / "current").resolve().name for t in targets] == a_names
