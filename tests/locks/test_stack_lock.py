"""A locked project or server (shipit's stack lock) refuses webhook, schedule, API and
dashboard deployments alike, except a rollback; a rollback can lock; who locked, when and why
is shown; unlocking is audited."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from builds import schedules
from builds.models import Deployment, ScheduleKind, ScheduleOutcome, Status, WebhookOutcome
from projects.models import AuditEvent, Membership, Role
from servers.models import Release, Server
from tests.api.conftest import client_for
from tests.webhooks import payloads

pytestmark = pytest.mark.django_db


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


@pytest.fixture
def web1(shop, bob):
    Membership.objects.create(project=shop, user=bob, role=Role.DEPLOYER)
    return server(shop, "web1")


def lock(user, shop, reason="bad migration on prod, investigating"):
    return client_for(user).post(
        f"/api/v1/projects/{shop.slug}/deploy-lock/", {"reason": reason}, format="json"
    )


def test_a_deployer_locks_the_project_and_everyone_sees_who_when_and_why(shop, bob, alice, web1):
    answer = lock(bob, shop)

    assert answer.status_code == 200, answer.content
    assert answer.json()["lock"]["locked_by"] == "bob"
    project = client_for(alice).get(f"/api/v1/projects/{shop.slug}/").json()
    assert project["lock"]["reason"] == "bad migration on prod, investigating"
    assert project["lock"]["locked_by"] == "bob"
    assert AuditEvent.objects.filter(action="project.locked", actor=bob).exists()
    assert lock(alice, shop).status_code == 409  # locked already: the reason is kept


def test_a_lock_needs_a_reason(shop, bob, web1):
    answer = lock(bob, shop, reason="   ")
    assert answer.status_code == 400
    assert "reason" in answer.json()


def test_a_locked_project_refuses_an_api_deployment_409(shop, alice, bob, web1):
    lock(bob, shop)
    answer = client_for(alice).post(
        f"/api/v1/projects/{shop.slug}/deployments/", {"servers": [web1.pk]}, format="json"
    )
    assert answer.status_code == 409
    assert "is locked by bob" in answer.json()["detail"]
    assert "bad migration on prod" in answer.json()["detail"]
    assert not Deployment.objects.exists()


def test_a_locked_project_refuses_a_push_and_the_delivery_says_why(shop, bob, web1, post):
    lock(bob, shop)
    body = payloads.encode(payloads.github_push())

    delivered = post(shop, body, **payloads.github_headers(body, shop.webhook_secret))

    assert delivered.json()["status"] == WebhookOutcome.IGNORED
    assert "Project shop is locked by bob" in delivered.json()["reason"]
    assert not Deployment.objects.exists()


def test_a_locked_project_skips_a_scheduled_slot_and_records_why(shop, alice, bob, web1):
    schedules.schedule_create(
        project=shop,
        actor=alice,
        now=datetime(2026, 12, 2, 10, 0, tzinfo=UTC),
        name="hourly",
        kind=ScheduleKind.CRON,
        cron="0 * * * *",
        servers=[web1],
    )
    lock(bob, shop)
    (run,) = schedules.schedules_tick(now=datetime(2026, 12, 2, 11, 0, tzinfo=UTC))

    decided = schedules.schedule_run(run.pk, now=datetime(2026, 12, 2, 11, 0, tzinfo=UTC))

    assert decided is not None
    run = decided
    assert (run.outcome, run.reason_code) == (ScheduleOutcome.SKIPPED, "locked")
    assert "Project shop is locked by bob" in run.reason
    assert not Deployment.objects.exists()


def test_a_locked_project_refuses_a_dashboard_deployment(shop, alice, bob, web1, alice_client):
    lock(bob, shop)
    page = alice_client.post(
        f"/projects/{shop.slug}/deploy/", {"servers": [web1.pk], "revision": ""}, follow=True
    )
    assert b"is locked by bob" in page.content
    assert not Deployment.objects.exists()


def test_a_rollback_runs_on_a_locked_project(shop, alice, bob, web1):
    done = Deployment.objects.create(project=shop, status=Status.SUCCEEDED)
    for name, live in (("r1", False), ("r2", True)):
        Release.objects.create(
            server=web1, deployment=done, name=name, revision="a" * 40, live=live
        )
    lock(bob, shop)

    answer = client_for(alice).post(
        f"/api/v1/projects/{shop.slug}/servers/{web1.pk}/rollback/", {}, format="json"
    )

    assert answer.status_code == 201, answer.content


def test_a_rollback_can_lock_the_server_it_rolls_back(shop, alice, web1):
    done = Deployment.objects.create(project=shop, status=Status.SUCCEEDED)
    for name, live in (("r1", False), ("r2", True)):
        Release.objects.create(
            server=web1, deployment=done, name=name, revision="a" * 40, live=live
        )

    answer = client_for(alice).post(
        f"/api/v1/projects/{shop.slug}/servers/{web1.pk}/rollback/",
        {"lock_reason": "r2 breaks the checkout"},
        format="json",
    )

    assert answer.status_code == 201, answer.content
    web1.refresh_from_db()
    assert web1.lock_reason == "r2 breaks the checkout" and web1.locked_by == alice
    data = client_for(alice).get(f"/api/v1/projects/{shop.slug}/servers/{web1.pk}/").json()
    assert data["lock"]["reason"] == "r2 breaks the checkout"


def test_a_locked_server_refuses_deployments_that_include_it_only(shop, alice, web1):
    web2 = server(shop, "web2")
    api = client_for(alice)
    assert (
        api.post(
            f"/api/v1/projects/{shop.slug}/servers/{web1.pk}/deploy-lock/",
            {"reason": "disk full"},
            format="json",
        ).status_code
        == 200
    )
    url = f"/api/v1/projects/{shop.slug}/deployments/"
    refused = api.post(url, {"servers": [web1.pk, web2.pk]}, format="json")
    assert refused.status_code == 409
    assert "Server web1 is locked by alice" in refused.json()["detail"]
    assert api.post(url, {"servers": [web2.pk]}, format="json").status_code == 201


def test_unlocking_is_audited_with_the_reason_it_had(shop, alice, bob, web1):
    lock(bob, shop)

    answer = client_for(alice).delete(f"/api/v1/projects/{shop.slug}/deploy-lock/")

    assert answer.status_code == 200 and answer.json() == {"lock": None}
    event = AuditEvent.objects.get(action="project.unlocked")
    assert event.actor == alice
    assert event.detail == {
        "reason": "bad migration on prod, investigating",
        "locked_by": "bob",
    }
    assert client_for(alice).delete(f"/api/v1/projects/{shop.slug}/deploy-lock/").status_code == (
        409
    )
    assert (
        client_for(alice)
        .post(f"/api/v1/projects/{shop.slug}/deployments/", {"servers": [web1.pk]}, format="json")
        .status_code
        == 201
    )


def test_a_viewer_may_not_lock(shop, charlie, web1):
    Membership.objects.create(project=shop, user=charlie, role=Role.VIEWER)
    assert lock(charlie, shop).status_code == 403
