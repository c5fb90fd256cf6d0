"""Slack, Discord and Microsoft Teams get messages in their own incoming-webhook shapes."""

from __future__ import annotations

import json

import pytest

from builds.models import Kind, Status
from builds.notifications import deployment_event, notification_create
from builds.tasks import send_notification_delivery
from deployer import links
from projects.models import DeliveryStatus

pytestmark = pytest.mark.django_db


def deliver(receiver, shop, alice, kind, deployment, event):
    notification_create(project=shop, actor=alice, kind=kind, url=receiver.url())
    [delivery] = deployment_event(deployment, event)
    send_notification_delivery.apply(args=(delivery.pk,), throw=True)
    delivery.refresh_from_db()
    assert delivery.status == DeliveryStatus.SENT, delivery.error
    [request] = receiver.requests
    assert request.headers["content-type"] == "application/json"
    # Only the generic webhook is signed.
    assert "x-slipway-signature" not in request.headers
    return json.loads(request.body)


def test_it_posts_slack_text_with_a_link_to_the_deployment(
    allow_private, receiver, shop, web1, make_deployment, alice
):
    deployment = make_deployment(
        shop, [web1], status=Status.FAILED, target_status="failed", error="npm ci exited with 1"
    )
    body = deliver(receiver, shop, alice, "slack", deployment, "failed")

    page = links.deployment_page(shop.slug, deployment.pk)
    assert body["text"].startswith(f"<{page}|Shop: deployment #{deployment.pk} failed>")
    assert "*Error:* npm ci exited with 1" in body["text"]
    assert "web1: failed" in body["text"]
    assert body["blocks"][0]["text"] == {"type": "mrkdwn", "text": body["text"]}


def test_it_escapes_what_slack_would_read_as_markup(
    allow_private, receiver, shop, web1, make_deployment, alice
):
    deployment = make_deployment(
        shop,
        [web1],
        status=Status.FAILED,
        target_status="failed",
        error="<!channel> & <https://evil.example|click>",
    )
    body = deliver(receiver, shop, alice, "slack", deployment, "failed")
    assert "&lt;!channel&gt; &amp; &lt;https://evil.example|click&gt;" in body["text"]
    assert "<!channel>" not in body["text"]


def test_it_posts_discord_content_that_pings_nobody(
    allow_private, receiver, shop, web1, make_deployment, alice
):
    deployment = make_deployment(shop, [web1], error="")
    shop.name = "Shop @everyone"
    shop.save()
    body = deliver(receiver, shop, alice, "discord", deployment, "succeeded")

    page = links.deployment_page(shop.slug, deployment.pk)
    assert body["content"].startswith(
        f"**[Shop @everyone: deployment #{deployment.pk} succeeded]({page})**"
    )
    assert "**Revision:** main @ 1111111 → 2222222" in body["content"]
    assert body["allowed_mentions"] == {"parse": []}
    assert len(body["content"]) <= 2000


def test_it_posts_a_teams_adaptive_card(
    allow_private, receiver, shop, web1, make_deployment, alice
):
    rollback = make_deployment(shop, [web1], kind=Kind.ROLLBACK)
    body = deliver(receiver, shop, alice, "teams", rollback, "rolled_back")

    assert body["type"] == "message"
    [attachment] = body["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard"
    assert card["body"][0]["text"] == f"Shop: rollback #{rollback.pk} finished"
    facts = {fact["title"]: fact["value"] for fact in card["body"][1]["facts"]}
    assert facts["Servers"] == "web1: succeeded"
    assert facts["By"] == "alice (manual)"
    assert card["actions"][0]["url"] == links.deployment_page(shop.slug, rollback.pk)
