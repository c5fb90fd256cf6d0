"""Scaled out: a pool process killed in the middle of a deployment (SIGKILL, as the kernel's
OOM killer does) is noticed at once from Celery's own signal, and each server is recorded as it
really is: switched or not."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from builds import reconcile, services
from builds.models import Deployment, Status, TargetStatus
from projects.models import Command, CommandStage
from servers.models import Release
from tests.reliability.conftest import wait_until_final
from tests.support.processes import child_pids, start_celery_worker, stop_all

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def _module_worker(django_db_setup, tmp_path_factory):
    """Starts the prefork worker on first use and again once a test killed it whole; one
    worker serves the module's tests (each start and stop takes seconds), since losing a
    pool process is what Celery recovers from on its own."""
    directory = tmp_path_factory.mktemp("worker-lost")
    log = directory / "worker.log"
    started: list[subprocess.Popen[str]] = []

    def running() -> subprocess.Popen[str]:
        if not started or started[-1].poll() is not None:
            started.append(
                start_celery_worker(
                    directory / f"worker-data-{len(started)}",
                    name=f"lost{len(started)}",
                    pool="prefork",
                    concurrency=1,
                    log_path=log,
                    SLIPWAY_HEARTBEAT_TIMEOUT="3600",
                )
            )
        return started[-1]

    yield running
    stop_all(process for process in started if process.poll() is None)
    if log.exists():  # not when every test of the module was skipped (embedded mode)
        print(log.read_text())


@pytest.fixture
def prefork_worker(_module_worker):
    """One prefork worker with one pool process, on every queue; a heartbeat timeout far
    beyond the test, so that only the worker-lost signal can end the deployment."""
    return _module_worker()


def _wait_for(marker, worker) -> None:
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert time.monotonic() < deadline, f"{marker} never appeared"
        assert worker.poll() is None, "the worker exited"
        time.sleep(0.1)


def _kill_the_pool_process_once(marker, worker) -> None:
    _wait_for(marker, worker)
    (child,) = child_pids(worker.pid)
    os.kill(child, signal.SIGKILL)


def _deploy_and_lose_the_worker(project, server, stage, marker, worker):
    Command.objects.create(project=project, command=f"touch {marker}; sleep 60", stage=stage)
    deployment = services.deployment_create(project=project, servers=[server])
    _kill_the_pool_process_once(marker, worker)
    return wait_until_final(deployment, worker)


def test_it_records_a_server_that_switched_before_the_worker_died_as_switched(
    prefork_worker, git_repo_factory, sshd_target, project_factory, server_factory
):
    repo = git_repo_factory()
    sha = repo.commit({"index.html": "new\n"})
    project = project_factory(repo)
    server = server_factory(project, sshd_target)
    marker = sshd_target.deploy_path / "after-switch-started"

    deployment = _deploy_and_lose_the_worker(
        project, server, CommandStage.AFTER_SWITCH, marker, prefork_worker
    )

    assert deployment.status == Status.FAILED
    assert deployment.error_code == "worker_lost"
    assert "WorkerLostError" in deployment.error
    target = deployment.targets.get()
    assert target.status == TargetStatus.SUCCEEDED, target.reason
    current = os.readlink(sshd_target.deploy_path / "current")
    assert current == f"releases/{target.release}"
    live = Release.objects.get(server=server, live=True)
    assert live.name == target.release
    assert live.deployment_id == deployment.pk
    assert sha.startswith(live.revision)
    assert prefork_worker.poll() is None, "the worker itself lives on"

    # The next deployment takes over the dead one's lock and runs.
    Command.objects.all().delete()
    repo.commit({"index.html": "next\n"})
    following = wait_until_final(
        services.deployment_create(project=project, servers=[server]), prefork_worker
    )
    assert following.status == Status.SUCCEEDED, following.error
    assert (sshd_target.deploy_path / "current" / "index.html").read_text() == "next\n"


def test_it_fails_a_server_that_had_not_switched_when_the_worker_died(
    prefork_worker, git_repo_factory, sshd_target, project_factory, server_factory
):
    repo = git_repo_factory()
    repo.commit({"index.html": "first\n"})
    project = project_factory(repo)
    server = server_factory(project, sshd_target)
    first = wait_until_final(
        services.deployment_create(project=project, servers=[server]), prefork_worker
    )
    assert first.status == Status.SUCCEEDED, first.error
    live_before = Release.objects.get(server=server, live=True)
    repo.commit({"index.html": "second\n"})
    marker = sshd_target.deploy_path / "before-switch-started"

    deployment = _deploy_and_lose_the_worker(
        project, server, CommandStage.BEFORE_SWITCH, marker, prefork_worker
    )

    assert deployment.status == Status.FAILED
    assert deployment.error_code == "worker_lost"
    target = deployment.targets.get()
    assert target.status == TargetStatus.FAILED
    assert target.reason.startswith("The worker was lost before the switch")
    assert f"releases/{live_before.name}" in target.reason
    assert os.readlink(sshd_target.deploy_path / "current") == f"releases/{live_before.name}"
    assert Release.objects.get(server=server, live=True) == live_before
    assert (sshd_target.deploy_path / "current" / "index.html").read_text() == "first\n"


def test_it_reads_an_unreachable_server_again_and_records_it_once_it_answers(
    prefork_worker, git_repo_factory, sshd_target, project_factory, server_factory
):
    repo = git_repo_factory()
    repo.commit({"index.html": "new\n"})
    project = project_factory(repo)
    server = server_factory(project, sshd_target)
    marker = sshd_target.deploy_path / "after-switch-started"
    Command.objects.create(
        project=project, command=f"touch {marker}; sleep 60", stage=CommandStage.AFTER_SWITCH
    )
    deployment = services.deployment_create(project=project, servers=[server])
    _wait_for(marker, prefork_worker)
    # The server goes away with the worker: frozen first, the pool process cannot notice.
    (child,) = child_pids(prefork_worker.pid)
    os.kill(child, signal.SIGSTOP)
    sshd_target.stop()
    os.kill(child, signal.SIGKILL)

    deployment = wait_until_final(deployment, prefork_worker)
    target = deployment.targets.get()
    assert deployment.error_code == "worker_lost"
    assert target.status == TargetStatus.FAILED
    assert target.state_unknown
    assert target.reason.startswith("Unknown: the worker was lost and the server could not")
    assert not Release.objects.filter(server=server, deployment=deployment).exists()

    assert reconcile.targets_recheck() == 0  # still unreachable: left for the next pass
    sshd_target.start()
    assert reconcile.targets_recheck() == 1

    target.refresh_from_db()
    assert target.status == TargetStatus.SUCCEEDED, target.reason
    assert not target.state_unknown
    assert os.readlink(sshd_target.deploy_path / "current") == f"releases/{target.release}"
    assert Release.objects.get(server=server, live=True).deployment_id == deployment.pk
    assert deployment.log_lines.filter(text__startswith="Checked again: web1: switched").exists()


def test_the_reaper_records_the_switch_of_a_deployment_whose_whole_worker_died(
    prefork_worker, git_repo_factory, sshd_target, project_factory, server_factory, settings
):
    repo = git_repo_factory()
    repo.commit({"index.html": "new\n"})
    project = project_factory(repo)
    server = server_factory(project, sshd_target)
    marker = sshd_target.deploy_path / "after-switch-started"
    Command.objects.create(
        project=project, command=f"touch {marker}; sleep 60", stage=CommandStage.AFTER_SWITCH
    )
    deployment = services.deployment_create(project=project, servers=[server])
    _wait_for(marker, prefork_worker)
    # The host goes: the main process and its pool at once, so no signal is sent.
    for pid in [prefork_worker.pid, *child_pids(prefork_worker.pid)]:
        os.kill(pid, signal.SIGKILL)
    prefork_worker.wait()
    deployment.refresh_from_db()
    assert deployment.status == Status.RUNNING
    assert reconcile.deployments_reap_stale() == 0  # its heartbeat is fresh still

    # As if HEARTBEAT_TIMEOUT had passed without a heartbeat.
    Deployment.objects.filter(pk=deployment.pk).update(
        heartbeat_at=timezone.now() - timedelta(seconds=settings.HEARTBEAT_TIMEOUT + 1)
    )
    assert reconcile.deployments_reap_stale() == 1

    deployment.refresh_from_db()
    assert deployment.status == Status.FAILED
    assert "stopped responding" in deployment.error
    assert "1 of 1 servers had switched" in deployment.error
    target = deployment.targets.get()
    assert target.status == TargetStatus.SUCCEEDED
    assert os.readlink(sshd_target.deploy_path / "current") == f"releases/{target.release}"
    assert Release.objects.get(server=server, live=True).name == target.release
