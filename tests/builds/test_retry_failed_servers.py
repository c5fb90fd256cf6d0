"""Retry failed servers: a finished deployment that failed on one server of three is deployed
again to that server only, against real sshd targets; the others keep what they have."""

from __future__ import annotations

import pytest

from builds import services
from builds.models import (
    TARGET_NOT_DEPLOYED,
    Deployment,
    DeploymentTarget,
    LogLine,
    Status,
    TargetStatus,
)
from builds.tasks import run_deployment
from projects.models import AuditEvent, BuildCommand, Command
from servers.models import GroupMember, Release, Server, ServerGroup, Strategy

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
    # A deployment of the head: the branch its servers follow, as the runner chose it.
    assert retry.full and failed.branch == "" and retry.branch == "main"
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


def _failed_on_web2(repo, project, servers, targets, alice) -> Deployment:
    """B deployed to web1 and web2, failing on web2 (its releases/ is not writable)."""
    repo.commit({"index.html": "B\n"}, "B")
    (targets[1].deploy_path / "releases").chmod(0o555)
    try:
        failed = _run(services.deployment_start(project=project, user=alice, servers=servers))
    finally:
        (targets[1].deploy_path / "releases").chmod(0o755)
    assert failed.status == Status.FAILED
    return failed


@pytest.fixture
def two_servers(git_repo_factory, sshd_factory, project_factory, server_factory):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    targets = [sshd_factory() for _ in range(2)]
    servers = [server_factory(project, target) for target in targets]
    assert _run(services.deployment_create(project=project, servers=servers)).status == (
        Status.SUCCEEDED
    )
    return repo, project, servers, targets


def test_a_retry_after_a_newer_deployment_is_refused(two_servers, alice, alice_client):
    repo, project, servers, targets = two_servers
    failed = _failed_on_web2(repo, project, servers, targets, alice)
    repo.commit({"index.html": "C\n"}, "C")
    newer = _run(services.deployment_start(project=project, user=alice, servers=servers))
    assert newer.status == Status.SUCCEEDED

    with pytest.raises(services.DeploymentWrongState, match=f"deployed since \\(#{newer.pk}"):
        services.deployment_retry(deployment=failed, user=alice)
    assert (targets[1].deploy_path / "current" / "index.html").read_text() == "C\n"
    page = alice_client.get(f"/projects/{project.slug}/deployments/{failed.pk}/")
    assert "Retry failed servers" not in page.content.decode()


def test_a_retry_after_a_rollback_is_refused(two_servers, alice):
    repo, project, servers, targets = two_servers
    failed = _failed_on_web2(repo, project, servers, targets, alice)
    rollback = _run(services.deployment_rollback(deployment=failed, user=alice))
    assert rollback.status == Status.SUCCEEDED, rollback.error
    with pytest.raises(services.DeploymentWrongState, match=f"rolled back by #{rollback.pk}"):
        services.deployment_retry(deployment=failed, user=alice)


def test_a_retry_runs_with_the_branch_the_deployment_had(two_servers, alice):
    repo, project, servers, targets = two_servers
    Command.objects.create(
        project=project, stage="after_switch", command="echo branch=%branch% > branch.txt"
    )
    failed = _failed_on_web2(repo, project, servers, targets, alice)
    assert (targets[0].deploy_path / "current" / "branch.txt").read_text() == "branch=main\n"
    retry = _run(services.deployment_retry(deployment=failed, user=alice))
    assert retry.status == Status.SUCCEEDED, retry.error
    assert (targets[1].deploy_path / "current" / "branch.txt").read_text() == "branch=main\n"
    # A second retry of the same deployment would deploy web2 again over the first: refused.
    with pytest.raises(services.DeploymentWrongState, match=f"#{retry.pk}"):
        services.deployment_retry(deployment=failed, user=alice)


def test_a_later_deployment_that_never_reached_the_server_does_not_block_a_retry(
    two_servers, alice
):
    repo, project, servers, targets = two_servers
    failed = _failed_on_web2(repo, project, servers, targets, alice)
    repo.commit({"index.html": "C\n"}, "C")
    build = BuildCommand.objects.create(project=project, command="exit 3")
    broken = _run(services.deployment_start(project=project, user=alice, servers=servers))
    assert broken.status == Status.FAILED
    build.delete()
    retry = _run(services.deployment_retry(deployment=failed, user=alice))
    assert retry.status == Status.SUCCEEDED, retry.error
    assert (targets[1].deploy_path / "current" / "index.html").read_text() == "B\n"


def test_a_blue_green_deployment_never_retries_the_live_colour(two_servers, alice):
    _repo, project, servers, _targets = two_servers
    blue, green = servers
    router = Server.objects.create(
        project=project, name="lb1", hostname="127.0.0.1", username="u", deploy_path="/srv/lb"
    )
    group = ServerGroup.objects.create(
        project=project, name="web", strategy=Strategy.BLUE_GREEN, router=router
    )
    GroupMember.objects.create(group=group, server=blue, colour="blue", position=0)
    GroupMember.objects.create(group=group, server=green, colour="green", position=1)
    done = Deployment.objects.create(
        project=project, group=group, status=Status.SUCCEEDED, end_revision="a" * 40
    )
    DeploymentTarget.objects.create(deployment=done, server=blue, status=TargetStatus.SKIPPED)
    DeploymentTarget.objects.create(deployment=done, server=green, status=TargetStatus.SUCCEEDED)
    with pytest.raises(services.DeploymentWrongState, match="succeeded on every server"):
        services.deployment_retry(deployment=done, user=alice)
    assert services.retry_statuses(done) == tuple(
        status for status in TARGET_NOT_DEPLOYED if status != TargetStatus.SKIPPED
    )
