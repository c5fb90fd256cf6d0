"""Blue-green groups driven from the database: the worker deploys to the idle colour, the
router (a real nginx, reached over SSH as a server of the project) switches, the live colour
is recorded only then, and Switch back is one switch of the router."""

from __future__ import annotations

import http.client
import time

import pytest

from builds import services
from builds.models import Deployment, Kind, Status, TargetStatus
from builds.tasks import run_deployment
from projects.models import ConfigFile
from projects.services import project_setting_create
from servers.models import HealthCheck, Release, ServerGroup

pytestmark = pytest.mark.django_db(transaction=True)


def _run(deployment: Deployment) -> Deployment:
    run_deployment.apply(args=(deployment.pk,))
    deployment.refresh_from_db()
    return deployment


def _get(url: str) -> tuple[int, str]:
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        connection.request("GET", "/index.html")
        response = connection.getresponse()
        return response.status, response.read().decode()
    except OSError as error:
        return 0, str(error)
    finally:
        connection.close()


def _serves(url: str, body: str) -> bool:
    """nginx -s reload only signals the master: its new workers answer a moment later."""
    deadline = time.monotonic() + 5
    while _get(url) != (200, body):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def bed(
    alice,
    git_repo_factory,
    sshd_factory,
    release_server_factory,
    nginx_factory,
    project_factory,
    server_factory,
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    blue_target, green_target, router_target = sshd_factory(), sshd_factory(), sshd_factory()
    blue = server_factory(project, blue_target, name="blue1")
    green = server_factory(project, green_target, name="green1")
    lb = server_factory(project, router_target, name="lb1", auto_deploy=False)
    webs = {
        s.pk: release_server_factory(t.deploy_path)
        for s, t in ((blue, blue_target), (green, green_target))
    }
    for server in (blue, green):
        check = HealthCheck.objects.create(
            project=project,
            kind="http",
            url=f"{webs[server.pk].url}/health.txt",
            body_contains="healthy",
            retries=2,
            interval_seconds=0,
        )
        check.servers.set([server])
    ConfigFile.objects.create(project=project, path="health.txt", body="healthy\n")
    group = project_setting_create(
        project=project,
        actor=alice,
        model=ServerGroup,
        data={
            "name": "production",
            "strategy": "blue_green",
            "servers": [blue, green],
            "router": lb,
            "colours": {str(blue.pk): "blue", str(green.pk): "green"},
            "upstreams": {
                str(blue.pk): f"127.0.0.1:{webs[blue.pk].port}",
                str(green.pk): f"127.0.0.1:{webs[green.pk].port}",
            },
        },
    )
    nginx = nginx_factory(
        router_target.root / "nginx",
        router_target.username,
        f"127.0.0.1:{webs[blue.pk].port}",
        upstream=group.upstream_name,
    )
    ServerGroup.objects.filter(pk=group.pk).update(
        router_include_path=str(nginx.include_path), router_nginx_command=nginx.nginx_command
    )
    group.refresh_from_db()
    first = _run(services.deployment_create(project=project, group=group))
    assert first.status == Status.SUCCEEDED, first.error
    group.refresh_from_db()
    assert group.live_colour == "blue"
    assert first.targets.get(server=green).status == TargetStatus.SKIPPED
    assert _serves(nginx.url, "A\n")
    return repo, project, group, blue, green, nginx


def test_the_new_release_goes_to_green_then_switch_back_restores_blue_in_one_step(bed):
    repo, project, group, blue, _green, nginx = bed
    blue_release = Release.objects.get(server=blue, live=True).name
    repo.commit({"index.html": "B\n"}, "B")

    deployment = _run(services.deployment_create(project=project, group=group))

    assert deployment.status == Status.SUCCEEDED, deployment.error
    group.refresh_from_db()
    assert group.live_colour == "green" and group.live_colour_since is not None
    assert _serves(nginx.url, "B\n")
    assert deployment.targets.get(server=blue).status == TargetStatus.SKIPPED
    assert "blue is live: left as it is" in deployment.targets.get(server=blue).reason
    assert Release.objects.get(server=blue, live=True).name == blue_release

    switch = _run(services.group_switch_back(group=group, user=None))

    assert switch.kind == Kind.SWITCH
    assert switch.status == Status.SUCCEEDED, switch.error
    group.refresh_from_db()
    assert group.live_colour == "blue"
    assert _serves(nginx.url, "A\n")
    assert Release.objects.get(server=blue, live=True).name == blue_release, "no redeploy"
    assert "blue is live" in switch.targets.get(server=blue).reason
    assert switch.steps.filter(name="switch traffic").exists()


def test_an_unhealthy_green_fails_the_deployment_and_blue_stays_live(bed):
    repo, project, group, _blue, green, nginx = bed
    include_before = nginx.include_path.read_bytes()
    repo.commit({"index.html": "B\n"}, "B")
    HealthCheck.objects.filter(servers=green).update(body_contains="a promise green breaks")

    deployment = _run(services.deployment_create(project=project, group=group))

    assert deployment.status == Status.FAILED
    assert deployment.error.startswith("green1: Health check"), deployment.error
    group.refresh_from_db()
    assert group.live_colour == "blue"
    assert nginx.include_path.read_bytes() == include_before
    assert _get(nginx.url) == (200, "A\n")


def test_nginx_refusing_the_switch_fails_the_deployment_naming_the_router(bed):
    repo, project, group, _blue, green, nginx = bed
    include_before = nginx.include_path.read_bytes()
    # A host nginx cannot resolve: `nginx -t` refuses the configuration.
    group.members.filter(server=green).update(upstream="green.invalid:80")
    repo.commit({"index.html": "B\n"}, "B")

    deployment = _run(services.deployment_create(project=project, group=group))

    assert deployment.status == Status.FAILED
    assert deployment.error_code == "router_failed"
    assert "lb1" in deployment.error and "green.invalid" in deployment.error, deployment.error
    assert "the old file is back in place" in deployment.error
    group.refresh_from_db()
    assert group.live_colour == "blue"
    assert nginx.include_path.read_bytes() == include_before
    assert _get(nginx.url) == (200, "A\n")
    # Green's current is the new release (idle, without traffic): recorded as it is.
    assert Release.objects.get(server=green, live=True).revision == deployment.end_revision


def test_a_promotion_goes_through_the_group_never_to_its_router_or_live_colour(bed):
    """Build once, promote to a blue-green group: the idle colour takes the artefact and the
    router switches; naming the router or one colour alone is refused (docs/promote.md)."""
    repo, project, group, blue, _green, nginx = bed
    repo.commit({"index.html": "B\n"}, "B")
    source = Deployment.objects.get(kind=Kind.DEPLOY)
    lb = group.router
    for to in ("lb1", "blue1", "blue1,lb1"):
        with pytest.raises(services.DeploymentRefused):
            services.artefact_promote(
                source=source, servers=services.promotion_servers(project=project, to=to), user=None
            )
    assert not Release.objects.filter(server=lb).exists()

    promotion = _run(
        services.artefact_promote(
            source=source,
            servers=services.promotion_servers(project=project, to="blue1,green1"),
            user=None,
        )
    )
    assert promotion.status == Status.SUCCEEDED, promotion.error
    assert promotion.group_id == group.pk
    group.refresh_from_db()
    assert group.live_colour == "green"
    assert promotion.targets.get(server=blue).status == TargetStatus.SKIPPED
    assert _serves(nginx.url, "A\n")
    assert not Release.objects.filter(server=lb).exists()
