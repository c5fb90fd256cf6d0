"""The site admins' Pending work page: every queued and running deployment, and why it waits."""

from __future__ import annotations

import pytest
from django.utils import timezone

from builds import services
from builds.tasks import process_webhooks
from builds.webhook_services import webhooks_key
from deployer import health, outbox
from deployer.models import OutboxMessage
from servers.models import Server
from tests.dashboard.support import TRUSTED
from tests.webhooks import payloads

pytestmark = pytest.mark.django_db


@pytest.fixture
def work(project, server):
    """#1 running on web1 (its message taken by w1), #2 queued behind it on web1, #3 queued
    on web2 with its start message not sent (the broker refused it)."""
    web2 = Server.objects.create(
        project=project,
        name="web2",
        hostname="web2.example.com",
        username="deploy",
        deploy_path="/srv/shop",
        host_key_fingerprint=TRUSTED,
    )
    running = services.deployment_create(project=project, servers=[server])
    message = outbox.unconsumed(services.dispatch_key(running.pk))
    assert message is not None
    outbox.consumed(message.task_id, worker="w1@host")
    services.deployment_claim(running.pk, task_id=message.task_id, worker="w1@host")
    behind = services.deployment_create(project=project, servers=[server])
    unsent = services.deployment_create(project=project, servers=[web2])
    OutboxMessage.objects.filter(key=services.dispatch_key(unsent.pk)).update(
        attempts=3, last_error="ConnectionError: Error 111 connecting"
    )
    return running, behind, unsent


def test_it_shows_a_site_admin_each_deployment_and_why_it_waits(site_admin, alice_client, work):
    running, behind, unsent = work
    page = alice_client.get("/pending/")
    assert page.status_code == 200
    html = page.content.decode()
    assert f"Shop #{running.pk}" in html and "w1@host" in html
    assert f"web1 is busy with deployment #{running.pk}: it starts when that one finishes" in html
    assert "ConnectionError: Error 111 connecting" in html

    rows = {
        row["id"]: row for row in alice_client.get("/pending/?format=json").json()["deployments"]
    }
    assert list(rows) == [running.pk, behind.pk, unsent.pk]  # running first, then oldest
    assert rows[running.pk]["message"]["state"] == "consumed"
    assert rows[running.pk]["message"]["consumed_by"] == "w1@host"
    assert rows[running.pk]["worker"] == "w1@host"
    assert rows[running.pk]["heartbeat_stale"] is False
    assert rows[running.pk]["why"].startswith("Running on w1@host")
    assert rows[behind.pk]["why"].startswith(f"web1 is busy with deployment #{running.pk}")
    assert rows[unsent.pk]["message"]["state"] == "unsent"
    assert rows[unsent.pk]["message"]["attempts"] == 3
    assert rows[unsent.pk]["why"].startswith("Its start message is not sent yet")
    assert rows[unsent.pk]["servers"] == ["web2"]


def test_it_says_when_no_worker_consumes_the_queue_of_a_sent_message(
    site_admin, alice_client, work
):
    _, _, unsent = work
    OutboxMessage.objects.filter(key=services.dispatch_key(unsent.pk)).update(
        sent_at=timezone.now(), last_error=""
    )
    health.cluster_state(fresh=True)  # no worker runs in this test, whatever a cache says
    rows = {
        row["id"]: row for row in alice_client.get("/pending/?format=json").json()["deployments"]
    }
    assert rows[unsent.pk]["message"]["state"] == "sent"
    assert rows[unsent.pk]["why"].startswith("Sent; no live worker consumes the deployments queue")


def test_it_links_the_page_for_site_admins_only(site_admin, alice_client, bob_client):
    assert 'href="/pending/"' in alice_client.get("/").content.decode()
    assert 'href="/pending/"' not in bob_client.get("/").content.decode()


def test_it_refuses_everyone_else(work, alice_client, bob_client, charlie_client, client):
    # Alice is the project's admin here, not a site admin.
    for someone in (alice_client, bob_client, charlie_client):
        assert someone.get("/pending/").status_code == 403
        assert someone.get("/pending/?format=json").status_code == 403
    assert client.get("/pending/").status_code == 302  # to the sign-in page


def test_it_lists_the_webhook_deliveries_no_worker_has_processed_yet(
    site_admin, alice_client, project, server
):
    body = payloads.encode(payloads.github_push(after=payloads.fake_sha("waiting")))
    for _ in range(2):
        delivered = alice_client.post(
            project.webhook_path,
            data=body,
            content_type="application/json",
            **payloads.github_headers(body, project.webhook_secret),
        )
        body = payloads.encode(payloads.github_push(after=payloads.fake_sha("waiting too")))
        assert delivered.status_code == 202
    OutboxMessage.objects.filter(key=webhooks_key(project.pk)).update(
        attempts=2, last_error="ConnectionError: Error 111 connecting"
    )

    html = alice_client.get("/pending/").content.decode()
    (row,) = alice_client.get("/pending/?format=json").json()["webhook_deliveries"]

    assert "Webhook deliveries waiting" in html and "2 deliveries" in html
    assert (row["project"], row["waiting"], row["queue"]) == (project.slug, 2, "webhooks")
    assert row["message"]["state"] == "unsent"
    assert row["why"].startswith("Its processing message is not sent yet")
    assert "ConnectionError: Error 111 connecting" in row["why"]

    process_webhooks(project.pk)
    assert alice_client.get("/pending/?format=json").json()["webhook_deliveries"] == []
    assert "No webhook delivery is waiting" in alice_client.get("/pending/").content.decode()
