"""Many servers from the dashboard: a group's strategy on its form, a strategy override when
deploying, and a canary deployment's page with its waiting servers, Promote and Abort."""

from __future__ import annotations

import html
import re

import pytest
from django.utils import timezone

from builds.models import Deployment, DeploymentTarget, Status, TargetStatus
from projects.models import AuditEvent
from servers.models import GroupMember, Promotion, Server, ServerGroup, Strategy
from tests.dashboard.support import TRUSTED, field_errors, forms_posting_to, make_deployer

pytestmark = pytest.mark.django_db

GROUP = {
    "name": "production",
    "environment": "production",
    "auto_deploy": "on",
    "strategy": Strategy.CANARY,
    "max_parallel": "5",
    "batch_size": "1",
    "pause_seconds": "0",
    "canary_count": "1",
    "canary_window_seconds": "30",
    "promotion": Promotion.MANUAL,
}


@pytest.fixture
def web2(project):
    return Server.objects.create(
        project=project,
        name="web2",
        hostname="web2.example.com",
        username="deploy",
        deploy_path="/srv/shop",
        host_key_fingerprint=TRUSTED,
        position=1,
    )


@pytest.fixture
def group(project, server, web2):
    group = ServerGroup.objects.create(
        project=project,
        name="production",
        strategy=Strategy.CANARY,
        canary_count=1,
        promotion=Promotion.MANUAL,
    )
    GroupMember.objects.create(group=group, server=server, position=0)
    GroupMember.objects.create(group=group, server=web2, position=1)
    return group


@pytest.fixture
def canary(project, group, server, web2, alice):
    """A manual canary deployment: web1 has the release, web2 waits for Promote."""
    deployment = Deployment.objects.create(
        project=project,
        group=group,
        status=Status.RUNNING,
        triggered_by=alice,
        started_at=timezone.now(),
        stage="canary",
    )
    DeploymentTarget.objects.create(
        deployment=deployment,
        server=server,
        position=0,
        status=TargetStatus.SUCCEEDED,
        release="20261121-101502123-2222222",
    )
    DeploymentTarget.objects.create(
        deployment=deployment, server=web2, position=1, status=TargetStatus.WAITING
    )
    return deployment


def _page(client, project, deployment) -> str:
    response = client.get(f"/projects/{project.slug}/deployments/{deployment.pk}/")
    assert response.status_code == 200
    return response.content.decode()


def _target(page: str, server) -> str:
    match = re.search(rf'<li class="target" data-target="{server.pk}">(.*?)</li>', page, re.S)
    assert match, f"no target for {server.name}"
    return match.group(1)


# --------------------------------------------------------------------------- the group form


def test_it_saves_a_groups_strategy_from_its_form(alice_client, project, server, web2):
    response = alice_client.post(
        f"/projects/{project.slug}/settings/groups/",
        {**GROUP, "servers": [str(server.pk), str(web2.pk)]},
    )
    assert response.status_code == 302
    group = ServerGroup.objects.get(name="production")
    assert (group.strategy, group.canary_count, group.canary_window_seconds, group.promotion) == (
        Strategy.CANARY,
        1,
        30,
        Promotion.MANUAL,
    )
    assert AuditEvent.objects.filter(action="group.created").exists()
    listing = alice_client.get(f"/projects/{project.slug}/settings/groups/").content.decode()
    assert "Canary first, then the rest" in listing and "promoted by hand" in listing


def test_it_changes_a_groups_strategy_to_rolling(alice_client, project, group, server, web2):
    path = f"/projects/{project.slug}/settings/groups/{group.pk}/"
    form = {
        **GROUP,
        "servers": [str(server.pk), str(web2.pk)],
        "strategy": Strategy.ROLLING,
        "batch_size": "50%",
        "pause_seconds": "10",
    }
    assert alice_client.post(path, form).status_code == 302
    group.refresh_from_db()
    assert (group.strategy, group.batch_size, group.pause_seconds) == (Strategy.ROLLING, "50%", 10)


def test_every_strategy_field_is_on_the_form_and_says_which_strategies_use_it(
    alice_client, project, group
):
    page = alice_client.get(f"/projects/{project.slug}/settings/groups/{group.pk}/").content
    page = page.decode()
    # Without JavaScript all of them are there; settings.js hides the ones not in use.
    for name, strategies in (
        ("max_parallel", "parallel prepare_then_switch canary"),
        ("batch_size", "rolling"),
        ("pause_seconds", "rolling"),
        ("canary_count", "canary"),
        ("canary_window_seconds", "canary"),
        ("promotion", "canary"),
    ):
        tag = re.search(rf'<[^>]*name="{name}"[^>]*>', page)
        assert tag, name
        assert 'data-shown-with="strategy"' in tag.group(0)
        assert f'data-shown-for="{strategies}"' in tag.group(0)
    assert "js/settings.js" in page
    assert re.search(r'<option value="canary" selected>', page)


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"batch_size": "a few"}, "batch_size", "must be a number of servers or a percentage"),
        ({"batch_size": "150%"}, "batch_size", "must be a number of servers or a percentage"),
        ({"canary_count": "0"}, "canary_count", "Canaries must be a whole number of at least 1"),
        ({"max_parallel": "0"}, "max_parallel", "must be a whole number of at least 1"),
        ({"pause_seconds": "-5"}, "pause_seconds", "must be a whole number of seconds"),
        (
            {"canary_window_seconds": "999999"},
            "canary_window_seconds",
            "must fit inside the deployment time limit",
        ),
    ],
)
def test_a_strategy_error_shows_beside_its_field(
    alice_client, project, server, changes, field, message
):
    response = alice_client.post(
        f"/projects/{project.slug}/settings/groups/",
        {**GROUP, "servers": [str(server.pk)], **changes},
    )
    assert response.status_code == 200
    errors = field_errors(response.content.decode(), field)
    assert errors and message in errors[0], errors
    assert not ServerGroup.objects.exists()


# --------------------------------------------------------------------------- deploying


def test_a_deployment_can_override_the_groups_strategy(alice_client, alice, project, group):
    page = alice_client.get(f"/projects/{project.slug}/deploy/").content.decode()
    assert re.search(r'<select name="strategy"', page)
    assert "The group&#x27;s (all at once without a group)" in page
    response = alice_client.post(
        f"/projects/{project.slug}/deploy/",
        {"group": str(group.pk), "strategy": Strategy.ROLLING, "action": "deploy"},
    )
    assert response.status_code == 302
    deployment = Deployment.objects.get()
    assert deployment.strategy == Strategy.ROLLING
    page = _page(alice_client, project, deployment)
    assert re.search(r'id="deployment-strategy" data-strategy="rolling">Rolling, in batches', page)
    assert "for this deployment" in page


def test_without_an_override_the_deployment_takes_the_groups_strategy(alice_client, project, group):
    alice_client.post(
        f"/projects/{project.slug}/deploy/", {"group": str(group.pk), "action": "deploy"}
    )
    deployment = Deployment.objects.get()
    assert deployment.strategy == ""
    page = _page(alice_client, project, deployment)
    assert 'data-strategy="canary">Canary first, then the rest' in page
    assert "(1 first, promoted by hand)" in page


def test_an_unknown_strategy_is_refused_beside_the_field(alice_client, project, group):
    response = alice_client.post(
        f"/projects/{project.slug}/deploy/",
        {"group": str(group.pk), "strategy": "yolo", "action": "deploy"},
    )
    assert field_errors(response.content.decode(), "strategy")
    assert not Deployment.objects.exists()


# --------------------------------------------------------------------------- a canary deployment


def test_the_page_shows_the_canary_live_and_the_other_server_waiting(
    alice_client, project, canary, server, web2
):
    page = _page(alice_client, project, canary)
    assert "Succeeded" in _target(page, server)
    waiting = _target(page, web2)
    assert '<span class="badge status-waiting">Waiting</span>' in waiting
    assert "Waiting for the canaries to be promoted" in waiting
    assert 'id="waiting-callout"' in page
    actions = forms_posting_to(page)
    slug = project.slug
    assert f"/projects/{slug}/deployments/{canary.pk}/promote/" in actions
    assert f"/projects/{slug}/deployments/{canary.pk}/abort/" in actions
    confirm = re.search(r'action="[^"]*/promote/" data-confirm="([^"]*)"', page)
    assert confirm and "web2" in html.unescape(confirm.group(1))


def test_promote_asks_the_deployment_to_go_on_and_is_recorded(alice_client, alice, project, canary):
    response = alice_client.post(
        f"/projects/{project.slug}/deployments/{canary.pk}/promote/", follow=True
    )
    canary.refresh_from_db()
    assert canary.promote_requested_at is not None and canary.abort_requested_at is None
    assert "Promoted" in response.content.decode()
    event = AuditEvent.objects.get(action="deployment.promoted")
    assert event.actor == alice and event.target == f"deployment #{canary.pk}"
    # Once promoted, the button is gone (the worker goes on by itself).
    assert "/promote/" not in " ".join(forms_posting_to(_page(alice_client, project, canary)))
    audit = alice_client.get(f"/projects/{project.slug}/audit/").content.decode()
    assert "deployment.promoted" in audit


def test_abort_asks_the_deployment_to_roll_back_and_is_recorded(
    alice_client, alice, project, canary
):
    alice_client.post(f"/projects/{project.slug}/deployments/{canary.pk}/abort/")
    canary.refresh_from_db()
    assert canary.abort_requested_at is not None
    assert AuditEvent.objects.get(action="deployment.aborted").actor == alice
    page = _page(alice_client, project, canary)
    assert "/abort/" not in " ".join(forms_posting_to(page))
    assert "/promote/" not in " ".join(forms_posting_to(page))
    assert (
        "deployment.aborted"
        in alice_client.get(f"/projects/{project.slug}/audit/").content.decode()
    )


def test_promote_is_offered_only_while_a_server_waits(alice_client, project, canary, web2):
    DeploymentTarget.objects.filter(server=web2).update(status=TargetStatus.RUNNING)
    page = _page(alice_client, project, canary)
    actions = " ".join(forms_posting_to(page))
    assert "/promote/" not in actions and "/abort/" in actions
    response = alice_client.post(
        f"/projects/{project.slug}/deployments/{canary.pk}/promote/", follow=True
    )
    assert "no server waiting" in response.content.decode()
    canary.refresh_from_db()
    assert canary.promote_requested_at is None
    assert not AuditEvent.objects.filter(action="deployment.promoted").exists()


def test_a_finished_deployment_has_neither_button(alice_client, project, canary):
    Deployment.objects.filter(pk=canary.pk).update(status=Status.SUCCEEDED)
    actions = " ".join(forms_posting_to(_page(alice_client, project, canary)))
    assert "/promote/" not in actions and "/abort/" not in actions
    response = alice_client.post(
        f"/projects/{project.slug}/deployments/{canary.pk}/abort/", follow=True
    )
    assert "already succeeded" in response.content.decode()


def test_a_rolled_back_server_says_so_with_the_reason(alice_client, project, canary, server, web2):
    Deployment.objects.filter(pk=canary.pk).update(
        status=Status.FAILED, error="A health check failed after the switch"
    )
    DeploymentTarget.objects.filter(server=server).update(
        status=TargetStatus.ROLLED_BACK,
        previous_release="20261120-101502123-1111111",
        reason="GET http://web1.example.com/health answered 503, expected 200",
    )
    DeploymentTarget.objects.filter(server=web2).update(status=TargetStatus.CANCELLED)
    target = _target(_page(alice_client, project, canary), server)
    assert '<span class="badge status-rolled_back">Rolled back</span>' in target
    assert "Rolled back to the release it had" in target
    assert "20261120-101502123-1111111" in target
    assert "answered 503, expected 200" in target


def test_the_summary_redrawn_live_carries_the_buttons(alice_client, project, canary):
    summary = alice_client.get(
        f"/projects/{project.slug}/deployments/{canary.pk}/summary/"
    ).content.decode()
    assert "/promote/" in " ".join(forms_posting_to(summary))
    assert "status-waiting" in summary


# --------------------------------------------------------------------------- who may


def test_a_viewer_sees_the_waiting_server_but_no_button(bob_client, project, canary, web2):
    page = _page(bob_client, project, canary)
    assert "status-waiting" in _target(page, web2)
    actions = " ".join(forms_posting_to(page))
    assert "/promote/" not in actions and "/abort/" not in actions
    assert "a deployer to promote the release" in page


@pytest.mark.parametrize("action", ["promote", "abort"])
def test_a_viewers_forged_decision_is_forbidden(bob_client, project, canary, action):
    response = bob_client.post(f"/projects/{project.slug}/deployments/{canary.pk}/{action}/")
    assert response.status_code == 403
    canary.refresh_from_db()
    assert canary.promote_requested_at is None and canary.abort_requested_at is None


@pytest.mark.parametrize("action", ["promote", "abort"])
def test_a_deployer_may_decide(bob_client, bob, project, canary, action):
    make_deployer(project, bob)
    assert f"/{action}/" in " ".join(forms_posting_to(_page(bob_client, project, canary)))
    bob_client.post(f"/projects/{project.slug}/deployments/{canary.pk}/{action}/")
    canary.refresh_from_db()
    assert getattr(canary, f"{action}_requested_at") is not None


def test_a_viewer_cannot_change_a_groups_strategy(bob_client, project, group):
    path = f"/projects/{project.slug}/settings/groups/{group.pk}/"
    page = bob_client.get(path).content.decode()
    assert forms_posting_to(page) == ["/logout/"]
    assert bob_client.post(path, {**GROUP, "strategy": Strategy.PARALLEL}).status_code == 403
    group.refresh_from_db()
    assert group.strategy == Strategy.CANARY


@pytest.mark.parametrize(
    ("method", "action"),
    [("get", ""), ("get", "summary/"), ("post", "promote/"), ("post", "abort/")],
)
def test_charlie_finds_nothing(charlie_client, project, canary, method, action):
    path = f"/projects/{project.slug}/deployments/{canary.pk}/{action}"
    assert getattr(charlie_client, method)(path).status_code == 404
    canary.refresh_from_db()
    assert canary.promote_requested_at is None and canary.abort_requested_at is None
