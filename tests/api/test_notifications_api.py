"""A project's notifications through the API: admins configure them, members see where they
go and what was delivered, and nobody ever reads back a URL's token or a webhook secret."""

from __future__ import annotations

import json

import pytest
from django.conf import settings as django_settings
from django.utils import timezone

from builds.models import Deployment, Status
from projects.models import AuditEvent, DeliveryStatus, Notification, NotificationDelivery
from servers.models import Server
from tests.api.conftest import make_deployer

pytestmark = pytest.mark.django_db

# A public address literal: checked at save time without a DNS lookup, never connected to.
SLACK_TOKEN = "T0001/B0002/slackTOKENxyz"
SLACK = f"https://1.1.1.1/services/{SLACK_TOKEN}"
WEBHOOK = "https://1.1.1.1:8443/hooks/slipway?key=hookTOKENabc"
SECRET = "whsec-3f9a8b7c6d5e4f3a2b1c"
SECRETS = ("slackTOKEN", "hookTOKEN", SECRET)


@pytest.fixture(autouse=True)
def private_targets_refused(settings):
    # Whatever the environment running the tests says: the default, refusing private targets.
    settings.ALLOW_PRIVATE_NOTIFICATION_TARGETS = False
    settings.SMTP_URL = ""
    settings.EMAIL_FROM = ""


def notifications_url(project) -> str:
    return f"/api/v1/projects/{project.slug}/notifications/"


def assert_no_secret(response) -> None:
    text = response.content.decode()
    for secret in SECRETS:
        assert secret not in text, f"{secret!r} in {text}"


@pytest.fixture
def web1(project):
    return Server.objects.create(
        project=project, name="web1", hostname="web1.example", username="u", deploy_path="/srv"
    )


def test_an_admin_adds_a_slack_notification_and_sees_only_where_it_goes(
    alice_api, alice, project, web1
):
    created = alice_api.post(
        notifications_url(project),
        {"kind": "slack", "url": SLACK, "events": ["failed", "started"], "servers": [web1.pk]},
        format="json",
    )
    assert created.status_code == 201, created.content
    assert_no_secret(created)
    body = created.json()
    assert "url" not in body and "secret" not in body
    assert body["kind"] == "slack" and body["destination"] == "https://1.1.1.1"
    # Kept in the vocabulary's order, whatever order they came in.
    assert body["events"] == ["started", "failed"]
    assert body["servers"] == [web1.pk] and body["enabled"] is True
    assert body["has_secret"] is False
    assert body["api_url"] == (
        django_settings.BASE_URL + f"{notifications_url(project)}{body['id']}/"
    )
    assert body["html_url"] == django_settings.BASE_URL + f"/projects/{project.slug}/"
    assert body["deliveries_url"] == body["api_url"] + "deliveries/"
    notification = Notification.objects.get()
    assert notification.url == SLACK

    listed = alice_api.get(notifications_url(project))
    assert listed.json() == [body]
    assert_no_secret(listed)
    assert AuditEvent.objects.filter(
        project=project, actor=alice, action="notification.created"
    ).exists()


def test_a_webhooks_secret_and_url_are_write_only(alice_api, bob_api, alice, project):
    created = alice_api.post(
        notifications_url(project),
        {"kind": "webhook", "url": WEBHOOK, "secret": SECRET},
        format="json",
    )
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["destination"] == "https://1.1.1.1:8443" and body["has_secret"] is True
    assert body["events"] == ["started", "succeeded", "failed", "rolled_back", "drift"]
    rotated = alice_api.patch(
        body["api_url"], {"secret": SECRET + "-rotated", "enabled": False}, format="json"
    )
    assert rotated.status_code == 200, rotated.content
    assert rotated.json()["enabled"] is False
    notification = Notification.objects.get()
    assert notification.secret == SECRET + "-rotated" and notification.url == WEBHOOK
    responses = [
        created,
        rotated,
        alice_api.get(body["api_url"]),
        alice_api.get(notifications_url(project)),
        bob_api.get(body["api_url"]),
        bob_api.get(notifications_url(project)),
        alice_api.get("/api/schema/?format=json"),
    ]
    for response in responses:
        assert response.status_code == 200 or response is created
        assert_no_secret(response)
    audit = json.dumps(
        [[e.action, e.target, e.detail] for e in AuditEvent.objects.filter(project=project)]
    )
    assert all(secret not in audit for secret in SECRETS)


def test_an_admin_changes_where_it_goes_and_removes_it(alice_api, alice, project):
    created = alice_api.post(
        notifications_url(project), {"kind": "slack", "url": SLACK}, format="json"
    ).json()
    moved = alice_api.patch(
        created["api_url"],
        {"kind": "discord", "url": "https://8.8.8.8/api/webhooks/1/discordTOKEN"},
        format="json",
    )
    assert moved.status_code == 200, moved.content
    assert moved.json()["kind"] == "discord"
    assert moved.json()["destination"] == "https://8.8.8.8"
    assert "discordTOKEN" not in moved.content.decode()
    assert alice_api.delete(created["api_url"]).status_code == 204
    assert alice_api.get(created["api_url"]).status_code == 404
    actions = list(
        AuditEvent.objects.filter(project=project, action__startswith="notification.")
        .order_by("id")
        .values_list("action", flat=True)
    )
    assert actions == ["notification.created", "notification.updated", "notification.deleted"]


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1/", "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/"]
)
def test_it_refuses_a_url_only_the_workers_could_reach(alice_api, project, url):
    response = alice_api.post(
        notifications_url(project), {"kind": "slack", "url": url}, format="json"
    )
    assert response.status_code == 400, response.content
    assert list(response.json()) == ["url"]
    assert not Notification.objects.exists()


def test_the_metadata_address_stays_refused_even_where_private_targets_are_allowed(
    alice_api, project, settings
):
    settings.ALLOW_PRIVATE_NOTIFICATION_TARGETS = True
    allowed = alice_api.post(
        notifications_url(project), {"kind": "slack", "url": "http://127.0.0.1/"}, format="json"
    )
    assert allowed.status_code == 201, allowed.content
    refused = alice_api.post(
        notifications_url(project),
        {"kind": "slack", "url": "http://169.254.169.254/"},
        format="json",
    )
    assert refused.status_code == 400 and list(refused.json()) == ["url"]


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"kind": "pager", "url": SLACK}, "kind"),
        ({"url": SLACK}, "kind"),
        ({"kind": "slack"}, "url"),
        ({"kind": "slack", "url": "ftp://1.1.1.1/x"}, "url"),
        ({"kind": "slack", "url": SLACK, "events": []}, "events"),
        ({"kind": "slack", "url": SLACK, "events": ["deployed"]}, "events"),
        ({"kind": "slack", "url": SLACK, "secret": SECRET}, "secret"),
        ({"kind": "slack", "url": SLACK, "address": "ops@example.com"}, "address"),
        ({"kind": "webhook", "url": WEBHOOK}, "secret"),
        ({"kind": "webhook", "url": WEBHOOK, "secret": "too-short"}, "secret"),
        # No mail server is configured here.
        ({"kind": "email", "address": "ops@example.com"}, "kind"),
        ({"kind": "slack", "url": SLACK, "servers": [999999]}, "servers"),
    ],
)
def test_it_names_the_field_it_refuses(alice_api, project, data, field):
    response = alice_api.post(notifications_url(project), data, format="json")
    assert response.status_code == 400, response.content
    assert list(response.json()) == [field]
    assert_no_secret(response)
    assert not Notification.objects.exists()


def test_an_email_notification_shows_its_address(alice_api, project, settings):
    settings.SMTP_URL = "smtp://127.0.0.1:2525"
    settings.EMAIL_FROM = "Slipway <deploys@slipway.test>"
    response = alice_api.post(
        notifications_url(project), {"kind": "email", "address": "ops@example.com"}, format="json"
    )
    assert response.status_code == 201, response.content
    assert response.json()["address"] == "ops@example.com"
    assert response.json()["destination"] == "ops@example.com"
    refused = alice_api.post(
        notifications_url(project), {"kind": "email", "address": "not an address"}, format="json"
    )
    assert refused.status_code == 400 and list(refused.json()) == ["address"]


def test_members_see_where_notifications_go_but_only_admins_change_them(
    alice_api, bob_api, bob, project
):
    created = alice_api.post(
        notifications_url(project), {"kind": "slack", "url": SLACK}, format="json"
    ).json()
    seen = bob_api.get(created["api_url"])
    assert seen.status_code == 200
    assert {seen.json()[f] for f in ("kind", "destination")} == {"slack", "https://1.1.1.1"}
    assert_no_secret(seen)
    for role in ("viewer", "deployer"):
        if role == "deployer":
            make_deployer(project, bob)
        data = {"kind": "slack", "url": SLACK}
        assert bob_api.post(notifications_url(project), data, format="json").status_code == 403
        denied = bob_api.patch(created["api_url"], {"enabled": False}, format="json")
        assert denied.status_code == 403
        assert bob_api.delete(created["api_url"]).status_code == 403
    assert Notification.objects.get().enabled is True


def test_someone_outside_the_project_finds_no_notification(alice_api, charlie_api, project):
    created = alice_api.post(
        notifications_url(project), {"kind": "slack", "url": SLACK}, format="json"
    ).json()
    for response in (
        charlie_api.get(notifications_url(project)),
        charlie_api.post(notifications_url(project), {"kind": "slack", "url": SLACK}),
        charlie_api.get(created["api_url"]),
        charlie_api.patch(created["api_url"], {"enabled": False}, format="json"),
        charlie_api.delete(created["api_url"]),
        charlie_api.get(created["deliveries_url"]),
    ):
        assert response.status_code == 404
        assert_no_secret(response)
    assert Notification.objects.get().enabled is True


# --------------------------------------------------------------------------- deliveries


def test_members_read_the_recent_deliveries(alice_api, bob_api, project):
    created = alice_api.post(
        notifications_url(project), {"kind": "slack", "url": SLACK}, format="json"
    ).json()
    notification = Notification.objects.get()
    deployment = Deployment.objects.create(project=project, status=Status.FAILED)
    sent = NotificationDelivery.objects.create(
        notification=notification,
        deployment=deployment,
        event="started",
        payload={"event": "started"},
        status=DeliveryStatus.SENT,
        attempts=1,
        status_code=200,
        sent_at=timezone.now(),
        next_attempt_at=None,
    )
    failed = NotificationDelivery.objects.create(
        notification=notification,
        deployment=deployment,
        event="failed",
        payload={"event": "failed"},
        status=DeliveryStatus.FAILED,
        attempts=5,
        status_code=404,
        error="https://1.1.1.1 answered HTTP 404",
        next_attempt_at=None,
    )
    response = bob_api.get(created["deliveries_url"])
    assert response.status_code == 200, response.content
    assert_no_secret(response)
    newest, oldest = response.json()
    assert (newest["id"], newest["event"], newest["status"]) == (failed.pk, "failed", "failed")
    assert (newest["attempts"], newest["status_code"]) == (5, 404)
    assert newest["error"] == "https://1.1.1.1 answered HTTP 404"
    assert newest["deployment"] == deployment.pk and newest["sent_at"] is None
    assert newest["deployment_url"] == (
        django_settings.BASE_URL + f"/api/v1/deployments/{deployment.pk}/"
    )
    assert newest["html_url"] == (
        django_settings.BASE_URL + f"/projects/{project.slug}/deployments/{deployment.pk}/"
    )
    assert newest["uuid"] == str(failed.uuid)
    assert "payload" not in newest
    assert (oldest["id"], oldest["status"], oldest["status_code"]) == (sent.pk, "sent", 200)
    assert oldest["sent_at"] and oldest["created_at"]


def test_another_projects_deliveries_are_not_found(
    alice_api, charlie_api, charlie, project, project_factory, repo
):
    theirs = project_factory(repo, owner=charlie, name="Charlie's")
    created = charlie_api.post(
        notifications_url(theirs), {"kind": "slack", "url": SLACK}, format="json"
    ).json()
    assert charlie_api.get(created["deliveries_url"]).status_code == 200
    stolen = f"{notifications_url(project)}{created['id']}/deliveries/"
    assert alice_api.get(stolen).status_code == 404
    assert alice_api.get(f"{notifications_url(project)}{created['id']}/").status_code == 404
