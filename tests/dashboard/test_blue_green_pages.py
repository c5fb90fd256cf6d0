"""A blue-green group from the dashboard: its colours and router on the form, the live
colour on the project page, and Switch back."""

from __future__ import annotations

import pytest

from builds.models import Deployment, Kind
from projects.models import AuditEvent
from servers.models import GroupMember, Release, Server, ServerGroup, Strategy
from tests.dashboard.support import TRUSTED, forms_posting_to, make_deployer

pytestmark = pytest.mark.django_db


def _server(project, name, position):
    return Server.objects.create(
        project=project,
        name=name,
        hostname=f"{name}.example.com",
        username="deploy",
        deploy_path="/srv/shop",
        host_key_fingerprint=TRUSTED,
        position=position,
    )


@pytest.fixture
def fleet(project, server):
    return server, _server(project, "web2", 1), _server(project, "lb1", 2)


def test_an_admin_makes_a_blue_green_group_from_its_form(alice_client, project, fleet):
    web1, web2, lb = fleet
    response = alice_client.post(
        f"/projects/{project.slug}/settings/groups/",
        {
            "name": "production",
            "auto_deploy": "on",
            "strategy": Strategy.BLUE_GREEN,
            "servers": [str(web1.pk), str(web2.pk)],
            "blue_servers": [str(web1.pk)],
            "green_servers": [str(web2.pk)],
            "upstream_lines": "web2 10.0.0.6:8080",
            "upstream_port": "8000",
            "router": str(lb.pk),
            "router_kind": "nginx",
            "router_nginx_command": "sudo -n nginx",
        },
    )
    assert response.status_code == 302, response.content.decode()
    group = ServerGroup.objects.get(name="production")
    assert group.colours == {str(web1.pk): "blue", str(web2.pk): "green"}
    assert group.upstreams == {str(web2.pk): "10.0.0.6:8080"}
    assert (group.router, group.router_nginx_command, group.upstream_port) == (
        lb,
        "sudo -n nginx",
        8000,
    )
    assert group.router_include_path == f"/etc/nginx/conf.d/slipway-group-{group.pk}.conf"

    page = alice_client.get(f"/projects/{project.slug}/settings/groups/{group.pk}/").content
    assert b"web2 10.0.0.6:8080" in page


def test_a_blue_green_group_needs_a_colour_for_each_server(alice_client, project, fleet):
    web1, web2, lb = fleet
    response = alice_client.post(
        f"/projects/{project.slug}/settings/groups/",
        {
            "name": "production",
            "strategy": Strategy.BLUE_GREEN,
            "servers": [str(web1.pk), str(web2.pk)],
            "blue_servers": [str(web1.pk)],
            "router": str(lb.pk),
        },
    )
    assert response.status_code == 200
    assert "every server needs a colour: web2" in response.content.decode()
    assert not ServerGroup.objects.exists()


@pytest.fixture
def live_group(project, fleet):
    web1, web2, lb = fleet
    group = ServerGroup.objects.create(
        project=project,
        name="production",
        strategy=Strategy.BLUE_GREEN,
        router=lb,
        live_colour="green",
    )
    for position, (server, colour) in enumerate(((web1, "blue"), (web2, "green"))):
        GroupMember.objects.create(group=group, server=server, position=position, colour=colour)
        Release.objects.create(server=server, name=f"r-{server.name}", revision="a" * 40, live=True)
    return group


def test_the_project_page_shows_the_live_colour_and_offers_switch_back(
    bob_client, bob, project, live_group
):
    switch_back = f"/projects/{project.slug}/groups/{live_group.pk}/switch-back/"
    page = bob_client.get(f"/projects/{project.slug}/").content.decode()
    assert "green live" in page
    assert switch_back not in forms_posting_to(page), "a viewer cannot switch"

    make_deployer(project, bob)
    page = bob_client.get(f"/projects/{project.slug}/").content.decode()
    assert switch_back in forms_posting_to(page)
    assert "Switch back to blue" in page

    response = bob_client.post(switch_back)
    deployment = Deployment.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/projects/{project.slug}/deployments/{deployment.pk}/"
    assert deployment.kind == Kind.SWITCH
    assert AuditEvent.objects.filter(actor=bob, action="group.switched_back").exists()
    page = bob_client.get(response["Location"]).content.decode()
    assert "Switch back" in page


def test_a_viewer_posting_switch_back_is_refused(bob_client, project, live_group):
    response = bob_client.post(f"/projects/{project.slug}/groups/{live_group.pk}/switch-back/")
    assert response.status_code == 403
    assert not Deployment.objects.exists()


def test_the_group_page_says_which_colour_is_live_and_where_the_upstream_is(
    alice_client, project, live_group
):
    page = alice_client.get(
        f"/projects/{project.slug}/settings/groups/{live_group.pk}/"
    ).content.decode()
    assert "green live" in page and "the next deployment goes to blue" in page
    assert f"/projects/{project.slug}/groups/{live_group.pk}/switch-back/" in forms_posting_to(page)
    assert f"slipway_group_{live_group.pk}" in page
