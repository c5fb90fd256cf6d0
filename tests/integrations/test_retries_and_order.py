"""Integration reports are retried like notifications (a 5xx or 429 again later, another 4xx
never), and a finish waits for its start: the provider sees them in order, and a GitHub or
GitLab finish goes to the deployment the start created, never to a second one."""

from __future__ import annotations

import pytest
from django.utils import timezone

from builds import notifications
from builds.integrations import integration_create
from builds.models import Deployment, DeploymentTarget, Kind, Status, TargetStatus, Trigger
from builds.notifications import MAX_ATTEMPTS, deployment_event, resend_due, revision_resolved
from projects.models import DeliveryStatus, NotificationDelivery
from projects.services import project_create
from servers.models import Server
from tests.integrations.conftest import TOKENS, send_due
from tests.notifications.conftest import Receiver

pytestmark = pytest.mark.django_db

SHA = "a1" * 20


@pytest.fixture
def shop(alice):
    return project_create(
        owner=alice, name="Shop", repository_url="https://git.example.com/acme/shop.git"
    )


@pytest.fixture
def web1(shop):
    return Server.objects.create(
        project=shop,
        name="web1",
        hostname="web1.example.com",
        username="deploy",
        deploy_path="/srv/web1",
        environment="production",
    )


@pytest.fixture
def deployment(shop, web1, alice):
    deployment = Deployment.objects.create(
        project=shop,
        kind=Kind.DEPLOY,
        status=Status.RUNNING,
        branch="main",
        trigger=Trigger.MANUAL,
        triggered_by=alice,
        started_at=timezone.now(),
    )
    DeploymentTarget.objects.create(deployment=deployment, server=web1, status=TargetStatus.RUNNING)
    return deployment


def delivery_attempt(delivery_id: int) -> NotificationDelivery:
    """One attempt, as the task makes it; the delivery afterwards."""
    attempted = notifications.delivery_attempt(delivery_id)
    assert attempted is not None, "the delivery was not due"
    return attempted


def _integrate(shop, providers, alice, kind):
    return integration_create(
        project=shop,
        actor=alice,
        kind=kind,
        base_url=providers.base_url(kind),
        repository="acme/shop",
        token=TOKENS[kind],
    )


def _succeed(deployment):
    Deployment.objects.filter(pk=deployment.pk).update(
        status=Status.SUCCEEDED, end_revision=SHA, finished_at=timezone.now()
    )
    return deployment_event(Deployment.objects.get(pk=deployment.pk), "succeeded")


def test_it_retries_a_server_error_and_creates_one_deployment_only(
    shop, deployment, providers, alice
):
    _integrate(shop, providers, alice, "github")
    [started] = revision_resolved(deployment, SHA)
    # The commit status and the deployment go through; the deployment's status hits a 500.
    providers.fail_next_matching("/deployments/", 500)
    started = delivery_attempt(started.pk)
    assert started.status == DeliveryStatus.RETRYING
    assert started.status_code == 500 and "HTTP 500" in started.error
    [github_id] = providers.github_deployments
    assert started.remote_id == str(github_id), "kept before the step that failed"

    send_due()
    started.refresh_from_db()
    assert started.status == DeliveryStatus.SENT and started.attempts == 2
    assert len(providers.github_deployments) == 1, "the retry reused the deployment"
    assert [(c.path, c.body.get("state")) for c in providers.of("github")] == [
        (f"/repos/acme/shop/statuses/{SHA}", "pending"),
        ("/repos/acme/shop/deployments", None),
        (f"/repos/acme/shop/statuses/{SHA}", "pending"),
        (f"/repos/acme/shop/deployments/{github_id}/statuses", "in_progress"),
    ]


def test_a_finish_waits_for_its_start_without_spending_attempts(shop, deployment, providers, alice):
    _integrate(shop, providers, alice, "gitlab")
    assert len(revision_resolved(deployment, SHA)) == 1
    [finished] = _succeed(deployment)

    # The finish is tried first (its message came first): it waits, at no cost.
    waiting = delivery_attempt(finished.pk)
    assert waiting.status == DeliveryStatus.RETRYING
    assert waiting.attempts == 0
    assert "start to be reported first" in waiting.error
    assert providers.calls == []

    send_due()
    assert [(c.method, c.body["status"]) for c in providers.of("gitlab")] == [
        ("POST", "running"),
        ("PUT", "success"),
    ]
    finished.refresh_from_db()
    assert finished.status == DeliveryStatus.SENT and finished.attempts == 1


def test_a_rate_limit_is_retried_and_a_refusal_is_not(shop, deployment, providers, alice):
    gitea = _integrate(shop, providers, alice, "gitea")
    [started] = revision_resolved(deployment, SHA)
    providers.fail_next(429)
    assert delivery_attempt(started.pk).status == DeliveryStatus.RETRYING
    send_due()
    started.refresh_from_db()
    assert started.status == DeliveryStatus.SENT

    gitea.repository = "acme/gone"
    gitea.save()
    [finished] = _succeed(deployment)
    refused = delivery_attempt(finished.pk)
    assert refused.status == DeliveryStatus.FAILED and refused.attempts == 1
    assert refused.status_code == 404
    assert "/gitea/api/v1/repos/acme/gone/statuses/" in refused.error
    assert "The target couldn't be found." in refused.error
    assert TOKENS["gitea"] not in refused.error


def test_a_provider_that_stays_down_is_given_up_after_the_last_attempt(
    shop, deployment, providers, alice
):
    _integrate(shop, providers, alice, "sentry")
    [finished] = _succeed(deployment)
    providers.fail_next(*[502] * MAX_ATTEMPTS)
    for _attempt in range(MAX_ATTEMPTS):
        NotificationDelivery.objects.filter(pk=finished.pk).update(next_attempt_at=timezone.now())
        delivery_attempt(finished.pk)
    finished.refresh_from_db()
    assert finished.status == DeliveryStatus.FAILED and finished.attempts == MAX_ATTEMPTS
    assert providers.calls == []
    assert resend_due() == 0


def test_a_cancelled_deployment_closes_what_its_start_opened(shop, deployment, providers, alice):
    _integrate(shop, providers, alice, "github")
    _integrate(shop, providers, alice, "gitlab")
    revision_resolved(deployment, SHA)
    Deployment.objects.filter(pk=deployment.pk).update(status=Status.CANCELLED)
    assert len(deployment_event(deployment, "cancelled")) == 2
    send_due()
    assert [c.body.get("state") for c in providers.of("github")] == [
        "pending",
        None,
        "in_progress",
        "error",
        "error",
    ]
    assert [c.body["status"] for c in providers.of("gitlab")] == ["running", "canceled"]


def test_nothing_is_reported_for_a_deployment_that_never_knew_its_commit(
    shop, deployment, providers, alice
):
    _integrate(shop, providers, alice, "github")
    Deployment.objects.filter(pk=deployment.pk).update(status=Status.FAILED)
    assert deployment_event(deployment, "failed") == []


def test_a_turned_off_integration_reports_nothing(shop, deployment, providers, alice):
    github = _integrate(shop, providers, alice, "github")
    [started] = revision_resolved(deployment, SHA)
    github.enabled = False
    github.save()
    assert revision_resolved(deployment, "b2" * 20) == []
    assert delivery_attempt(started.pk).status == DeliveryStatus.FAILED
    assert providers.calls == []


def test_a_redirect_is_not_followed_so_the_token_stays_where_it_was_sent(shop, deployment, alice):
    first, elsewhere = Receiver(), Receiver()
    try:
        first.redirect(elsewhere.url("/stolen"), status=307, always=True)
        integration_create(
            project=shop,
            actor=alice,
            kind="gitea",
            base_url=first.url("/api/v1"),
            repository="acme/shop",
            token=TOKENS["gitea"],
        )
        [started] = revision_resolved(deployment, SHA)
        refused = delivery_attempt(started.pk)
    finally:
        first.stop()
        elsewhere.stop()
    assert refused.status == DeliveryStatus.FAILED and refused.status_code == 307
    assert "with a redirect (HTTP 307)" in refused.error
    assert len(first.requests) == 1 and elsewhere.requests == []
    assert first.requests[0].headers["authorization"] == f"token {TOKENS['gitea']}"
