"""A delivery is recorded and answered at once; a worker processes it after the answer, once,
in the order the project's deliveries were received."""

from __future__ import annotations

import pytest
from django.utils import timezone

from builds import webhook_services
from builds.models import Deployment, Status, WebhookDelivery, WebhookOutcome
from builds.tasks import process_webhook_delivery, process_webhooks
from deployer.models import OutboxMessage
from tests.webhooks import payloads

pytestmark = pytest.mark.django_db


def _send(client, project, payload, **options):
    """POST a signed GitHub delivery without processing it (the raw answer)."""
    body = payloads.encode(payload)
    return client.post(
        project.webhook_path,
        data=body,
        content_type="application/json",
        **payloads.github_headers(body, project.webhook_secret, **options),
    )


def test_a_push_is_answered_202_with_its_delivery_before_anything_is_deployed(
    shop, make_server, client
):
    make_server(shop, "web1")

    response = _send(client, shop, payloads.github_push())

    assert response.status_code == 202
    answer = response.json()
    delivery = WebhookDelivery.objects.get()
    assert answer == {
        "status": "accepted",
        "delivery": delivery.pk,
        "deployments": [],
        "reason": "",
    }
    assert delivery.outcome == WebhookOutcome.ACCEPTED
    assert delivery.processed_at is None
    assert not Deployment.objects.exists()
    (message,) = OutboxMessage.objects.all()
    assert (message.task, message.args, message.key) == (
        "builds.tasks.process_webhooks",
        [shop.pk],
        f"webhooks:{shop.pk}",
    )


def test_a_burst_of_pushes_waits_on_one_message_for_the_project(shop, make_server, client):
    make_server(shop, "web1")

    answers = [
        _send(client, shop, payloads.github_push(after=payloads.fake_sha(f"b{n}"))).json()
        for n in range(5)
    ]

    assert [answer["status"] for answer in answers] == ["accepted"] * 5
    assert OutboxMessage.objects.count() == 1
    assert process_webhooks(shop.pk) == 5
    assert Deployment.objects.get().revision == payloads.fake_sha("b4")


def test_a_push_after_the_workers_took_the_message_gets_a_message_of_its_own(
    shop, make_server, client
):
    make_server(shop, "web1")
    _send(client, shop, payloads.github_push(after=payloads.fake_sha("one")))
    OutboxMessage.objects.update(consumed_at=timezone.now())

    _send(client, shop, payloads.github_push(after=payloads.fake_sha("two")))

    waiting = OutboxMessage.objects.get(consumed_at__isnull=True)
    assert (waiting.task, waiting.args) == ("builds.tasks.process_webhooks", [shop.pk])


def test_the_worker_creates_the_deployment_and_records_the_outcome(shop, make_server, client):
    make_server(shop, "web1")
    head = payloads.fake_sha("two")
    answer = _send(client, shop, payloads.github_push(after=head)).json()

    assert process_webhooks(shop.pk) == 1

    delivery = WebhookDelivery.objects.get(pk=answer["delivery"])
    deployment = Deployment.objects.get()
    assert delivery.outcome == WebhookOutcome.QUEUED
    assert delivery.processed_at is not None
    assert list(delivery.deployments.all()) == [deployment]
    assert (deployment.revision, deployment.status) == (head, Status.QUEUED)


def test_a_redelivered_task_message_does_nothing_the_second_time(shop, make_server, client):
    make_server(shop, "web1")
    _send(client, shop, payloads.github_push())

    assert process_webhooks(shop.pk) == 1
    assert process_webhooks(shop.pk) == 0

    assert Deployment.objects.count() == 1
    assert WebhookDelivery.objects.get().deployments.count() == 1


def test_a_ping_is_final_at_the_door_and_queues_no_processing(shop, make_server, client):
    make_server(shop, "web1")

    response = _send(client, shop, payloads.github_ping(), event="ping")

    assert (response.status_code, response.json()["status"]) == (200, "ignored")
    assert WebhookDelivery.objects.get().processed_at is not None
    assert not OutboxMessage.objects.exists()


def test_a_redelivery_waiting_to_be_processed_is_a_duplicate_already(shop, make_server, client):
    make_server(shop, "web1")
    payload = payloads.github_push()

    first = _send(client, shop, payload, delivery="d-1")
    again = _send(client, shop, payload, delivery="d-1")

    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["status"] == "duplicate"
    assert OutboxMessage.objects.count() == 1


def test_deliveries_are_processed_in_the_order_received(shop, make_server, client):
    make_server(shop, "web1")
    older = _send(client, shop, payloads.github_push(after=payloads.fake_sha("old"))).json()
    newer = _send(client, shop, payloads.github_push(after=payloads.fake_sha("new"))).json()

    assert process_webhooks(shop.pk) == 2

    (deployment,) = Deployment.objects.all()
    assert (deployment.revision, deployment.status) == (payloads.fake_sha("new"), Status.QUEUED)
    assert WebhookDelivery.objects.get(pk=newer["delivery"]).outcome == WebhookOutcome.QUEUED
    # The older push would have been superseded at once: no deployment was made for it.
    superseded = WebhookDelivery.objects.get(pk=older["delivery"])
    assert superseded.outcome == WebhookOutcome.SUPERSEDED
    assert superseded.reason == f"Servers: superseded by delivery #{newer['delivery']}"


def test_a_message_recorded_for_one_delivery_processes_the_projects_waiting_ones(
    shop, make_server, client
):
    # Messages recorded before the project's message existed carry a delivery's id.
    make_server(shop, "web1")
    older = _send(client, shop, payloads.github_push(after=payloads.fake_sha("old"))).json()
    _send(client, shop, payloads.github_push(after=payloads.fake_sha("new")))

    assert process_webhook_delivery(older["delivery"]) == 2
    assert process_webhook_delivery(older["delivery"]) == 0

    assert not WebhookDelivery.objects.filter(outcome=WebhookOutcome.ACCEPTED).exists()
    assert Deployment.objects.get().revision == payloads.fake_sha("new")


def test_a_delivery_is_superseded_only_by_one_deploying_all_its_servers(shop, make_server, client):
    make_server(shop, "web1")
    make_server(shop, "eu", auto_deploy=False)
    head = payloads.fake_sha("both")
    both = _send(
        client, shop, payloads.github_push(after=head, commits=[(head, "Ship [deploy: eu]")])
    ).json()
    _send(client, shop, payloads.github_push(after=payloads.fake_sha("one")))

    process_webhooks(shop.pk)

    # The first push also reaches eu, which the second does not deploy: it is created, and
    # the second supersedes it on web1 only.
    assert WebhookDelivery.objects.get(pk=both["delivery"]).outcome == WebhookOutcome.QUEUED
    assert Deployment.objects.filter(status=Status.QUEUED).count() == 2


def test_deliveries_processed_one_by_one_supersede_each_others_deployments(
    shop, make_server, client
):
    make_server(shop, "web1")
    _send(client, shop, payloads.github_push(after=payloads.fake_sha("old")))
    process_webhooks(shop.pk)
    _send(client, shop, payloads.github_push(after=payloads.fake_sha("new")))
    process_webhooks(shop.pk)

    assert Deployment.objects.get(revision=payloads.fake_sha("old")).status == Status.CANCELLED
    assert Deployment.objects.get(revision=payloads.fake_sha("new")).status == Status.QUEUED


def test_the_commit_message_is_kept_only_until_the_delivery_is_processed(shop, make_server, client):
    make_server(shop, "web1")
    head = payloads.fake_sha("msg")
    payload = payloads.github_push(after=head, commits=[(head, "Ship it [skip cache]\n\nBody")])
    _send(client, shop, payload)
    (waiting,) = WebhookDelivery.objects.get().pushes
    assert waiting["message"] == "Ship it [skip cache]\n\nBody"

    process_webhooks(shop.pk)

    delivery = WebhookDelivery.objects.get()
    assert [push["message"] for push in delivery.pushes] == [""]
    assert delivery.summary == ["Ship it [skip cache]"]
    assert Deployment.objects.get().skip_cache


def test_an_error_of_ours_while_processing_marks_the_delivery_failed(
    shop, make_server, client, monkeypatch
):
    make_server(shop, "web1")
    _send(client, shop, payloads.github_push())

    def broken(**_):
        raise RuntimeError("a bug")

    monkeypatch.setattr(webhook_services, "webhook_targets", broken)
    assert process_webhooks(shop.pk) == 1

    delivery = WebhookDelivery.objects.get()
    assert delivery.outcome == WebhookOutcome.FAILED
    assert "nothing was deployed" in delivery.reason
    assert "a bug" not in delivery.reason
    assert not Deployment.objects.exists()


def test_deliveries_left_waiting_by_a_lost_task_are_queued_again_by_the_sweep(
    shop, make_server, client
):
    make_server(shop, "web1")
    _send(client, shop, payloads.github_push(after=payloads.fake_sha("one")))
    _send(client, shop, payloads.github_push(after=payloads.fake_sha("two")))
    # The worker that took the project's message died while processing it: the message is
    # consumed, the work rolled back, both deliveries still wait.
    OutboxMessage.objects.update(consumed_at=timezone.now())

    assert webhook_services.webhooks_sweep(after=0) == 1
    assert webhook_services.webhooks_sweep(after=0) == 0  # its message waits for a worker

    again = OutboxMessage.objects.get(consumed_at__isnull=True)
    assert (again.task, again.args) == (webhook_services.PROCESS_WEBHOOKS_TASK, [shop.pk])
    process_webhooks.run(shop.pk)
    assert not WebhookDelivery.objects.filter(outcome=WebhookOutcome.ACCEPTED).exists()
    assert Deployment.objects.filter(status=Status.QUEUED).count() == 1


def test_the_sweep_leaves_fresh_deliveries_alone(shop, make_server, client):
    make_server(shop, "web1")
    _send(client, shop, payloads.github_push())
    OutboxMessage.objects.update(consumed_at=timezone.now())

    assert webhook_services.webhooks_sweep() == 0
