"""Scaled out: a job queued by the web process runs in a separate `celery -A deployer worker`."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from django.conf import settings
from django.db import connection

from builds import services
from builds.models import Deployment, Status
from tests.support.processes import ROOT, stop

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def celery_worker_process(tmp_path):
    if not (settings.REDIS_URL and settings.DATABASE_URL):
        if os.environ.get("CI"):
            pytest.fail("CI must run with DATABASE_URL and REDIS_URL set (see .ci/run)")
        pytest.skip("scaled-out mode only: set DATABASE_URL and REDIS_URL (as .ci/run does)")
    database = connection.settings_dict
    # The worker must use the test database that pytest-django created.
    url = f"postgres://{database['USER']}@{database['HOST']}:{database['PORT']}/{database['NAME']}"
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "SLIPWAY_DATA_DIR": str(tmp_path / "worker-data"),
        "SLIPWAY_ENCRYPTION_KEYS": ",".join(settings.ENCRYPTION_KEYS),
        "SLIPWAY_SECRET_KEY": settings.SECRET_KEY,
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "deployer",
            "worker",
            "--loglevel=INFO",
            "--concurrency=1",
            "--pool=solo",
            "-n",
            "separate@%h",
        ],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    yield process
    output = stop(process)
    print(output)


def test_it_runs_a_deployment_queued_by_the_web_process_in_a_separate_worker(
    celery_worker_process, git_repo_factory, sshd_target, project_factory, server_factory
):
    repo = git_repo_factory()
    sha = repo.commit({"index.html": "served by a separate worker\n"})
    project = project_factory(repo)
    server = server_factory(project, sshd_target)
    # The service queues the job on commit, as a web request does; nothing here runs it.
    deployment = services.deployment_create(project=project, servers=[server])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        deployment.refresh_from_db()
        if deployment.status in (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED):
            break
        assert celery_worker_process.poll() is None, "the worker exited"
        time.sleep(0.3)
    assert deployment.status == Status.SUCCEEDED, deployment.error
    assert deployment.worker.startswith("separate@")
    assert deployment.end_revision == sha
    assert (
        sshd_target.deploy_path / "current" / "index.html"
    ).read_text() == "served by a separate worker\n"
    assert Deployment.objects.filter(worker__startswith="embedded").count() == 0
