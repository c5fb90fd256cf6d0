"""A deployment event records one delivery per notification that wants it: by event, by
server, enabled, once per event."""

from __future__ import annotations

import pytest

from builds.models import Kind
from builds.notifications import deployment_event, notification_create, notification_update
from projects.models import NotificationDelivery

pytestmark = pytest.mark.django_db

SECRET = "whsec-3f9a8b7c6d5e4f3a2b1c"


@pytest.fixture
def hook(allow_private, receiver, shop, alice):
    def make(**fields):
        return notification_create(
            project=shop, actor=alice, kind="webhook", url=receiver.url(), secret=SECRET, **fields
        )

    return make


def test_it_fires_on_every_event_by_default(hook, shop, web1, make_deployment):
    notification = hook()
    assert notification.events == ["started", "succeeded", "failed", "rolled_back", "drift"]
    deployment = make_deployment(shop, [web1])
    for event in ("started", "succeeded", "failed", "rolled_back"):
        assert len(deployment_event(deployment, event)) == 1
    assert NotificationDelivery.objects.count() == 4


def test_it_fires_only_on_the_events_chosen(hook, shop, web1, make_deployment):
    failures = hook(events=["failed", "rolled_back"])
    deployment = make_deployment(shop, [web1])

    assert deployment_event(deployment, "started") == []
    assert deployment_event(deployment, "succeeded") == []
    [delivery] = deployment_event(deployment, "failed")
    assert delivery.notification == failures and delivery.event == "failed"


def test_it_fires_only_for_deployments_touching_one_of_its_servers(
    hook, shop, web1, web2, make_server, make_deployment
):
    web3 = make_server(shop, "web3")
    on_web1 = hook(servers=[web1])
    on_web2_or_web3 = hook(servers=[web2, web3])
    everywhere = hook()

    fired = deployment_event(make_deployment(shop, [web1]), "succeeded")
    assert {d.notification for d in fired} == {on_web1, everywhere}

    fired = deployment_event(make_deployment(shop, [web3, web1]), "succeeded")
    assert {d.notification for d in fired} == {on_web1, on_web2_or_web3, everywhere}


def test_it_records_an_event_reported_twice_once(hook, shop, web1, make_deployment):
    hook()
    deployment = make_deployment(shop, [web1])
    assert len(deployment_event(deployment, "failed")) == 1
    assert deployment_event(deployment, "failed") == []
    assert NotificationDelivery.objects.count() == 1


def test_it_skips_disabled_notifications(hook, shop, web1, make_deployment, alice):
    notification = hook()
    notification_update(notification=notification, actor=alice, enabled=False)
    assert deployment_event(make_deployment(shop, [web1]), "succeeded") == []


def test_it_tells_nobody_about_a_preview(hook, shop, web1, make_deployment):
    hook()
    preview = make_deployment(shop, [web1], kind=Kind.PREVIEW, target_status="skipped")
    assert deployment_event(preview, "succeeded") == []


def test_it_keeps_to_the_deployments_own_project(
    hook, shop, web1, make_deployment, make_server, alice
):
    from projects.services import project_create

    hook()
    other = project_create(
        owner=alice, name="Blog", repository_url="https://git.example.com/acme/blog.git"
    )
    assert deployment_event(make_deployment(other, [make_server(other, "blog1")]), "failed") == []


def test_it_queues_the_sends_only_when_the_transaction_commits(
    hook, shop, web1, make_deployment, django_capture_on_commit_callbacks
):
    hook()
    hook(events=["succeeded"])
    # A task message sent before the commit could overtake the rows it names.
    with django_capture_on_commit_callbacks() as callbacks:
        deliveries = deployment_event(make_deployment(shop, [web1]), "succeeded")
    assert len(deliveries) == 2
    assert len(callbacks) == 1
