"""A generic webhook receives the deployment as JSON, signed with the notification's secret."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from builds.models import Status
from builds.notifications import deployment_event, notification_create
from builds.tasks import send_notification_delivery
from deployer import links
from projects.models import AuditEvent, DeliveryStatus

pytestmark = pytest.mark.django_db

SECRET = "whsec-3f9a8b7c6d5e4f3a2b1c"


def send(delivery):
    send_notification_delivery.apply(args=(delivery.pk,), throw=True)
    delivery.refresh_from_db()
    return delivery


def test_it_posts_the_deployment_signed_with_the_secret(
    allow_private, receiver, shop, web1, make_deployment, alice
):
    notification = notification_create(
        project=shop, actor=alice, kind="webhook", url=receiver.url(), secret=SECRET
    )
    deployment = make_deployment(shop, [web1])

    [delivery] = deployment_event(deployment, "succeeded")
    # Recorded before anything is sent.
    assert delivery.notification == notification
    assert delivery.status == DeliveryStatus.PENDING and delivery.attempts == 0

    delivery = send(delivery)
    assert delivery.status == DeliveryStatus.SENT
    assert delivery.attempts == 1 and delivery.status_code == 200
    assert delivery.sent_at is not None and delivery.error == ""

    [request] = receiver.requests
    assert request.method == "POST" and request.path == "/hook"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-slipway-event"] == "succeeded"
    assert request.headers["x-slipway-delivery"] == str(delivery.uuid)
    assert request.headers["user-agent"].startswith("Slipway")
    expected = hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
    assert request.headers["x-slipway-signature"] == f"sha256={expected}"

    body = json.loads(request.body)
    assert body["event"] == "succeeded"
    assert body["project"] == {
        "slug": shop.slug,
        "name": "Shop",
        "html_url": links.project_page(shop.slug),
    }
    sent = body["deployment"]
    assert sent["id"] == deployment.pk and sent["status"] == Status.SUCCEEDED
    assert sent["kind"] == "deploy" and sent["branch"] == "main"
    assert sent["start_revision"] == "1" * 40 and sent["end_revision"] == "2" * 40
    assert sent["trigger"] == "manual" and sent["triggered_by"] == "alice"
    assert sent["html_url"] == links.deployment_page(shop.slug, deployment.pk)
    assert sent["started_at"] and sent["finished_at"] and sent["created_at"]
    assert body["servers"] == [
        {
            "id": web1.pk,
            "name": "web1",
            "status": "succeeded",
            "release": "20260101120000",
            "reason": "",
        }
    ]


def test_it_refuses_a_signature_made_with_another_secret(
    allow_private, receiver, shop, web1, make_deployment, alice
):
    notification_create(
        project=shop, actor=alice, kind="webhook", url=receiver.url(), secret=SECRET
    )
    [delivery] = deployment_event(make_deployment(shop, [web1]), "succeeded")
    send(delivery)

    [request] = receiver.requests
    forged = hmac.new(b"another-secret-entirely", request.body, hashlib.sha256).hexdigest()
    assert not hmac.compare_digest(request.headers["x-slipway-signature"], f"sha256={forged}")


def test_it_masks_stored_secrets_that_a_command_printed_into_the_error(
    allow_private, receiver, shop, web1, make_deployment, alice
):
    from projects.models import EnvironmentVariable

    EnvironmentVariable.objects.create(
        project=shop, name="API_TOKEN", value="tok-5e4d3c2b1a09", secret=True
    )
    notification_create(
        project=shop, actor=alice, kind="webhook", url=receiver.url(), secret=SECRET
    )
    deployment = make_deployment(
        shop,
        [web1],
        status=Status.FAILED,
        target_status="failed",
        error="web1: curl -H 'Token: tok-5e4d3c2b1a09' exited with 22",
        reason="curl -H 'Token: tok-5e4d3c2b1a09' exited with 22",
    )
    [delivery] = deployment_event(deployment, "failed")
    send(delivery)

    [request] = receiver.requests
    assert b"tok-5e4d3c2b1a09" not in request.body
    body = json.loads(request.body)
    assert "exited with 22" in body["deployment"]["error"]


def test_it_keeps_the_url_path_and_the_secret_out_of_errors_and_the_audit_log(
    allow_private, receiver, shop, web1, make_deployment, alice
):
    # Slack, Discord and Teams URLs carry their token in the path.
    token_url = receiver.url("/services/T0001/B0002/xoxTOKENxox")
    notification = notification_create(
        project=shop, actor=alice, kind="webhook", url=token_url, secret=SECRET
    )
    receiver.answer(always=500)
    [delivery] = deployment_event(make_deployment(shop, [web1]), "succeeded")
    delivery = send(delivery)

    assert delivery.status == DeliveryStatus.RETRYING and delivery.status_code == 500
    assert delivery.error == f"http://127.0.0.1:{receiver.port} answered HTTP 500"
    assert str(notification) == f"Webhook (signed JSON) to http://127.0.0.1:{receiver.port}"
    for event in AuditEvent.objects.filter(project=shop):
        recorded = json.dumps([event.action, event.target, event.detail])
        assert "xoxTOKENxox" not in recorded and SECRET not in recorded
