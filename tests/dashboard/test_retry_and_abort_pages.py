"""The deployment page's "Retry failed servers" and "Abort and roll back": offered to people
who may deploy, each with a confirmation that names the servers; refusals come back as a
message on the page, never an error page."""

from __future__ import annotations

import html
import re

import pytest
from django.utils import timezone

from builds.models import Deployment, DeploymentTarget, Kind, Status, TargetStatus
from projects.models import AuditEvent
from servers.models import Server
from tests.dashboard.support import SECOND_SHA, TRUSTED, forms_posting_to, make_deployer

pytestmark = pytest.mark.django_db


@pytest.fixture
def failed_on_web2(project, server):
    web2 = Server.objects.create(
        project=project,
        name="web2",
        hostname="web2.example.com",
        username="deploy",
        deploy_path="/srv/shop",
        host_key_fingerprint=TRUSTED,
    )
    deployment = Deployment.objects.create(
        project=project,
        status=Status.FAILED,
        revision="main",
        end_revision=SECOND_SHA,
        error="web2: Permission denied",
        started_at=timezone.now(),
        finished_at=timezone.now(),
    )
    DeploymentTarget.objects.create(
        deployment=deployment, server=server, position=0, status=TargetStatus.SUCCEEDED
    )
    DeploymentTarget.objects.create(
        deployment=deployment, server=web2, position=1, status=TargetStatus.FAILED
    )
    return deployment


def _page(client, project, deployment) -> str:
    response = client.get(f"/projects/{project.slug}/deployments/{deployment.pk}/")
    assert response.status_code == 200
    return response.content.decode()


def _confirmation(page: str, action: str) -> str:
    found = re.search(rf'action="[^"]*/{action}/" data-confirm="([^"]*)"', page)
    assert found, f"no confirmed form for {action}"
    return html.unescape(found.group(1))


def test_a_deployer_is_offered_a_retry_that_names_the_servers(
    bob_client, bob, project, failed_on_web2
):
    make_deployer(project, bob)
    page = _page(bob_client, project, failed_on_web2)
    assert "Retry failed servers" in page
    question = _confirmation(page, "retry")
    assert "2222222" in question and "(web2)" in question and "web1 is left alone" in question


def test_retry_creates_the_deployment_of_the_failed_server_and_opens_it(
    alice_client, alice, project, failed_on_web2
):
    response = alice_client.post(f"/projects/{project.slug}/deployments/{failed_on_web2.pk}/retry/")
    retry = Deployment.objects.get(retry_of=failed_on_web2)
    assert response.status_code == 302
    assert response["Location"] == f"/projects/{project.slug}/deployments/{retry.pk}/"
    assert [t.server.name for t in retry.targets.all()] == ["web2"]
    assert (retry.revision, retry.trigger, retry.triggered_by) == (SECOND_SHA, "manual", alice)
    assert AuditEvent.objects.filter(action="deployment.retried", actor=alice).exists()
    page = _page(alice_client, project, retry)
    assert (
        f'<dt>Retries</dt><dd><a href="/projects/{project.slug}/deployments/{failed_on_web2.pk}/">'
        in page
    )


def test_a_viewer_sees_no_retry_and_cannot_post_one(bob_client, project, failed_on_web2):
    page = _page(bob_client, project, failed_on_web2)
    assert "/retry/" not in " ".join(forms_posting_to(page))
    response = bob_client.post(f"/projects/{project.slug}/deployments/{failed_on_web2.pk}/retry/")
    assert response.status_code in (403, 404)
    assert not Deployment.objects.filter(retry_of=failed_on_web2).exists()


def test_a_refused_retry_says_why_on_the_page(alice_client, project, failed_on_web2):
    Server.objects.filter(name="web2").update(enabled=False)
    response = alice_client.post(
        f"/projects/{project.slug}/deployments/{failed_on_web2.pk}/retry/", follow=True
    )
    assert response.status_code == 200
    assert "web2 is disabled" in html.unescape(response.content.decode())
    assert not Deployment.objects.filter(retry_of=failed_on_web2).exists()


def test_no_retry_when_every_server_succeeded_or_while_it_runs(
    alice_client, project, failed_on_web2
):
    failed_on_web2.targets.update(status=TargetStatus.SUCCEEDED)
    Deployment.objects.filter(pk=failed_on_web2.pk).update(status=Status.SUCCEEDED)
    assert "/retry/" not in " ".join(forms_posting_to(_page(alice_client, project, failed_on_web2)))
    response = alice_client.post(
        f"/projects/{project.slug}/deployments/{failed_on_web2.pk}/retry/", follow=True
    )
    assert "nothing to retry" in response.content.decode()


def test_a_running_deployment_offers_abort_and_roll_back_with_a_confirmation(
    alice_client, alice, project, running
):
    page = _page(alice_client, project, running)
    assert "Abort and roll back" in page
    assert "a rollback takes every server it switched back" in _confirmation(page, "abort")
    response = alice_client.post(
        f"/projects/{project.slug}/deployments/{running.pk}/abort/", follow=True
    )
    assert "Aborting" in response.content.decode()
    running.refresh_from_db()
    assert running.abort_requested_by == alice
    page = _page(alice_client, project, running)
    assert 'id="abort-callout"' in page
    assert "/abort/" not in " ".join(forms_posting_to(page))


def test_a_viewer_sees_no_abort_and_cannot_post_one(bob_client, project, running):
    assert "/abort/" not in " ".join(forms_posting_to(_page(bob_client, project, running)))
    response = bob_client.post(f"/projects/{project.slug}/deployments/{running.pk}/abort/")
    assert response.status_code in (403, 404)
    running.refresh_from_db()
    assert running.abort_requested_at is None


def test_an_aborted_deployment_links_to_its_rollback(alice_client, project, failed_on_web2):
    rollback = Deployment.objects.create(
        project=project, kind=Kind.ROLLBACK, rollback_of=failed_on_web2, status=Status.QUEUED
    )
    page = _page(alice_client, project, failed_on_web2)
    assert (
        f'<dt>Rolled back by</dt><dd><a href="/projects/{project.slug}/deployments/{rollback.pk}/">'
        in page
    )
