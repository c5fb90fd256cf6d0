"""During a freeze window automatic deployments (webhooks, schedules) are refused with the
reason recorded; a person's deployment needs an admin, who gives a reason the audit log keeps;
the API answers 409 without a reason and 403 to a non-admin. Rollbacks still run."""

from __future__ import annotations

from datetime import time

import pytest

from builds.models import Deployment, Status, TargetStatus, WebhookOutcome
from projects.models import AuditEvent, FreezeWindow, Membership, Role
from servers.models import Release, Server
from tests.api.conftest import client_for
from tests.webhooks import payloads

pytestmark = pytest.mark.django_db


def always(project, **fields) -> FreezeWindow:
    """A window that covers every instant (every day, 00:00 to 00:00): no clock in the test."""
    return FreezeWindow.objects.create(
        project=project,
        name="code freeze",
        weekdays=list(range(7)),
        start_time=time(0),
        end_time=time(0),
        **fields,
    )


def server(project, name: str, **fields) -> Server:
    return Server.objects.create(
        project=project,
        name=name,
        hostname=f"{name}.example.com",
        username="deploy",
        deploy_path=f"/srv/{name}",
        host_key_fingerprint="SHA256:" + "k" * 43,
        **fields,
    )


def test_a_push_during_a_freeze_deploys_nothing_and_the_delivery_says_why(shop, post):
    server(shop, "web1")
    always(shop)
    body = payloads.encode(payloads.github_push())

    delivered = post(shop, body, **payloads.github_headers(body, shop.webhook_secret))

    assert delivered.json()["status"] == WebhookOutcome.IGNORED
    assert "frozen by “code freeze”" in delivered.json()["reason"]
    assert (
        "automatic deployments (webhook) are not run during a freeze"
        in (delivered.json()["reason"])
    )
    assert not Deployment.objects.exists()


def test_a_freeze_of_production_lets_a_push_deploy_staging(shop, post):
    server(shop, "web1", environment="production")
    staging = server(shop, "stage1", environment="staging", branch="main")
    always(shop, environment="production")
    Server.objects.filter(environment="production").update(auto_deploy=False)
    body = payloads.encode(payloads.github_push())

    delivered = post(shop, body, **payloads.github_headers(body, shop.webhook_secret))

    assert delivered.json()["status"] == WebhookOutcome.QUEUED
    assert list(Deployment.objects.get().targets.values_list("server", flat=True)) == [staging.pk]


@pytest.fixture
def frozen(shop, alice, bob):
    web1 = server(shop, "web1")
    always(shop)
    Membership.objects.create(project=shop, user=bob, role=Role.DEPLOYER)
    return web1


def deploy(user, project, web1, **body):
    return client_for(user).post(
        f"/api/v1/projects/{project.slug}/deployments/",
        {"servers": [web1.pk], **body},
        format="json",
    )


def test_the_api_refuses_a_deployment_without_a_reason_409(shop, alice, frozen):
    answer = deploy(alice, shop, frozen)
    assert answer.status_code == 409, answer.content
    assert "frozen by “code freeze”" in answer.json()["detail"]
    assert "A project admin may deploy anyway by giving a reason" in answer.json()["detail"]
    assert not Deployment.objects.exists()


def test_a_deployer_who_is_not_admin_is_refused_403_even_with_a_reason(shop, bob, frozen):
    answer = deploy(bob, shop, frozen, freeze_override_reason="hotfix for the checkout")
    assert answer.status_code == 403, answer.content
    assert "only a project admin may deploy during a freeze" in answer.json()["detail"]
    assert not Deployment.objects.exists()


def test_an_admin_deploys_with_a_reason_and_the_audit_log_keeps_it(shop, alice, frozen):
    answer = deploy(alice, shop, frozen, freeze_override_reason="hotfix for the checkout")

    assert answer.status_code == 201, answer.content
    event = AuditEvent.objects.get(action="deployment.freeze_overridden")
    assert event.actor == alice
    assert event.target == f"deployment #{answer.json()['id']}"
    assert event.detail["reason"] == "hotfix for the checkout"
    assert event.detail["window"] == "code freeze"


def test_a_rollback_runs_during_a_freeze(shop, alice, frozen):
    done = Deployment.objects.create(project=shop, status=Status.SUCCEEDED)
    for name, live in (("r1", False), ("r2", True)):
        Release.objects.create(
            server=frozen, deployment=done, name=name, revision="a" * 40, live=live
        )
    answer = client_for(alice).post(
        f"/api/v1/projects/{shop.slug}/servers/{frozen.pk}/rollback/", {}, format="json"
    )
    assert answer.status_code == 201, answer.content
    assert Deployment.objects.get(pk=answer.json()["id"]).targets.get().status == (
        TargetStatus.QUEUED
    )


def test_the_project_answer_shows_the_freeze_in_force(shop, alice, frozen):
    answer = client_for(alice).get(f"/api/v1/projects/{shop.slug}/").json()
    assert answer["freeze"]["window"] == "code freeze"
    assert answer["freeze"]["description"].startswith("frozen by “code freeze” until ")
