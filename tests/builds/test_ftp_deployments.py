"""FTP and FTPS servers through the worker: a deployment, an incremental one and a rollback
recorded in the database, against pyftpdlib on loopback (tests/support/ftpd.py)."""

from __future__ import annotations

import pytest

from builds import services
from builds.engine.errors import InvalidInput
from builds.models import Deployment, Kind, LogLine, Status
from builds.tasks import run_deployment
from servers.models import Protocol, Release, Server
from servers.services import server_check, server_create
from tests.support.ftpd import PASSWORD, USER

pytestmark = pytest.mark.django_db(transaction=True)


def _run(deployment: Deployment) -> Deployment:
    run_deployment.apply(args=(deployment.pk,))
    deployment.refresh_from_db()
    return deployment


def _log(deployment: Deployment) -> str:
    return "\n".join(LogLine.objects.filter(deployment=deployment).values_list("text", flat=True))


def _ftp_server(project, target, **fields) -> Server:
    return Server.objects.create(
        project=project,
        name="shared-host",
        protocol=Protocol.FTPS if target.tls else Protocol.FTP,
        hostname="127.0.0.1",
        port=target.port,
        username=USER,
        auth_method="password",
        password=PASSWORD,
        deploy_path="/site",
        atomic=False,
        certificate_fingerprint=target.fingerprint,
        **fields,
    )


def test_it_deploys_to_an_ftps_server_incrementally_then_rolls_back_by_uploading_again(
    git_repo_factory, ftps_target, project_factory, alice
):
    repo = git_repo_factory()
    a = repo.commit({"index.html": "A\n", "about.html": "about\n"}, "A")
    project = project_factory(repo)
    server = _ftp_server(project, ftps_target)

    first = _run(services.deployment_create(project=project, servers=[server], user=alice))
    assert first.status == Status.SUCCEEDED, first.error
    assert (ftps_target.deploy_path / "index.html").read_text() == "A\n"
    b = repo.commit({"index.html": "B\n", "about.html": None}, "B")
    ftps_target.stored.clear()
    second = _run(services.deployment_create(project=project, servers=[server], user=alice))
    assert second.status == Status.SUCCEEDED, second.error
    assert second.end_revision == b
    assert ftps_target.sent() == ["site/index.html"]
    assert not (ftps_target.deploy_path / "about.html").exists()
    releases = list(Release.objects.filter(server=server).order_by("created_at"))
    assert [r.revision for r in releases] == [a, b] and [r.live for r in releases] == [False, True]

    ftps_target.stored.clear()
    rollback = _run(
        services.deployment_create(
            project=project, servers=[server], kind=Kind.ROLLBACK, user=alice, rollback_of=second
        )
    )
    assert rollback.status == Status.SUCCEEDED, rollback.error
    assert (ftps_target.deploy_path / "index.html").read_text() == "A\n"
    assert (ftps_target.deploy_path / "about.html").read_text() == "about\n"
    assert ftps_target.sent() == ["site/about.html", "site/index.html"]
    assert f"Rolling back to {releases[0].name}: FTP has no symlink to switch" in _log(rollback)
    assert Release.objects.get(server=server, live=True).name == releases[0].name
    assert rollback.targets.get().release == releases[0].name


def test_a_wrong_password_fails_the_deployment_naming_the_user(
    git_repo_factory, ftp_target, project_factory, alice
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    server = _ftp_server(project, ftp_target, ftp_connections=2)
    server.password = "not-the-password"
    server.save()
    failed = _run(services.deployment_create(project=project, servers=[server], user=alice))
    assert failed.status == Status.FAILED
    assert failed.error_code == "authentication_refused"
    assert f"refused the login of '{USER}': wrong user name or password" in failed.error
    assert "not-the-password" not in _log(failed)


def test_the_ftp_host_goes_through_the_servers_address_policy(
    git_repo_factory, ftp_target, project_factory, alice, settings
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    server = _ftp_server(project, ftp_target)
    settings.ALLOW_PRIVATE_SERVERS = False

    with pytest.raises(InvalidInput, match="SLIPWAY_ALLOW_PRIVATE_SERVERS=true") as refused:
        server_create(
            project=project,
            actor=alice,
            name="another",
            protocol=Protocol.FTP,
            hostname="127.0.0.1",
            username=USER,
            password=PASSWORD,
            deploy_path="/site",
        )
    assert refused.value.field == "hostname"
    check = server_check(server=server)
    assert not check.ok and "SLIPWAY_ALLOW_PRIVATE_SERVERS=true" in check.error
    failed = _run(services.deployment_create(project=project, servers=[server], user=alice))
    assert failed.status == Status.FAILED and "loopback address" in failed.error
    assert ftp_target.commands == []  # not even connected
