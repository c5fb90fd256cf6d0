"""A server group's strategy (parallel, prepare then switch, rolling, canary) and a
deployment's override of it, through the API."""

from __future__ import annotations

import pytest
from django.conf import settings

from builds.models import Deployment, DeploymentTarget, Status, TargetStatus
from projects.models import AuditEvent
from servers.models import Server, ServerGroup
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
        for name in ("web1", "web2", "web3")
    ]


def groups_url(project) -> str:
    return f"/api/v1/projects/{project.slug}/groups/"


def deployments_url(project) -> str:
    return f"/api/v1/projects/{project.slug}/deployments/"


CANARY = {
    "name": "production",
    "strategy": "canary",
    "canary_count": 1,
    "canary_window_seconds": 30,
    "promotion": "manual",
}


def test_a_new_group_deploys_in_parallel_by_default(alice_api, project):
    response = alice_api.post(groups_url(project), {"name": "staging"}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert {field: body[field] for field in body if field not in {"id", "created_at"}} == {
        "name": "staging",
        "servers": [],
        "branch": "",
        "environment": "",
        "auto_deploy": True,
        "strategy": "parallel",
        "max_parallel": 5,
        "batch_size": "1",
        "canary_count": 1,
        "canary_window_seconds": 0,
        "promotion": "auto",
        "pause_seconds": 0,
        # Blue-green's fields (docs/blue-green.md), unused by the other strategies.
        "router": None,
        "router_kind": "nginx",
        "router_include_path": "",
        "router_nginx_command": "nginx",
        "router_switch_command": "",
        "upstream_port": 80,
        "colours": {},
        "upstreams": {},
        "router_upstream_name": f"slipway_group_{body['id']}",
        "live_colour": "",
        "live_colour_since": None,
        "switch_back_url": settings.BASE_URL + f"{groups_url(project)}{body['id']}/switch-back/",
        "url": settings.BASE_URL + f"{groups_url(project)}{body['id']}/",
        "html_url": settings.BASE_URL + f"/projects/{project.slug}/",
    }


def test_an_admin_sets_a_canary_strategy_with_its_servers_in_order(
    alice_api, alice, project, servers
):
    web1, web2, web3 = servers
    response = alice_api.post(
        groups_url(project), {**CANARY, "servers": [web3.pk, web1.pk, web2.pk]}, format="json"
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["servers"] == [web3.pk, web1.pk, web2.pk]
    for field, value in CANARY.items():
        assert body[field] == value
    group = ServerGroup.objects.get(pk=body["id"])
    assert (group.strategy, group.promotion, group.canary_window_seconds) == (
        "canary",
        "manual",
        30,
    )
    assert AuditEvent.objects.filter(project=project, actor=alice, action="group.created").exists()
    assert alice_api.get(body["url"]).json() == body


@pytest.mark.parametrize(("given", "answered"), [(3, "3"), ("2", "2"), (" 25% ", "25%")])
def test_a_rolling_batch_is_a_number_or_a_percentage_answered_as_a_string(
    alice_api, project, given, answered
):
    created = alice_api.post(
        groups_url(project), {"name": "production", "strategy": "rolling"}, format="json"
    ).json()
    changed = alice_api.patch(
        created["url"], {"batch_size": given, "pause_seconds": 10}, format="json"
    )
    assert changed.status_code == 200, changed.content
    assert changed.json()["batch_size"] == answered
    assert changed.json()["pause_seconds"] == 10
    assert ServerGroup.objects.get(pk=created["id"]).batch_size == answered


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"batch_size": "0"}, "batch_size"),
        ({"batch_size": "150%"}, "batch_size"),
        ({"batch_size": "abc"}, "batch_size"),
        ({"batch_size": "0%"}, "batch_size"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 1.5}, "batch_size"),
        ({"batch_size": "12345678901"}, "batch_size"),
        ({"strategy": "green_blue"}, "strategy"),
        ({"strategy": "blue_green"}, "router"),
        ({"promotion": "sometimes"}, "promotion"),
        ({"max_parallel": 0}, "max_parallel"),
        ({"canary_count": 0}, "canary_count"),
        ({"pause_seconds": -1}, "pause_seconds"),
        ({"canary_window_seconds": settings.DEPLOYMENT_TIME_LIMIT}, "canary_window_seconds"),
    ],
)
def test_it_names_the_strategy_field_it_refuses(alice_api, project, data, field):
    response = alice_api.post(groups_url(project), {"name": "production", **data}, format="json")
    assert response.status_code == 400, response.content
    assert list(response.json()) == [field]
    assert not ServerGroup.objects.exists()


def test_a_change_is_checked_together_with_the_groups_other_timings(alice_api, project):
    window = settings.DEPLOYMENT_TIME_LIMIT // 2
    created = alice_api.post(
        groups_url(project), {**CANARY, "canary_window_seconds": window}, format="json"
    ).json()
    refused = alice_api.patch(created["url"], {"pause_seconds": window}, format="json")
    assert refused.status_code == 400, refused.content
    assert list(refused.json()) == ["canary_window_seconds"]
    assert ServerGroup.objects.get(pk=created["id"]).pause_seconds == 0


def test_a_viewer_reads_the_strategy_but_cannot_change_it(alice_api, bob_api, bob, project):
    created = alice_api.post(groups_url(project), CANARY, format="json").json()
    assert bob_api.get(created["url"]).json()["strategy"] == "canary"
    assert bob_api.get(groups_url(project)).json()[0]["promotion"] == "manual"
    assert bob_api.patch(created["url"], {"strategy": "rolling"}, format="json").status_code == 403
    make_deployer(project, bob)
    assert bob_api.patch(created["url"], {"strategy": "rolling"}, format="json").status_code == 403
    assert bob_api.post(groups_url(project), CANARY, format="json").status_code == 403
    assert ServerGroup.objects.get().strategy == "canary"


def test_someone_outside_the_project_finds_no_group(alice_api, charlie_api, project):
    created = alice_api.post(groups_url(project), CANARY, format="json").json()
    assert charlie_api.get(groups_url(project)).status_code == 404
    assert charlie_api.get(created["url"]).status_code == 404
    assert (
        charlie_api.patch(created["url"], {"strategy": "rolling"}, format="json").status_code == 404
    )


# --------------------------------------------------------------------------- deployments


def test_a_deployment_runs_with_its_groups_strategy_unless_it_overrides_it(
    alice_api, project, servers
):
    group = alice_api.post(
        groups_url(project), {**CANARY, "servers": [s.pk for s in servers]}, format="json"
    ).json()
    as_the_group = alice_api.post(deployments_url(project), {"group": group["id"]}, format="json")
    assert as_the_group.status_code == 201, as_the_group.content
    assert as_the_group.json()["strategy"] == "canary"
    assert Deployment.objects.get(pk=as_the_group.json()["id"]).strategy == ""

    overridden = alice_api.post(
        deployments_url(project), {"group": group["id"], "strategy": "rolling"}, format="json"
    )
    assert overridden.status_code == 201, overridden.content
    assert overridden.json()["strategy"] == "rolling"
    assert Deployment.objects.get(pk=overridden.json()["id"]).strategy == "rolling"
    assert [t["server"] for t in overridden.json()["targets"]] == [s.pk for s in servers]
    listed = alice_api.get(deployments_url(project)).json()["results"]
    assert [d["strategy"] for d in listed] == ["rolling", "canary"]


def test_servers_without_a_group_deploy_in_parallel_unless_told_otherwise(
    alice_api, project, servers
):
    plain = alice_api.post(
        deployments_url(project), {"servers": [servers[0].pk]}, format="json"
    ).json()
    assert plain["strategy"] == "parallel"
    prepared = alice_api.post(
        deployments_url(project),
        {"servers": [servers[1].pk], "strategy": "prepare_then_switch"},
        format="json",
    ).json()
    assert prepared["strategy"] == "prepare_then_switch"


@pytest.mark.parametrize("strategy", ["blue_green", "", "CANARY", 3])
def test_it_refuses_an_unknown_strategy_override(alice_api, project, servers, strategy):
    response = alice_api.post(
        deployments_url(project),
        {"servers": [servers[0].pk], "strategy": strategy},
        format="json",
    )
    assert response.status_code == 400, response.content
    assert list(response.json()) == ["strategy"]
    assert not Deployment.objects.exists()


def test_a_viewer_cannot_deploy_with_a_strategy(alice_api, bob_api, project, servers):
    response = bob_api.post(
        deployments_url(project), {"servers": [servers[0].pk], "strategy": "canary"}, format="json"
    )
    assert response.status_code == 403
    assert not Deployment.objects.exists()


def test_each_servers_result_shows_rolled_back_and_waiting_with_the_reason(
    alice_api, project, servers
):
    deployment = Deployment.objects.create(project=project, status=Status.RUNNING)
    rows = [
        (TargetStatus.ROLLED_BACK, "web3 failed its health check: HTTP 502"),
        (TargetStatus.SUCCEEDED, ""),
        (TargetStatus.WAITING, "Waiting for promotion"),
    ]
    for position, (server, (status, reason)) in enumerate(zip(servers, rows, strict=True)):
        DeploymentTarget.objects.create(
            deployment=deployment, server=server, position=position, status=status, reason=reason
        )
    body = alice_api.get(f"/api/v1/deployments/{deployment.pk}/").json()
    assert body["status"] == "running"
    assert [(t["server_name"], t["status"], t["reason"]) for t in body["targets"]] == [
        ("web1", "rolled_back", "web3 failed its health check: HTTP 502"),
        ("web2", "succeeded", ""),
        ("web3", "waiting", "Waiting for promotion"),
    ]
