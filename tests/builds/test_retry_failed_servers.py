"""Retry failed servers: a finished deployment that failed on one server of three is deployed
again to that server only, against real sshd targets; the others keep what they have."""

from __future__ import annotations

import pytest

from builds import services
from builds.models import Deployment, LogLine, Status, TargetStatus
from builds.tasks import run_deployment
from projects.models import AuditEvent
from servers.models import Release

pytestmark = pytest.mark.django_db(transaction=True)


def _run(deployment: Deployment) -> Deployment:
    run_deployment.apply(args=(deployment.pk,))
    deployment.refresh_from_db()
    return deployment


def _releases(target) -> list[str]:
    return sorted(path.name for path in (target.deploy_path / "releases").iterdir())


def test_a_retry_deploys_the_same_revision_to_the_failed_server_only(
    git_repo_factory, sshd_factory, project_factory, server_factory, alice
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    targets = [sshd_factory() for _ in range(3)]
    servers = [server_factory(project, target) for target in targets]
    first = _run(services.deployment_create(project=project, servers=servers))
    assert first.status == Status.SUCCEEDED, first.error

    b = repo.commit({"index.html": "B\n"}, "B")
    # web2's deploy path no longer takes a new release: its login user cannot write there.
    (targets[1].deploy_path / "releases").chmod(0o555)
    try:
        failed = _run(
            services.deployment_start(project=project, user=alice, servers=servers, full=True)
        )
    finally:
        (targets[1].deploy_path / "releases").chmod(0o755)
    assert failed.status == Status.FAILED
    statuses = [failed.targets.get(server=server).status for server in servers]
    assert statuses == [TargetStatus.SUCCEEDED, TargetStatus.FAILED, TargetStatus.SUCCEEDED]
    assert (targets[1].deploy_path / "current" / "index.html").read_text() == "A\n"
    others = {
        n: ((targets[n].deploy_path / "current").resolve(), _releases(targets[n])) for n in (0, 2)
    }

    b_on_main = repo.commit({"index.html": "C\n"}, "C: main moved on; the retry stays on B")
    retry = services.deployment_retry(deployment=failed, user=alice)
    assert retry.retry_of == failed and retry.revision == b
    assert [target.server for target in retry.targets.order_by("position")] == [servers[1]]
    assert retry.full and retry.branch == failed.branch
    assert AuditEvent.objects.filter(
        project=project, actor=alice, action="deployment.retried", target=f"deployment #{retry.pk}"
    ).exists()

    retry = _run(retry)
    assert retry.status == Status.SUCCEEDED, retry.error
    assert retry.end_revision == b != b_on_main
    assert (targets[1].deploy_path / "current" / "index.html").read_text() == "B\n"
    live = Release.objects.get(server=servers[1], live=True)
    assert (live.revision, live.deployment_id) == (b, retry.pk)
    # The servers that had succeeded were not touched: same live release, no new one.
    for n, (current, releases) in others.items():
        assert (targets[n].deploy_path / "current").resolve() == current
        assert _releases(targets[n]) == releases
        assert Release.objects.get(server=servers[n], live=True).deployment_id == failed.pk
    assert LogLine.objects.filter(
        deployment=retry, text=f"Retrying deployment #{failed.pk} on web2; left alone: web1, web3"
    ).exists()

    with pytest.raises(services.DeploymentWrongState, match="succeeded on every server"):
        services.deployment_retry(deployment=retry, user=alice)
