"""Creating, changing and deleting notifications: one checked path for the API and the
dashboard, recorded in the audit log without a URL or a secret."""

from __future__ import annotations

import json

import pytest

from builds.engine.errors import InvalidInput
from builds.notifications import (
    notification_clean,
    notification_create,
    notification_delete,
    notification_update,
)
from projects.models import AuditEvent, Notification

pytestmark = pytest.mark.django_db

SLACK = "https://1.1.1.1/services/T0001/B0002/slackTOKEN"
SECRET = "whsec-3f9a8b7c6d5e4f3a2b1c"


def audit_text(project) -> str:
    return json.dumps(
        [[e.action, e.target, e.detail] for e in AuditEvent.objects.filter(project=project)]
    )


def test_it_records_who_added_changed_and_removed_a_notification(shop, web1, alice):
    notification = notification_create(
        project=shop, actor=alice, kind="webhook", url=SLACK, secret=SECRET, servers=[web1]
    )
    assert list(notification.servers.all()) == [web1]
    notification_update(notification=notification, actor=alice, secret=SECRET + "-rotated")
    notification_update(notification=notification, actor=alice, events=["failed"], servers=[])
    notification_delete(notification=notification, actor=alice)

    events = list(AuditEvent.objects.filter(project=shop).order_by("id"))
    assert [e.action for e in events][-4:] == [
        "notification.created",
        "notification.updated",
        "notification.updated",
        "notification.deleted",
    ]
    assert events[-4].target == "notification Webhook (signed JSON) to https://1.1.1.1"
    assert events[-4].actor == alice
    assert events[-3].detail["fields"] == ["secret"]
    assert events[-2].detail["fields"] == ["events", "servers"]
    text = audit_text(shop)
    assert "slackTOKEN" not in text and SECRET not in text
    assert not Notification.objects.exists()


def test_it_keeps_the_url_and_the_secret_encrypted_at_rest(shop, alice):
    from django.db import connection

    notification_create(project=shop, actor=alice, kind="webhook", url=SLACK, secret=SECRET)
    with connection.cursor() as cursor:
        cursor.execute("SELECT url, secret FROM projects_notification")
        [(url, secret)] = cursor.fetchall()
    assert "slackTOKEN" not in url and SECRET not in secret


def test_it_records_nothing_when_nothing_changed(shop, alice):
    notification = notification_create(project=shop, actor=alice, kind="slack", url=SLACK)
    before = AuditEvent.objects.count()
    notification_update(notification=notification, actor=alice, url=SLACK, enabled=True)
    assert AuditEvent.objects.count() == before


def test_it_refuses_a_server_of_another_project(shop, alice, make_server):
    from projects.services import project_create

    blog = project_create(
        owner=alice, name="Blog", repository_url="https://git.example.com/acme/blog.git"
    )
    with pytest.raises(InvalidInput) as refused:
        notification_create(
            project=shop, actor=alice, kind="slack", url=SLACK, servers=[make_server(blog, "b1")]
        )
    assert refused.value.field == "servers"


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({}, "kind", "is required"),
        ({"kind": "pager"}, "kind", "must be one of email, slack, discord, teams, webhook"),
        ({"kind": "slack"}, "url", "is required for slack"),
        ({"kind": "slack", "url": SLACK, "colour": "red"}, "colour", "cannot be set"),
        ({"kind": "slack", "url": SLACK, "events": ["deployed"]}, "events", "'deployed'"),
        ({"kind": "slack", "url": SLACK, "events": []}, "events", "at least one"),
        ({"kind": "slack", "url": SLACK, "events": "failed"}, "events", "must be a list"),
        ({"kind": "slack", "url": SLACK, "enabled": "yes"}, "enabled", "true or false"),
        ({"kind": "slack", "url": SLACK, "secret": SECRET}, "secret", "only webhook"),
        ({"kind": "slack", "url": SLACK, "address": "a@b.example"}, "address", "give url"),
        ({"kind": "webhook", "url": SLACK}, "secret", "is required for webhook"),
        ({"kind": "webhook", "url": SLACK, "secret": "short"}, "secret", "at least 16"),
    ],
)
def test_it_names_the_field_it_refuses(fields, field, message):
    with pytest.raises(InvalidInput, match=message) as refused:
        notification_clean(fields)
    assert refused.value.field == field


def test_it_cleans_events_into_the_vocabularys_order():
    cleaned = notification_clean(
        {"kind": "discord", "url": SLACK, "events": ["failed", "started", "failed"]}
    )
    assert cleaned["events"] == ["started", "failed"]


def test_it_keeps_a_webhooks_secret_when_an_update_leaves_it_out(shop, alice):
    notification = notification_create(
        project=shop, actor=alice, kind="webhook", url=SLACK, secret=SECRET
    )
    notification_update(notification=notification, actor=alice, events=["failed"])
    notification.refresh_from_db()
    assert notification.secret == SECRET


def test_it_clears_what_the_new_kind_does_not_use(shop, alice):
    notification = notification_create(
        project=shop, actor=alice, kind="webhook", url=SLACK, secret=SECRET
    )
    notification_update(notification=notification, actor=alice, kind="slack")
    notification.refresh_from_db()
    assert notification.kind == "slack" and notification.secret == ""
    assert notification.url == SLACK
