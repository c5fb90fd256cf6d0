"""A blue-green group through the API: its colours, router and live colour, what it refuses,
and Switch back (the router alone, as a deployment of kind switch)."""

from __future__ import annotations

import pytest

from builds.models import Deployment, DeploymentTarget, Kind, Status, TargetStatus
from projects.models import AuditEvent
from servers.models import Release, Server, ServerGroup
from tests.api.conftest import make_deployer

pytestmark = pytest.mark.django_db

TRUSTED = "SHA256:" + "s" * 43


@pytest.fixture
def servers(project):
    return [
        Server.objects.create(
            project=project,
            name=name,
            hostname=f"{name}.example",
            username="deploy",
            deploy_path="/srv/shop",
            host_key_fingerprint=TRUSTED,
        )
        for name in ("blue1", "green1", "lb1")
    ]


def groups_url(project) -> str:
    return f"/api/v1/projects/{project.slug}/groups/"


def blue_green(servers, **overrides):
    blue, green, lb = servers
    return {
        "name": "production",
        "strategy": "blue_green",
        "servers": [blue.pk, green.pk],
        "router": lb.pk,
        "colours": {str(blue.pk): "blue", str(green.pk): "green"},
        "upstreams": {str(green.pk): "10.0.0.6:8080"},
        **overrides,
    }


def test_an_admin_makes_a_blue_green_group_with_its_router(alice_api, alice, project, servers):
    blue, green, lb = servers
    response = alice_api.post(groups_url(project), blue_green(servers), format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["strategy"] == "blue_green"
    assert body["router"] == lb.pk
    assert body["colours"] == {str(blue.pk): "blue", str(green.pk): "green"}
    assert body["upstreams"] == {str(green.pk): "10.0.0.6:8080"}
    assert body["live_colour"] == ""
    assert body["router_upstream_name"] == f"slipway_group_{body['id']}"
    assert body["router_include_path"] == f"/etc/nginx/conf.d/slipway-group-{body['id']}.conf"
    assert body["switch_back_url"].endswith(f"/groups/{body['id']}/switch-back/")

    # A new order of the servers keeps their colours.
    response = alice_api.patch(body["url"], {"servers": [green.pk, blue.pk]}, format="json")
    assert response.status_code == 200, response.content
    assert response.json()["colours"] == body["colours"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"router": None}, "router"),
        ({"colours": {}}, "colours"),
        ({"colours": "blue"}, "colours"),
        ({"colours": {"X": "purple"}}, "colours"),
        ({"upstreams": {"0": "10.0.0.6; evil"}}, "upstreams"),
        ({"router_kind": "command"}, "router_switch_command"),
        ({"router_include_path": "conf.d/app.conf"}, "router_include_path"),
        ({"router_nginx_command": "nginx\nrm -rf /"}, "router_nginx_command"),
        ({"upstream_port": 0}, "upstream_port"),
        ({"upstreams": {"0": "a:\u0663"}}, "upstreams"),  # an Arabic-Indic digit
        ({"router_include_path": "/etc/nginx/../../etc/passwd.conf"}, "router_include_path"),
        ({"router_include_path": "/etc/passwd"}, "router_include_path"),
        ({"router_include_path": "/etc/nginx/\u202econf.conf"}, "router_include_path"),
    ],
)
def test_it_names_the_blue_green_field_it_refuses(alice_api, project, servers, change, field):
    data = blue_green(servers, **change)
    if "upstreams" in change and "0" in change["upstreams"]:
        data["upstreams"] = {str(servers[1].pk): change["upstreams"]["0"]}
    if change.get("colours") == {}:
        data["colours"] = {str(servers[0].pk): "blue"}  # green has no server
    response = alice_api.post(groups_url(project), data, format="json")
    assert response.status_code == 400, response.content
    assert list(response.json()) == [field]
    assert not ServerGroup.objects.exists()


def test_the_router_must_be_a_server_of_the_project(
    alice_api, project, servers, repo, project_factory
):
    other = project_factory(repo, name="Other")
    stranger = Server.objects.create(
        project=other, name="lb", hostname="lb.example", username="d", deploy_path="/srv/x"
    )
    response = alice_api.post(
        groups_url(project), blue_green(servers, router=stranger.pk), format="json"
    )
    assert response.status_code == 400
    assert list(response.json()) == ["router"]


@pytest.fixture
def live_group(alice_api, project, servers):
    """Blue live; green has a release from the deployment before."""
    body = alice_api.post(groups_url(project), blue_green(servers), format="json").json()
    group = ServerGroup.objects.get(pk=body["id"])
    ServerGroup.objects.filter(pk=group.pk).update(live_colour="blue")
    for server in servers[:2]:
        Release.objects.create(server=server, name=f"r-{server.name}", revision="a" * 40, live=True)
    group.refresh_from_db()
    return group


def test_a_deployer_switches_back_and_the_switch_is_a_deployment(
    bob_api, bob, project, live_group, servers
):
    make_deployer(project, bob)
    response = bob_api.post(f"{groups_url(project)}{live_group.pk}/switch-back/")

    assert response.status_code == 202, response.content
    body = response.json()
    assert body["kind"] == Kind.SWITCH
    assert body["status"] == Status.QUEUED
    assert sorted(
        t["server"]["id"] if isinstance(t["server"], dict) else t["server"] for t in body["targets"]
    ) == sorted(s.pk for s in servers[:2])
    assert AuditEvent.objects.filter(
        project=project, actor=bob, action="group.switched_back"
    ).exists()
    live_group.refresh_from_db()
    assert live_group.live_colour == "blue", "recorded only once the router took it"

    again = bob_api.post(f"{groups_url(project)}{live_group.pk}/switch-back/")
    assert again.status_code == 409, again.content
    assert f"#{body['id']}" in again.json()["detail"]


def test_switch_back_needs_a_live_colour_and_releases_on_the_other(
    alice_api, project, live_group, servers
):
    url = f"{groups_url(project)}{live_group.pk}/switch-back/"
    ServerGroup.objects.filter(pk=live_group.pk).update(live_colour="")
    response = alice_api.post(url)
    assert response.status_code == 400
    assert "no live colour" in response.json()["group"][0]

    ServerGroup.objects.filter(pk=live_group.pk).update(live_colour="blue")
    Release.objects.filter(server=servers[1]).delete()
    response = alice_api.post(url)
    assert response.status_code == 400
    assert "green servers of production have no release" in response.json()["group"][0]
    assert not Deployment.objects.exists()


def test_a_group_that_is_not_blue_green_has_nothing_to_switch_back(alice_api, project, servers):
    body = alice_api.post(
        groups_url(project), {"name": "web", "servers": [servers[0].pk]}, format="json"
    ).json()
    response = alice_api.post(f"{groups_url(project)}{body['id']}/switch-back/")
    assert response.status_code == 400
    assert "not blue-green" in response.json()["group"][0]


def test_a_viewer_cannot_switch_back_and_a_stranger_finds_no_group(
    bob_api, charlie_api, project, live_group
):
    url = f"{groups_url(project)}{live_group.pk}/switch-back/"
    assert bob_api.post(url).status_code == 403
    assert charlie_api.post(url).status_code == 404
    assert not DeploymentTarget.objects.filter(status=TargetStatus.QUEUED).exists()


def test_blue_green_is_not_a_strategy_one_deployment_can_take(alice_api, project, live_group):
    response = alice_api.post(
        f"/api/v1/projects/{project.slug}/deployments/",
        {"group": live_group.pk, "strategy": "blue_green"},
        format="json",
    )
    assert response.status_code == 400
    assert list(response.json()) == ["strategy"]


def test_the_router_is_not_one_of_the_groups_servers(alice_api, project, servers):
    blue, _green, _lb = servers
    response = alice_api.post(
        groups_url(project), blue_green(servers, router=blue.pk), format="json"
    )
    assert response.status_code == 400, response.content
    assert "router" in response.json() and "never deployed to" in str(response.json())
