"""Retry failed servers and abort-and-roll-back through the API: who may, what is refused and
how (a clear 4xx, never a 500), and what is recorded. The deployments run against real sshd
targets in tests/builds/test_retry_failed_servers.py and test_abort_and_roll_back.py."""

from __future__ import annotations

from datetime import time

import pytest
from django.utils import timezone

from builds.models import Deployment, DeploymentTarget, Kind, Status, TargetStatus, Trigger
from builds.services import stack_lock
from projects.models import AuditEvent, FreezeWindow
from servers.models import Server
from tests.api.conftest import make_deployer

pytestmark = pytest.mark.django_db

TRUSTED = "SHA256:" + "r" * 43
SHA = "c0ffee" + "0" * 34


def retry_url(deployment_id: int) -> str:
    return f"/api/v1/deployments/{deployment_id}/retry/"


def abort_url(deployment_id: int) -> str:
    return f"/api/v1/deployments/{deployment_id}/abort/"


@pytest.fixture
def failed_on_web2(project):
    """A deployment of SHA (branch main, every file) that succeeded on web1 and web3 and
    failed on web2, as the runner leaves it."""
    servers = [
        Server.objects.create(
            project=project,
            name=name,
            hostname=f"{name}.example",
            username="u",
            deploy_path="/srv",
            host_key_fingerprint=TRUSTED,
        )
        for name in ("web1", "web2", "web3")
    ]
    deployment = Deployment.objects.create(
        project=project,
        status=Status.FAILED,
        revision="main",
        branch="main",
        end_revision=SHA,
        full=True,
        error="web2: Permission denied",
        finished_at=timezone.now(),
    )
    for position, (server, status) in enumerate(
        zip(
            servers,
            (TargetStatus.SUCCEEDED, TargetStatus.FAILED, TargetStatus.SUCCEEDED),
            strict=True,
        )
    ):
        DeploymentTarget.objects.create(
            deployment=deployment, server=server, position=position, status=status
        )
    return deployment


def test_a_deployer_retries_the_failed_server_only(bob_api, bob, project, failed_on_web2):
    make_deployer(project, bob)
    response = bob_api.post(retry_url(failed_on_web2.pk), {}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert [t["server_name"] for t in body["targets"]] == ["web2"]
    assert (body["revision"], body["branch"], body["full"]) == (SHA, "main", True)
    assert (body["retry_of"], body["kind"], body["trigger"]) == (
        failed_on_web2.pk,
        "deploy",
        "api",
    )
    assert body["triggered_by"] == "bob"
    assert AuditEvent.objects.filter(
        project=project, actor=bob, action="deployment.retried", target=f"deployment #{body['id']}"
    ).exists()
    assert bob_api.get(f"/api/v1/deployments/{failed_on_web2.pk}/").json()["retries"] == [
        body["id"]
    ]


def test_a_viewer_cannot_retry_and_an_outsider_finds_nothing(bob_api, charlie_api, failed_on_web2):
    refused = bob_api.post(retry_url(failed_on_web2.pk), {}, format="json")
    assert refused.status_code == 403
    assert charlie_api.post(retry_url(failed_on_web2.pk), {}, format="json").status_code == 404
    assert not Deployment.objects.filter(retry_of=failed_on_web2).exists()
    assert not AuditEvent.objects.filter(action="deployment.retried").exists()


@pytest.mark.parametrize(
    ("status", "detail"),
    [
        (Status.RUNNING, "is still running; wait until it finishes"),
        (Status.QUEUED, "is still queued"),
    ],
)
def test_an_active_deployment_is_not_retried(alice_api, failed_on_web2, status, detail):
    Deployment.objects.filter(pk=failed_on_web2.pk).update(status=status)
    response = alice_api.post(retry_url(failed_on_web2.pk), {}, format="json")
    assert response.status_code == 409 and detail in response.json()["detail"]


def test_nothing_to_retry_when_every_server_succeeded(alice_api, failed_on_web2):
    failed_on_web2.targets.update(status=TargetStatus.SUCCEEDED)
    Deployment.objects.filter(pk=failed_on_web2.pk).update(status=Status.SUCCEEDED)
    response = alice_api.post(retry_url(failed_on_web2.pk), {}, format="json")
    assert response.status_code == 409
    assert "succeeded on every server: nothing to retry" in response.json()["detail"]


def test_a_disabled_server_is_named(alice_api, failed_on_web2):
    Server.objects.filter(name="web2").update(enabled=False)
    response = alice_api.post(retry_url(failed_on_web2.pk), {}, format="json")
    assert response.status_code == 400
    assert "web2 is disabled" in response.json()["servers"][0]


def test_servers_deleted_since_leave_nothing_to_retry(alice_api, failed_on_web2):
    Server.objects.filter(name="web2").delete()
    response = alice_api.post(retry_url(failed_on_web2.pk), {}, format="json")
    assert response.status_code == 400
    assert "no longer part of project" in response.json()["servers"][0]


def test_a_locked_server_refuses_the_retry(alice_api, alice, project, failed_on_web2):
    stack_lock(
        project=project, user=alice, reason="disk full", server=Server.objects.get(name="web2")
    )
    response = alice_api.post(retry_url(failed_on_web2.pk), {}, format="json")
    assert response.status_code == 409
    assert "Server web2 is locked by alice" in response.json()["detail"]
    assert not Deployment.objects.filter(retry_of=failed_on_web2).exists()


def test_a_retry_during_a_freeze_needs_an_admins_reason(
    alice_api, bob_api, alice, bob, project, failed_on_web2
):
    FreezeWindow.objects.create(
        project=project,
        name="code freeze",
        weekdays=list(range(7)),
        start_time=time(0),
        end_time=time(0),
    )
    make_deployer(project, bob)
    without = alice_api.post(retry_url(failed_on_web2.pk), {}, format="json")
    assert without.status_code == 409 and "freeze" in without.json()["detail"]
    reason = {"freeze_override_reason": "web2 must match web1 and web3"}
    not_admin = bob_api.post(retry_url(failed_on_web2.pk), reason, format="json")
    assert not_admin.status_code == 403
    assert not Deployment.objects.filter(retry_of=failed_on_web2).exists()
    admin = alice_api.post(retry_url(failed_on_web2.pk), reason, format="json")
    assert admin.status_code == 201, admin.content
    assert AuditEvent.objects.filter(
        action="deployment.freeze_overridden",
        actor=alice,
        detail__reason=reason["freeze_override_reason"],
    ).exists()


def test_only_a_deployment_is_retried_or_aborted(alice_api, failed_on_web2):
    Deployment.objects.filter(pk=failed_on_web2.pk).update(kind=Kind.ROLLBACK)
    retried = alice_api.post(retry_url(failed_on_web2.pk), {}, format="json")
    assert retried.status_code == 409 and "only a deployment is retried" in retried.json()["detail"]
    Deployment.objects.filter(pk=failed_on_web2.pk).update(status=Status.RUNNING)
    aborted = alice_api.post(abort_url(failed_on_web2.pk))
    assert aborted.status_code == 409 and "cancel it instead" in aborted.json()["detail"]


def test_an_abort_records_who_asked(alice_api, alice, failed_on_web2):
    Deployment.objects.filter(pk=failed_on_web2.pk).update(
        status=Status.RUNNING, finished_at=None, trigger=Trigger.API
    )
    response = alice_api.post(abort_url(failed_on_web2.pk))
    assert response.status_code == 202, response.content
    failed_on_web2.refresh_from_db()
    assert failed_on_web2.abort_requested_at is not None
    assert failed_on_web2.abort_requested_by == alice
