"""Which deployments make reports: a rollback's success is a success; the automatic rollback
after a failure adds nothing to the failure; previews and deployments that never knew their
commit report nothing; Sentry hears only of successes; an integration limited to some servers
reports only deployments that touch them."""

from __future__ import annotations

import pytest
from django.utils import timezone

from builds.integrations import integration_create
from builds.models import Deployment, DeploymentTarget, Kind, Status, TargetStatus
from builds.notifications import deployment_event, revision_resolved
from projects.services import project_create
from servers.models import Server
from tests.integrations.conftest import TOKENS

pytestmark = pytest.mark.django_db

SHA = "d4" * 20


@pytest.fixture
def shop(alice):
    return project_create(
        owner=alice, name="Shop", repository_url="https://git.example.com/acme/shop.git"
    )


def _server(shop, name, environment=""):
    return Server.objects.create(
        project=shop,
        name=name,
        hostname=f"{name}.example.com",
        username="u",
        deploy_path="/srv",
        environment=environment,
    )


def _deployment(shop, servers, *, kind=Kind.DEPLOY, status=Status.RUNNING):
    deployment = Deployment.objects.create(
        project=shop, kind=kind, status=status, branch="main", started_at=timezone.now()
    )
    for server in servers:
        # Finished targets: the tests keep several deployments of one server.
        DeploymentTarget.objects.create(
            deployment=deployment, server=server, status=TargetStatus.SUCCEEDED
        )
    return deployment


def _integrate(shop, providers, alice, kind, **fields):
    return integration_create(
        project=shop,
        actor=alice,
        kind=kind,
        base_url=providers.base_url(kind),
        repository="acme/shop",
        token=TOKENS[kind],
        **fields,
    )


def test_a_rollback_reports_success_and_an_automatic_rollback_adds_nothing(shop, providers, alice):
    web1 = _server(shop, "web1")
    _integrate(shop, providers, alice, "github")
    rollback = _deployment(shop, [web1], kind=Kind.ROLLBACK)
    [started] = revision_resolved(rollback, SHA)
    [finished] = deployment_event(rollback, "rolled_back")
    assert (started.payload["deployment"]["kind"], finished.event) == ("rollback", "rolled_back")

    failed = _deployment(shop, [web1], status=Status.FAILED)
    revision_resolved(failed, SHA)
    assert len(deployment_event(failed, "failed")) == 1
    assert deployment_event(failed, "rolled_back") == []


def test_previews_report_nothing_and_sentry_only_successes(shop, providers, alice):
    web1 = _server(shop, "web1")
    _integrate(shop, providers, alice, "sentry")
    _integrate(shop, providers, alice, "gitea")
    preview = _deployment(shop, [web1], kind=Kind.PREVIEW)
    assert revision_resolved(preview, SHA) == []
    deployment = _deployment(shop, [web1])
    assert [d.receiver.kind for d in revision_resolved(deployment, SHA)] == ["gitea"]
    Deployment.objects.filter(pk=deployment.pk).update(status=Status.FAILED)
    assert [d.receiver.kind for d in deployment_event(deployment, "failed")] == ["gitea"]


def test_the_environment_is_the_integrations_or_the_servers_or_production(shop, providers, alice):
    staging = _server(shop, "web1", "staging")
    other = _server(shop, "web2", "qa")
    _integrate(shop, providers, alice, "gitlab")
    named = _integrate(shop, providers, alice, "gitea", environment="live")
    environments = {
        d.integration_id: d.payload["integration"]["environment"]
        for d in revision_resolved(_deployment(shop, [staging]), SHA)
    }
    assert sorted(environments.values()) == ["live", "staging"]
    assert environments[named.pk] == "live"
    mixed = revision_resolved(_deployment(shop, [staging, other]), SHA)
    assert sorted(d.payload["integration"]["environment"] for d in mixed) == [
        "live",
        "production",
    ]


def test_an_integration_limited_to_servers_reports_only_their_deployments(shop, providers, alice):
    web1, web2 = _server(shop, "web1"), _server(shop, "web2")
    _integrate(shop, providers, alice, "github", servers=[web1])
    assert revision_resolved(_deployment(shop, [web2]), SHA) == []
    assert len(revision_resolved(_deployment(shop, [web1, web2]), SHA)) == 1
