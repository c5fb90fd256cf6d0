"""Group strategies and health checks, driven from the database against real targets."""

from __future__ import annotations

import threading
import time

import pytest

from builds import services
from builds.models import Deployment, Status, TargetStatus
from builds.tasks import run_deployment
from projects.models import ConfigFile
from servers.models import GroupMember, HealthCheck, Release, ServerGroup

pytestmark = pytest.mark.django_db(transaction=True)


def _run(deployment: Deployment) -> Deployment:
    run_deployment.apply(args=(deployment.pk,))
    deployment.refresh_from_db()
    return deployment


@pytest.fixture
def rolled_out(
    git_repo_factory, sshd_factory, release_server_factory, project_factory, server_factory
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    targets = [sshd_factory() for _ in range(3)]
    servers = [server_factory(project, target) for target in targets]
    group = ServerGroup.objects.create(
        project=project, name="production", strategy="rolling", batch_size="1"
    )
    for position, server in enumerate(servers):
        GroupMember.objects.create(group=group, server=server, position=position)
        web = release_server_factory(targets[position].deploy_path)
        check = HealthCheck.objects.create(
            project=project,
            kind="http",
            url=f"{web.url}/health.txt",
            body_contains="healthy",
            retries=2,
            interval_seconds=0,
        )
        check.servers.set([server])
    healthy = ConfigFile.objects.create(
        project=project, path="health.txt", body="healthy on %server%\n"
    )
    first = _run(services.deployment_create(project=project, group=group))
    assert first.status == Status.SUCCEEDED, first.error
    return repo, project, group, servers, targets, healthy


def test_a_rolling_group_stops_at_the_unhealthy_server_and_rolls_back(rolled_out):
    repo, project, group, servers, targets, _ = rolled_out
    live_before = [Release.objects.get(server=s, live=True).name for s in servers]
    repo.commit({"index.html": "B\n"}, "B")
    # From now on web2 answers without what its check expects: unhealthy on the new release.
    HealthCheck.objects.filter(servers=servers[1]).update(body_contains="a promise web2 breaks")

    deployment = _run(services.deployment_create(project=project, group=group))
    assert deployment.status == Status.FAILED
    assert deployment.error.startswith("web2: Health check")
    statuses = [deployment.targets.get(server=s).status for s in servers]
    assert statuses == [TargetStatus.ROLLED_BACK, TargetStatus.ROLLED_BACK, TargetStatus.SKIPPED]
    assert [Release.objects.get(server=s, live=True).name for s in servers] == live_before
    assert [(t.deploy_path / "current").resolve().name for t in targets] == live_before
    assert deployment.targets.get(server=servers[0]).reason.startswith("web2 failed")
    assert (
        not (targets[2].deploy_path / "releases").exists()
        or len(list((targets[2].deploy_path / "releases").iterdir())) == 1
    )


def test_a_manual_canary_waits_for_promote(rolled_out):
    repo, project, group, _servers, targets, _ = rolled_out
    group.strategy = "canary"
    group.promotion = "manual"
    group.save()
    repo.commit({"index.html": "B\n"}, "B")
    deployment = services.deployment_create(project=project, group=group)
    worker = threading.Thread(target=run_deployment.apply, kwargs={"args": (deployment.pk,)})
    worker.start()
    deadline = time.monotonic() + 60
    while not deployment.targets.filter(status=TargetStatus.WAITING).exists():
        assert time.monotonic() < deadline, "the canary never waited"
        time.sleep(0.1)
    deployment.refresh_from_db()
    assert deployment.status == Status.RUNNING
    assert (targets[0].deploy_path / "current" / "index.html").read_text() == "B\n"
    assert (targets[1].deploy_path / "current" / "index.html").read_text() == "A\n"
    assert services.deployment_promote(deployment)
    worker.join(timeout=120)
    deployment.refresh_from_db()
    assert deployment.status == Status.SUCCEEDED, deployment.error
    assert all((t.deploy_path / "current" / "index.html").read_text() == "B\n" for t in targets)
