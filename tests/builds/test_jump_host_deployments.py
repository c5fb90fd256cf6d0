"""Servers behind a bastion, driven through the database: their rows name a jump host; the
runner tunnels through it, "Test connection" shows both hops' keys, and nothing deploys until
both are trusted. The targets are reachable only through the jump host (tests/support/bastion.py)."""

from __future__ import annotations

import pytest

from builds import services
from builds.models import Deployment, Status
from builds.services import DeploymentRefused
from builds.tasks import run_deployment
from servers.models import JumpAuthMethod, Server
from servers.services import server_check, server_trust_host_key, server_trust_jump_host_key
from tests.support.bastion import reachable_directly

pytestmark = pytest.mark.django_db(transaction=True)


def _run(deployment: Deployment) -> Deployment:
    run_deployment.apply(args=(deployment.pk,))
    deployment.refresh_from_db()
    return deployment


def _behind(bastion, project, target, *, name: str, trust: bool = True, **fields) -> Server:
    target.authorize(project.public_key)
    bastion.jump.authorize(project.public_key)
    return Server.objects.create(
        project=project,
        name=name,
        hostname=target.hostname,
        port=target.port,
        username=target.username,
        deploy_path=str(target.deploy_path),
        host_key_fingerprint=target.host_key_fingerprint if trust else "",
        jump_hostname=bastion.jump.hostname,
        jump_port=bastion.jump.port,
        jump_username=bastion.jump.username,
        jump_host_key_fingerprint=bastion.jump.host_key_fingerprint if trust else "",
        **fields,
    )


def test_it_deploys_two_servers_behind_one_jump_host_live_over_one_jump_connection(
    bastion, git_repo_factory, project_factory, alice
):
    repo = git_repo_factory()
    revision = repo.commit({"index.html": "through the bastion\n"}, "A")
    project = project_factory(repo)
    first, second = bastion.target(), bastion.target()
    assert not reachable_directly(first)
    servers = [
        _behind(bastion, project, first, name="web1"),
        _behind(bastion, project, second, name="web2"),
    ]
    logins_before = bastion.jump.accepted_logins()

    deployment = _run(services.deployment_create(project=project, servers=servers, user=alice))

    assert deployment.status == Status.SUCCEEDED, deployment.error
    assert deployment.end_revision == revision
    for target in (first, second):
        assert (target.deploy_path / "current" / "index.html").read_text() == (
            "through the bastion\n"
        )
    assert bastion.jump.accepted_logins() - logins_before == 1


def test_a_jump_host_with_a_key_of_its_own_is_logged_in_to_with_that_key(
    bastion, git_repo_factory, project_factory, alice, tmp_path
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    target = bastion.target()
    server = _behind(bastion, project, target, name="web1")
    # The jump host no longer accepts the project's key, only the session's client key.
    bastion.jump.authorized_keys_path.write_text(bastion.client_key.public_key + "\n")
    server.jump_auth_method = JumpAuthMethod.PRIVATE_KEY
    server.jump_private_key = bastion.client_key.private_key
    server.save()

    deployment = _run(services.deployment_create(project=project, servers=[server], user=alice))

    assert deployment.status == Status.SUCCEEDED, deployment.error


def test_nothing_deploys_until_the_jump_hosts_key_is_trusted(
    bastion, git_repo_factory, project_factory, alice
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    server = _behind(bastion, project, bastion.target(), name="web1")
    server.jump_host_key_fingerprint = ""
    server.save()

    with pytest.raises(DeploymentRefused) as refused:
        services.deployment_create(project=project, servers=[server], user=alice)

    assert "its jump host's host key" in str(refused.value)
    assert f"{bastion.jump.hostname}:22" in str(refused.value)


def test_test_connection_shows_the_jump_hosts_key_then_the_servers_through_it(
    bastion, git_repo_factory, project_factory, alice
):
    project = project_factory(git_repo_factory())
    target = bastion.target()
    server = _behind(bastion, project, target, name="web1", trust=False)

    first = server_check(server=server)
    assert not first.ok and not first.jump_trusted
    assert first.jump_address == f"{bastion.jump.hostname}:22"
    assert first.jump_host_key_fingerprint == bastion.jump.host_key_fingerprint
    assert first.host_key_fingerprint is None  # not read through an untrusted jump host
    assert first.error.startswith(f"The jump host {bastion.jump.hostname}:22 offered")

    server_trust_jump_host_key(
        server=server, actor=alice, fingerprint=bastion.jump.host_key_fingerprint
    )
    second = server_check(server=server)
    assert second.jump_trusted and not second.trusted
    assert second.host_key_fingerprint == target.host_key_fingerprint
    assert second.error.startswith(f"The target 127.0.0.1:{target.port} offered")

    server_trust_host_key(server=server, actor=alice, fingerprint=target.host_key_fingerprint)
    third = server_check(server=server)
    assert third.ok, third.error
    assert third.trusted and third.jump_trusted


def test_test_connection_names_the_jump_host_when_its_key_changed(
    bastion, git_repo_factory, project_factory
):
    project = project_factory(git_repo_factory())
    server = _behind(bastion, project, bastion.target(), name="web1")
    server.jump_host_key_fingerprint = "SHA256:" + "B" * 43
    server.save()

    check = server_check(server=server)

    assert not check.ok and not check.jump_trusted
    assert check.error.startswith(f"Host key for the jump host {bastion.jump.hostname}:22")
