"""The dashboard: the deploy page shows the checklist and asks an admin why when a gate failed;
a held deployment's page shows its gates, Approve for others, and the admin's override."""

from __future__ import annotations

import pytest

from builds.models import Deployment, GatePolicy, Status
from projects.models import AuditEvent, Membership, Role
from tests.webhooks.payloads import fake_sha

pytestmark = pytest.mark.django_db

SHA = fake_sha("dash")


@pytest.fixture
def web1(shop, bob, make_server):
    Membership.objects.create(project=shop, user=bob, role=Role.DEPLOYER)
    return make_server(shop, "web1", environment="production")


def test_the_deploy_page_shows_the_checklist_and_refuses_a_failed_gate(shop, web1, alice_client):
    GatePolicy.objects.create(project=shop, environment="production", require_rollback_target=True)

    page = alice_client.get(f"/projects/{shop.slug}/deploy/?servers={web1.pk}&revision={SHA}")

    assert page.status_code == 200
    assert b'data-gate="rollback_target" data-state="failed"' in page.content
    assert b"Why deploy past the gates" in page.content
    refused = alice_client.post(
        f"/projects/{shop.slug}/deploy/", {"servers": [web1.pk], "revision": SHA}, follow=True
    )
    assert b"Gates failed" in refused.content
    assert not Deployment.objects.exists()
    alice_client.post(
        f"/projects/{shop.slug}/deploy/",
        {"servers": [web1.pk], "revision": SHA, "gates_override_reason": "first release"},
    )
    assert Deployment.objects.get().status == Status.QUEUED
    assert AuditEvent.objects.filter(action="deployment.gates_overridden").exists()


def test_a_held_deployment_page_offers_approve_to_others_and_approving_runs_it(
    shop, web1, alice_client, bob_client
):
    GatePolicy.objects.create(project=shop, environment="production", approvals_required=1)
    bob_client.post(f"/projects/{shop.slug}/deploy/", {"servers": [web1.pk], "revision": SHA})
    deployment = Deployment.objects.get()
    assert deployment.status == Status.GATED
    url = f"/projects/{shop.slug}/deployments/{deployment.pk}/"

    assert b">Approve</button>" not in bob_client.get(url).content  # he asked for it
    page = alice_client.get(url)
    assert b">Approve</button>" in page.content
    assert b"Waiting for gates" in page.content

    alice_client.post(url + "approve/")

    assert Deployment.objects.get().status == Status.QUEUED
    assert b"Approved by alice" in alice_client.get(url).content
