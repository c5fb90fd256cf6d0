"""A project's notifications from the dashboard: admins add, change and remove them through
builds.notifications; a URL the outbound guard refuses is shown beside `url`; the URL and the
secret go in but never come back out, on any page; each notification lists its last
deliveries. Other members read; outsiders find nothing."""

from __future__ import annotations

import pytest

from builds.notifications import notification_create
from projects.models import AuditEvent, DeliveryStatus, Notification, NotificationDelivery
from tests.dashboard.support import field_errors, forms_posting_to

pytestmark = pytest.mark.django_db

TOKEN = "T0001/B0002/slackTOKENxyz"
SLACK_URL = f"https://1.1.1.1/services/{TOKEN}"
SECRET = "whsec-3f9a8b7c6d5e4f3a2b1c"
SLACK = {
    "kind": "slack",
    "url": SLACK_URL,
    "events": ["succeeded", "failed"],
    "enabled": "on",
}


@pytest.fixture
def webhook(project, alice, server):
    return notification_create(
        project=project,
        actor=alice,
        kind="webhook",
        url=f"https://1.1.1.1/hooks/{TOKEN}",
        secret=SECRET,
        events=["failed", "rolled_back"],
        servers=[server],
    )


@pytest.fixture
def deliveries(webhook, history):
    NotificationDelivery.objects.create(
        notification=webhook,
        deployment=history[0],
        event="failed",
        status=DeliveryStatus.FAILED,
        attempts=5,
        status_code=502,
        error="https://1.1.1.1 answered HTTP 502",
    )
    NotificationDelivery.objects.create(
        notification=webhook,
        deployment=history[1],
        event="rolled_back",
        status=DeliveryStatus.SENT,
        attempts=1,
        status_code=200,
    )


def _list(slug: str) -> str:
    return f"/projects/{slug}/settings/notifications/"


def _every_page(client, project, notification) -> str:
    slug = project.slug
    pages = [
        _list(slug),
        f"{_list(slug)}{notification.pk}/",
        f"/projects/{slug}/audit/",
        f"/projects/{slug}/",
    ]
    return "\n".join(client.get(page).content.decode() for page in pages)


def test_an_admin_adds_a_slack_notification(alice_client, alice, project):
    response = alice_client.post(_list(project.slug), SLACK)
    assert response.status_code == 302
    notification = Notification.objects.get()
    assert (notification.kind, notification.url, notification.events) == (
        "slack",
        SLACK_URL,
        ["succeeded", "failed"],
    )
    assert AuditEvent.objects.get(action="notification.created").actor == alice
    page = alice_client.get(_list(project.slug)).content.decode()
    assert "Slack" in page and "https://1.1.1.1" in page and "succeeded, failed" in page
    assert TOKEN not in page


def test_a_refused_url_shows_beside_url_and_is_not_sent_back(alice_client, project):
    refused = "http://169.254.169.254/latest/meta-data/secret-path"
    response = alice_client.post(_list(project.slug), {**SLACK, "url": refused})
    assert response.status_code == 200
    page = response.content.decode()
    errors = field_errors(page, "url")
    assert errors and "169.254.169.254" in errors[0], errors
    assert "secret-path" not in page
    assert not Notification.objects.exists()


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"url": ""}, "url", "URL is required for slack notifications"),
        ({"kind": "webhook", "secret": "short"}, "secret", "at least 16 characters"),
        ({"events": []}, "events", "Choose at least one event"),
    ],
)
def test_a_notifications_error_shows_beside_its_field(
    alice_client, project, changes, field, message
):
    response = alice_client.post(_list(project.slug), {**SLACK, **changes})
    page = response.content.decode()
    errors = field_errors(page, field)
    assert errors and message in errors[0], errors
    assert TOKEN not in page and "short" not in page.split('id="field-secret"')[1][:2000]
    assert not Notification.objects.exists()


def test_the_url_and_the_secret_never_come_back_out(alice_client, bob_client, project, webhook):
    for client in (alice_client, bob_client):
        text = _every_page(client, project, webhook)
        assert TOKEN not in text and SECRET not in text
    page = alice_client.get(f"{_list(project.slug)}{webhook.pk}/").content.decode()
    assert "Stored and hidden (goes to https://1.1.1.1). Blank keeps it." in page
    assert 'type="password" name="url"' in page and 'type="password" name="secret"' in page


def test_blank_url_and_secret_keep_the_stored_ones(alice_client, project, webhook, server):
    path = f"{_list(project.slug)}{webhook.pk}/"
    form = {"kind": "webhook", "url": "", "secret": "", "events": ["succeeded"]}
    assert alice_client.post(path, form).status_code == 302
    webhook.refresh_from_db()
    assert webhook.url == f"https://1.1.1.1/hooks/{TOKEN}" and webhook.secret == SECRET
    assert webhook.events == ["succeeded"] and not webhook.enabled
    assert list(webhook.servers.all()) == []
    event = AuditEvent.objects.filter(action="notification.updated").get()
    assert event.detail["fields"] == ["enabled", "events", "servers"]

    form.update(secret=SECRET + "-rotated", enabled="on")
    text = alice_client.post(path, form, follow=True).content.decode()
    webhook.refresh_from_db()
    assert webhook.secret == SECRET + "-rotated" and webhook.enabled
    assert SECRET not in text


def test_a_notification_lists_its_last_deliveries(alice_client, project, webhook, deliveries):
    listing = alice_client.get(_list(project.slug)).content.decode()
    assert "status-sent" in listing  # the newest one, in the list
    page = alice_client.get(f"{_list(project.slug)}{webhook.pk}/").content.decode()
    table = page.split('id="deliveries"')[1]
    for text in ("Failed", "Rolled back", "HTTP 502", "HTTP 200", "answered HTTP 502"):
        assert text in table, text
    assert '<td data-label="Attempts" class="num">5</td>' in table
    assert table.index("Rolled back") < table.index("HTTP 502")  # newest first


def test_a_viewer_reads_the_notifications_but_changes_nothing(bob_client, project, webhook):
    listing = bob_client.get(_list(project.slug)).content.decode()
    assert "Webhook (signed JSON)" in listing
    assert forms_posting_to(listing) == ["/logout/"]
    detail = f"{_list(project.slug)}{webhook.pk}/"
    page = bob_client.get(detail).content.decode()
    assert forms_posting_to(page) == ["/logout/"]
    assert 'name="url"' not in page and 'name="secret"' not in page

    assert bob_client.post(_list(project.slug), SLACK).status_code == 403
    assert bob_client.post(detail, {**SLACK, "enabled": ""}).status_code == 403
    assert bob_client.post(f"{detail}delete/").status_code == 403
    webhook.refresh_from_db()
    assert Notification.objects.count() == 1 and webhook.enabled


def test_an_admin_removes_a_notification(alice_client, project, webhook):
    response = alice_client.post(f"{_list(project.slug)}{webhook.pk}/delete/")
    assert response.status_code == 302 and not Notification.objects.exists()
    audit = alice_client.get(f"/projects/{project.slug}/audit/").content.decode()
    assert "notification.deleted" in audit and TOKEN not in audit


@pytest.mark.parametrize(("method", "suffix"), [("get", ""), ("post", ""), ("post", "delete/")])
def test_charlie_finds_no_notification(charlie_client, project, webhook, method, suffix):
    for path in (_list(project.slug), f"{_list(project.slug)}{webhook.pk}/{suffix}"):
        assert getattr(charlie_client, method)(path, SLACK).status_code == 404
    assert Notification.objects.count() == 1
