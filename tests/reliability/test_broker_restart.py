"""Scaled out: a busy prefork worker lives through a Redis restart and goes on working."""

from __future__ import annotations

import time

import pytest

from builds import services
from builds.models import Status
from projects.models import Command, CommandStage
from tests.reliability.conftest import wait_until_final
from tests.support.processes import start_celery_worker, stop

pytestmark = pytest.mark.django_db(transaction=True)


def test_it_keeps_a_busy_worker_alive_across_a_redis_restart(
    own_broker, tmp_path, git_repo_factory, sshd_target, project_factory, server_factory
):
    repo = git_repo_factory()
    repo.commit({"index.html": "first\n"})
    project = project_factory(repo)
    server = server_factory(project, sshd_target)
    started = sshd_target.deploy_path / "started"
    Command.objects.create(
        project=project,
        command=f"touch {started}; sleep 4",
        stage=CommandStage.BEFORE_SWITCH,
    )
    log = tmp_path / "worker.log"
    worker = start_celery_worker(
        tmp_path / "worker-data",
        name="restart",
        pool="prefork",
        concurrency=2,
        redis_url=own_broker.url,
        log_path=log,
    )
    try:
        first = services.deployment_create(project=project, servers=[server])
        deadline = time.monotonic() + 90
        while not started.exists():
            assert time.monotonic() < deadline, log.read_text()
            assert worker.poll() is None, log.read_text()
            time.sleep(0.1)
        own_broker.restart()  # while the command sleeps on the server

        first = wait_until_final(first, worker)
        assert first.status == Status.SUCCEEDED, first.error
        assert worker.poll() is None, log.read_text()

        sha = repo.commit({"index.html": "after the restart\n"})
        second = services.deployment_create(project=project, servers=[server])
        second = wait_until_final(second, worker)
        assert second.status == Status.SUCCEEDED, second.error + log.read_text()
        assert second.end_revision == sha
        assert (sshd_target.deploy_path / "current" / "index.html").read_text() == (
            "after the restart\n"
        )
        assert worker.poll() is None, log.read_text()
    finally:
        stop(worker)
        print(log.read_text())
