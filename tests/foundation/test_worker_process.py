"""Scaled out: a job queued by the web process runs in a separate `celery -A deployer worker`."""

from __future__ import annotations

import time

import pytest

from builds import services
from builds.models import Deployment, Status
from tests.support.processes import start_celery_worker, stop

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def celery_worker_process(tmp_path):
    process = start_celery_worker(tmp_path / "worker-data", name="separate")
    yield process
    print(stop(process))


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
