"""Email notifications go through a real SMTP server, configured by SLIPWAY_SMTP_URL."""

from __future__ import annotations

import email
import email.policy

import pytest

from builds.engine.errors import InvalidInput
from builds.models import Status
from builds.notifications import deployment_event, notification_create, notification_update
from builds.tasks import send_notification_delivery
from deployer import links
from projects.models import DeliveryStatus, Notification

pytestmark = pytest.mark.django_db


def send(delivery):
    send_notification_delivery.apply(args=(delivery.pk,), throw=True)
    delivery.refresh_from_db()
    return delivery


def test_it_mails_the_outcome_through_the_smtp_server(
    mail_server, shop, web1, make_deployment, alice
):
    notification_create(project=shop, actor=alice, kind="email", address="ops@shop.example")
    deployment = make_deployment(
        shop, [web1], status=Status.FAILED, target_status="failed", error="Disk full"
    )
    [delivery] = deployment_event(deployment, "failed")
    delivery = send(delivery)
    assert delivery.status == DeliveryStatus.SENT, delivery.error
    assert delivery.attempts == 1

    [(sender, recipients, raw)] = mail_server.messages
    assert sender == "deploys@slipway.test"
    assert recipients == ["ops@shop.example"]
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert message["Subject"] == f"Shop: deployment #{deployment.pk} failed"
    assert message["From"] == "Slipway <deploys@slipway.test>"
    assert message["X-Slipway-Event"] == "failed"
    assert message["X-Slipway-Delivery"] == str(delivery.uuid)
    text = message.get_content()
    assert "Error: Disk full" in text
    assert links.deployment_page(shop.slug, deployment.pk) in text


def test_it_gives_up_at_once_when_the_server_refuses_the_address(
    mail_server, shop, web1, make_deployment, alice
):
    notification_create(project=shop, actor=alice, kind="email", address="nobody@refused.example")
    [delivery] = deployment_event(make_deployment(shop, [web1]), "succeeded")
    delivery = send(delivery)

    assert delivery.status == DeliveryStatus.FAILED and delivery.attempts == 1
    assert "refused the address nobody@refused.example" in delivery.error
    assert delivery.next_attempt_at is None
    assert mail_server.messages == []


def test_it_refuses_an_email_notification_while_no_mail_server_is_configured(shop, alice):
    with pytest.raises(InvalidInput, match="SLIPWAY_SMTP_URL and SLIPWAY_EMAIL_FROM") as refused:
        notification_create(project=shop, actor=alice, kind="email", address="ops@shop.example")
    assert refused.value.field == "kind"
    assert not Notification.objects.exists()


def test_it_names_only_the_setting_that_is_missing(settings, shop, alice):
    settings.SMTP_URL = "smtp://mail.example.com:25"
    with pytest.raises(InvalidInput, match="must set SLIPWAY_EMAIL_FROM ") as refused:
        notification_create(project=shop, actor=alice, kind="email", address="ops@shop.example")
    assert "SLIPWAY_SMTP_URL" not in str(refused.value)


def test_it_fails_a_recorded_email_once_the_mail_server_setting_is_gone(
    mail_server, settings, shop, web1, make_deployment, alice
):
    notification_create(project=shop, actor=alice, kind="email", address="ops@shop.example")
    [delivery] = deployment_event(make_deployment(shop, [web1]), "succeeded")
    settings.SMTP_URL = ""
    delivery = send(delivery)

    assert delivery.status == DeliveryStatus.FAILED
    assert "SLIPWAY_SMTP_URL" in delivery.error
    assert mail_server.messages == []


def test_it_refuses_an_address_that_is_not_one(mail_server, shop, alice):
    with pytest.raises(InvalidInput) as refused:
        notification_create(project=shop, actor=alice, kind="email", address="ops at shop")
    assert refused.value.field == "address"


def test_it_lets_an_email_notification_be_turned_off_once_the_mail_server_is_gone(
    mail_server, settings, shop, alice
):
    notification = notification_create(
        project=shop, actor=alice, kind="email", address="ops@shop.example"
    )
    settings.SMTP_URL = ""
    notification_update(notification=notification, actor=alice, enabled=False)
    with pytest.raises(InvalidInput, match="SLIPWAY_SMTP_URL"):
        notification_update(notification=notification, actor=alice, address="dev@shop.example")
