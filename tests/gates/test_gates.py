"""Each gate blocks, then passes; a failed gate refuses a person's deployment unless an admin
overrides it with a reason (audited); approvals count only from others with the role; who may
see, approve and override (Alice admin, Bob and Carol deployers, Dave viewer, Charlie none)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone

from builds import schedules, services
from builds.models import (
    Deployment,
    DeploymentTarget,
    GatePolicy,
    Kind,
    ScheduleKind,
    ScheduleOutcome,
    Status,
    TargetStatus,
    Trigger,
)
from projects.models import AuditEvent, Membership, Notification, Role
from servers.models import HealthCheck, Release
from tests.api.conftest import client_for
from tests.webhooks.payloads import fake_sha

pytestmark = pytest.mark.django_db

SHA = fake_sha("release")


@pytest.fixture
def team(shop, bob, django_user_model):
    carol = django_user_model.objects.create_user("carol", password="carol-password-1")
    dave = django_user_model.objects.create_user("dave", password="dave-password-1")
    Membership.objects.create(project=shop, user=bob, role=Role.DEPLOYER)
    Membership.objects.create(project=shop, user=carol, role=Role.DEPLOYER)
    Membership.objects.create(project=shop, user=dave, role=Role.VIEWER)
    return {"carol": carol, "dave": dave}


@pytest.fixture
def web1(make_server, shop):
    return make_server(shop, "web1", environment="production")


@pytest.fixture
def stage1(make_server, shop):
    return make_server(shop, "stage1", environment="staging")


def deploy(user, shop, server, **body):
    return client_for(user).post(
        f"/api/v1/projects/{shop.slug}/deployments/",
        {"servers": [server.pk], "revision": SHA, **body},
        format="json",
    )


def approve(user, deployment_id):
    return client_for(user).post(f"/api/v1/deployments/{deployment_id}/approve/", format="json")


def test_it_waits_for_two_approvals_from_others_and_refuses_self_approval(
    shop, alice, bob, charlie, team, web1
):
    GatePolicy.objects.create(
        project=shop, environment="production", approvals_required=2, approver_role="deployer"
    )

    created = deploy(bob, shop, web1)

    assert created.status_code == 201, created.content
    deployment_id = created.json()["id"]
    assert created.json()["status"] == Status.GATED
    assert created.json()["gates"]["checks"][0]["state"] == "pending"
    assert approve(bob, deployment_id).status_code == 403  # the requester
    assert approve(team["dave"], deployment_id).status_code == 403  # a viewer
    assert approve(charlie, deployment_id).status_code == 404  # not a member
    first = approve(alice, deployment_id)
    assert first.status_code == 200, first.content
    assert (first.json()["status"], first.json()["approved_by"]) == (Status.GATED, ["alice"])
    assert approve(alice, deployment_id).json()["approved_by"] == ["alice"]  # idempotent
    second = approve(team["carol"], deployment_id)
    assert second.json()["status"] == Status.QUEUED
    assert second.json()["approved_by"] == ["alice", "carol"]
    assert AuditEvent.objects.filter(action="deployment.approved").count() == 2
    assert approve(alice, deployment_id).status_code == 409  # not held any more


def test_an_admin_only_approvals_gate_ignores_a_deployers_approval(shop, alice, bob, team, web1):
    GatePolicy.objects.create(project=shop, environment="production", approvals_required=1)
    deployment_id = deploy(alice, shop, web1).json()["id"]

    assert approve(bob, deployment_id).status_code == 403
    assert approve(alice, deployment_id).status_code == 403  # alice asked for it
    assert Deployment.objects.get(pk=deployment_id).status == Status.GATED


def test_verified_on_staging_refuses_then_passes_once_the_commit_succeeded_there(
    shop, alice, web1, stage1
):
    GatePolicy.objects.create(project=shop, environment="production", verified_on="staging")

    refused = deploy(alice, shop, web1)

    assert refused.status_code == 409
    assert "has not succeeded on staging" in refused.json()["detail"]
    staged = Deployment.objects.create(
        project=shop, status=Status.SUCCEEDED, revision=SHA, end_revision=SHA
    )
    DeploymentTarget.objects.create(deployment=staged, server=stage1, status=TargetStatus.SUCCEEDED)
    passed = deploy(alice, shop, web1)
    assert passed.status_code == 201, passed.content
    assert passed.json()["status"] == Status.QUEUED
    assert passed.json()["gates"]["checks"][0]["detail"].endswith("succeeded on staging")


def test_a_webhook_deployment_to_production_waits_for_the_same_commit_on_staging(
    shop, web1, stage1
):
    GatePolicy.objects.create(project=shop, environment="production", verified_on="staging")
    staging = services.deployment_create(
        project=shop, servers=[stage1], revision=SHA, trigger=Trigger.WEBHOOK
    )
    production = services.deployment_create(
        project=shop, servers=[web1], revision=SHA, trigger=Trigger.WEBHOOK
    )
    assert production.status == Status.GATED
    assert staging.status == Status.QUEUED

    claimed = services.deployment_claim(staging.pk, worker="test")
    assert claimed is not None
    Deployment.objects.filter(pk=staging.pk).update(end_revision=SHA)
    DeploymentTarget.objects.filter(deployment=staging).update(status=TargetStatus.SUCCEEDED)
    services.deployment_finish(claimed, status=Status.SUCCEEDED)

    production.refresh_from_db()
    assert production.status == Status.QUEUED


def test_the_rollback_target_gate_passes_once_every_server_keeps_an_earlier_release(
    shop, alice, web1
):
    GatePolicy.objects.create(project=shop, environment="production", require_rollback_target=True)
    refused = deploy(alice, shop, web1)
    assert refused.status_code == 409
    assert "nothing to roll back to on web1" in refused.json()["detail"]

    done = Deployment.objects.create(project=shop, status=Status.SUCCEEDED)
    older = Release.objects.create(server=web1, deployment=done, name="r1", revision=SHA)
    Release.objects.create(
        server=web1, deployment=done, name="r2", revision=SHA, live=True, previous=older
    )

    assert deploy(alice, shop, web1).status_code == 201


def test_health_checks_and_notifications_must_be_configured(shop, alice, web1):
    GatePolicy.objects.create(
        project=shop,
        environment="production",
        require_health_checks=True,
        require_notifications=True,
    )
    refused = deploy(alice, shop, web1)
    assert refused.status_code == 409
    assert "no health check runs on web1" in refused.json()["detail"]
    assert "no enabled notification" in refused.json()["detail"]

    HealthCheck.objects.create(project=shop, kind="http", url="http://%hostname%/health")
    Notification.objects.create(project=shop, kind="webhook", url="https://hooks.example.com/x")

    assert deploy(alice, shop, web1).json()["status"] == Status.QUEUED


def test_an_admin_overrides_a_failed_gate_with_a_reason_that_the_audit_log_keeps(
    shop, alice, bob, team, web1
):
    GatePolicy.objects.create(project=shop, environment="production", require_rollback_target=True)

    assert deploy(bob, shop, web1, gates_override_reason="hotfix").status_code == 403
    assert deploy(alice, shop, web1).status_code == 409
    created = deploy(alice, shop, web1, gates_override_reason="first deployment of the shop")

    assert created.status_code == 201, created.content
    assert created.json()["status"] == Status.QUEUED
    override = created.json()["gates"]["override"]
    assert override == {
        "by": "alice",
        "reason": "first deployment of the shop",
        "gates": ["production:rollback_target"],
    }
    event = AuditEvent.objects.get(action="deployment.gates_overridden")
    assert (event.actor, event.detail["reason"]) == (alice, "first deployment of the shop")


def test_an_admin_lets_a_held_deployment_run_and_a_deployer_may_not(shop, alice, bob, team, web1):
    GatePolicy.objects.create(project=shop, environment="production", approvals_required=1)
    deployment_id = deploy(bob, shop, web1).json()["id"]
    path = f"/api/v1/deployments/{deployment_id}/gates-override/"

    assert client_for(bob).post(path, {"reason": "x"}, format="json").status_code == 403
    assert client_for(alice).post(path, {"reason": " "}, format="json").status_code == 400
    answer = client_for(alice).post(path, {"reason": "Dana approved by phone"}, format="json")

    assert answer.status_code == 202, answer.content
    assert answer.json()["status"] == Status.QUEUED
    assert AuditEvent.objects.filter(
        action="deployment.gates_overridden", detail__reason="Dana approved by phone"
    ).exists()


def test_the_checklist_says_what_a_deployment_would_do_without_creating_it(
    shop, alice, charlie, team, web1
):
    GatePolicy.objects.create(project=shop, environment="production", approvals_required=1)
    path = f"/api/v1/projects/{shop.slug}/gates/check/"

    answer = client_for(alice).post(path, {"servers": [web1.pk], "revision": SHA}, format="json")

    assert answer.status_code == 200, answer.content
    assert answer.json()["outcome"] == "wait"
    assert answer.json()["checks"][0]["gate"] == "approvals"
    assert not Deployment.objects.exists()
    assert client_for(charlie).post(path, {"servers": [web1.pk]}, format="json").status_code == 404
    assert (
        client_for(team["dave"]).post(path, {"servers": [web1.pk]}, format="json").status_code
        == 403
    )


def test_a_held_deployment_is_refused_when_its_wait_runs_out(shop, alice, bob, team, web1):
    GatePolicy.objects.create(
        project=shop, environment="production", approvals_required=1, max_wait_minutes=30
    )
    deployment_id = deploy(bob, shop, web1).json()["id"]

    assert services.gates_tick(now=timezone.now() + timedelta(minutes=29)) == 0
    assert services.gates_tick(now=timezone.now() + timedelta(minutes=31)) == 1

    deployment = Deployment.objects.get(pk=deployment_id)
    assert (deployment.status, deployment.error_code) == (Status.FAILED, "gates")
    assert "had not passed by" in deployment.error


def test_a_newer_deployment_supersedes_a_held_one_and_a_rollback_skips_the_gates(
    shop, alice, bob, team, web1
):
    GatePolicy.objects.create(project=shop, environment="production", approvals_required=1)
    first = deploy(bob, shop, web1).json()["id"]
    second = deploy(bob, shop, web1).json()["id"]

    assert Deployment.objects.get(pk=first).status == Status.CANCELLED
    assert Deployment.objects.get(pk=second).status == Status.GATED
    rollback = services.deployment_create(
        project=shop, servers=[web1], kind=Kind.ROLLBACK, user=alice
    )
    assert rollback.status == Status.QUEUED


def test_gate_policies_are_read_by_members_and_changed_by_admins(shop, alice, bob, charlie, team):
    path = f"/api/v1/projects/{shop.slug}/gates/"
    body = {"environment": "production", "require_ci": True, "approvals_required": 1}

    assert client_for(bob).post(path, body, format="json").status_code == 403
    assert client_for(charlie).get(path).status_code == 404
    created = client_for(alice).post(path, body, format="json")
    assert created.status_code == 201, created.content
    assert client_for(alice).post(path, body, format="json").status_code == 400
    bad = client_for(alice).post(
        path, {"environment": "staging", "approver_role": "viewer"}, format="json"
    )
    assert bad.status_code == 400 and "approver_role" in bad.json()
    assert [p["environment"] for p in client_for(bob).get(path).json()] == ["production"]
    changed = client_for(alice).patch(
        f"{path}{created.json()['id']}/", {"max_wait_minutes": 15}, format="json"
    )
    assert changed.json()["max_wait_minutes"] == 15
    assert AuditEvent.objects.filter(action="gate_policy.updated").exists()


def test_a_scheduled_slot_is_skipped_on_a_failed_gate_with_the_reason(shop, alice, web1):
    GatePolicy.objects.create(project=shop, environment="production", require_rollback_target=True)
    schedules.schedule_create(
        project=shop,
        actor=alice,
        now=datetime(2026, 12, 2, 10, 0, tzinfo=UTC),
        name="hourly",
        kind=ScheduleKind.CRON,
        cron="0 * * * *",
        servers=[web1],
        revision=SHA,
        skip_unchanged=False,
    )
    (run,) = schedules.schedules_tick(now=datetime(2026, 12, 2, 11, 0, tzinfo=UTC))

    decided = schedules.schedule_run(run.pk, now=datetime(2026, 12, 2, 11, 0, tzinfo=UTC))

    assert decided is not None
    assert (decided.outcome, decided.reason_code) == (ScheduleOutcome.SKIPPED, "gates")
    assert "nothing to roll back to on web1" in decided.reason
    assert not Deployment.objects.exists()
