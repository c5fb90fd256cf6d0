"""Rolling back a group's deployment goes the group's way, health checks and all, against
real sshd targets that serve their `current` release over HTTP."""

from __future__ import annotations

import pytest

from builds import services
from builds.models import Deployment, LogLine, Status, Step, TargetStatus
from builds.tasks import run_deployment
from projects.models import ConfigFile
from servers.models import GroupMember, HealthCheck, Release, ServerGroup

pytestmark = pytest.mark.django_db(transaction=True)


def _run(deployment: Deployment) -> Deployment:
    run_deployment.apply(args=(deployment.pk,))
    deployment.refresh_from_db()
    return deployment


def _log(deployment: Deployment) -> str:
    return "\n".join(LogLine.objects.filter(deployment=deployment).values_list("text", flat=True))


@pytest.fixture
def two_releases(
    git_repo_factory, sshd_factory, release_server_factory, project_factory, server_factory
):
    """Three servers in a rolling group (one at a time), each checked over HTTP; A then B."""
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
            retries=1,
            interval_seconds=0,
        )
        check.servers.set([server])
    ConfigFile.objects.create(project=project, path="health.txt", body="healthy on %server%\n")
    first = _run(services.deployment_create(project=project, group=group))
    assert first.status == Status.SUCCEEDED, first.error
    a = [Release.objects.get(server=s, live=True).name for s in servers]
    repo.commit({"index.html": "B\n"}, "B")
    second = _run(services.deployment_create(project=project, group=group))
    assert second.status == Status.SUCCEEDED, second.error
    b = [Release.objects.get(server=s, live=True).name for s in servers]
    return project, group, servers, targets, second, a, b


def _current(targets) -> list[str]:
    return [(t.deploy_path / "current").resolve().name for t in targets]


def test_undoing_a_rolling_deployment_goes_batch_by_batch_with_health_checks(two_releases):
    _, group, servers, targets, second, a, _ = two_releases
    rollback = _run(services.deployment_rollback(deployment=second, user=None))

    assert rollback.status == Status.SUCCEEDED, rollback.error
    assert rollback.group == group
    assert _current(targets) == a
    assert [Release.objects.get(server=s, live=True).name for s in servers] == a
    text = _log(rollback)
    order = [text.index(f"Batch {n}/3: web{n}") for n in (1, 2, 3)]
    assert order == sorted(order), text
    checked = Step.objects.filter(deployment=rollback, name="health checks after switch")
    assert sorted(checked.values_list("server__name", flat=True)) == ["web1", "web2", "web3"]


def test_a_server_unhealthy_on_the_old_release_is_switched_back_and_the_rest_untouched(
    two_releases,
):
    _, _, servers, targets, second, a, b = two_releases
    # web2's old release answers without what its check expects.
    (targets[1].deploy_path / "releases" / a[1] / "health.txt").write_text("broken\n")

    rollback = _run(services.deployment_rollback(deployment=second, user=None))

    assert rollback.status == Status.FAILED
    assert rollback.error.startswith("web2: Health check")
    statuses = [rollback.targets.get(server=s).status for s in servers]
    assert statuses == [TargetStatus.ROLLED_BACK, TargetStatus.ROLLED_BACK, TargetStatus.SKIPPED]
    assert _current(targets) == b, "every server is back on the release it had"
    assert [Release.objects.get(server=s, live=True).name for s in servers] == b
    assert "Batch 3/3" not in _log(rollback)


def test_a_single_server_rollback_runs_the_health_checks_and_reverts_on_failure(two_releases):
    _, _, servers, targets, _, a, b = two_releases
    (targets[0].deploy_path / "releases" / a[0] / "health.txt").write_text("broken\n")

    rollback = _run(services.deployment_rollback_server(server=servers[0], user=None))

    assert rollback.status == Status.FAILED
    assert rollback.targets.get().status == TargetStatus.ROLLED_BACK
    assert _current(targets)[0] == b[0]
    assert Release.objects.get(server=servers[0], live=True).name == b[0]
    assert f"Rolled back: current → releases/{b[0]}" in _log(rollback)
