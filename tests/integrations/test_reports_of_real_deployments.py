"""A real deployment (a Git repository, an sshd target) reported to GitHub, GitLab, Gitea and
Sentry, each emulated by a local server that checks every request against the provider's
documented format: the start once the commit is known, then the outcome, in that order."""

from __future__ import annotations

import pytest

from builds import services
from builds.integrations import integration_create
from builds.models import Deployment, Status
from builds.tasks import run_deployment
from deployer import links
from projects.models import BuildCommand, DeliveryStatus, NotificationDelivery
from tests.integrations.conftest import TOKENS, send_due

pytestmark = pytest.mark.django_db(transaction=True)


def _run(deployment: Deployment) -> Deployment:
    run_deployment.apply(args=(deployment.pk,))
    deployment.refresh_from_db()
    return deployment


@pytest.fixture
def shop(git_repo_factory, sshd_target, project_factory, server_factory):
    repo = git_repo_factory()
    sha = repo.commit({"index.html": "Hello\n"}, "First")
    project = project_factory(repo)
    server = server_factory(project, sshd_target, environment="staging")
    return project, server, sha


def _integrate_everything(project, providers, alice) -> None:
    for kind, repository in (
        ("github", "acme/shop"),
        ("gitlab", "acme/shop"),
        ("gitea", "acme/shop"),
        ("sentry", "acme/shop"),
    ):
        integration_create(
            project=project,
            actor=alice,
            kind=kind,
            base_url=providers.base_url(kind),
            repository=repository,
            token=TOKENS[kind],
        )


def test_it_reports_a_successful_deployment_to_every_provider_in_order(shop, providers, alice):
    project, server, sha = shop
    _integrate_everything(project, providers, alice)

    deployment = _run(services.deployment_create(project=project, servers=[server]))
    assert deployment.status == Status.SUCCEEDED
    send_due()

    assert providers.refusals == []
    statuses = NotificationDelivery.objects.filter(integration__isnull=False)
    assert set(statuses.values_list("status", flat=True)) == {DeliveryStatus.SENT}
    github = providers.of("github")
    [github_id] = providers.github_deployments
    assert [(c.path, c.body.get("state")) for c in github] == [
        (f"/repos/acme/shop/statuses/{sha}", "pending"),
        ("/repos/acme/shop/deployments", None),
        (f"/repos/acme/shop/deployments/{github_id}/statuses", "in_progress"),
        (f"/repos/acme/shop/statuses/{sha}", "success"),
        (f"/repos/acme/shop/deployments/{github_id}/statuses", "success"),
    ]
    log_url = links.deployment_page(project.slug, deployment.pk)
    assert github[0].body == {
        "state": "pending",
        "target_url": log_url,
        "description": f"Deployment #{deployment.pk} to staging started",
        "context": "slipway/staging",
    }
    assert github[1].body == {
        "ref": sha,
        "environment": "staging",
        "description": f"Deployment #{deployment.pk} to staging started",
        "auto_merge": False,
        "required_contexts": [],
        "production_environment": False,
    }
    assert github[4].body["log_url"] == log_url

    gitlab = providers.of("gitlab")
    [gitlab_id] = providers.gitlab_deployments
    assert [(c.method, c.path, c.body["status"]) for c in gitlab] == [
        ("POST", "/projects/acme%2Fshop/deployments", "running"),
        ("PUT", f"/projects/acme%2Fshop/deployments/{gitlab_id}", "success"),
    ]
    assert gitlab[0].body == {
        "environment": "staging",
        "sha": sha,
        "ref": "main",
        "tag": False,
        "status": "running",
    }

    assert [(c.path, c.body["state"]) for c in providers.of("gitea")] == [
        (f"/repos/acme/shop/statuses/{sha}", "pending"),
        (f"/repos/acme/shop/statuses/{sha}", "success"),
    ]

    sentry = providers.of("sentry")
    assert [c.path for c in sentry] == [
        "/api/0/organizations/acme/releases/",
        f"/api/0/organizations/acme/releases/{sha}/deploys/",
    ]
    assert sentry[0].body == {"version": sha, "projects": ["shop"]}
    assert sentry[1].body["environment"] == "staging"
    assert sentry[1].body["name"] == f"Slipway #{deployment.pk}"


def test_it_reports_a_failed_deployment_as_a_failure_and_tells_sentry_nothing(
    shop, providers, alice
):
    project, server, sha = shop
    _integrate_everything(project, providers, alice)
    BuildCommand.objects.create(project=project, command="echo broken; exit 3")

    deployment = _run(services.deployment_create(project=project, servers=[server]))
    assert deployment.status == Status.FAILED
    send_due()

    assert providers.refusals == []
    [github_id] = providers.github_deployments
    assert [(c.path, c.body.get("state")) for c in providers.of("github")] == [
        (f"/repos/acme/shop/statuses/{sha}", "pending"),
        ("/repos/acme/shop/deployments", None),
        (f"/repos/acme/shop/deployments/{github_id}/statuses", "in_progress"),
        (f"/repos/acme/shop/statuses/{sha}", "failure"),
        (f"/repos/acme/shop/deployments/{github_id}/statuses", "failure"),
    ]
    assert [c.body["status"] for c in providers.of("gitlab")] == ["running", "failed"]
    assert [c.body["state"] for c in providers.of("gitea")] == ["pending", "failure"]
    assert providers.of("sentry") == []


def test_a_provider_that_always_fails_never_fails_the_deployment(shop, providers, alice):
    project, server, _sha = shop
    integration_create(
        project=project,
        actor=alice,
        kind="github",
        base_url=providers.base_url("github"),
        repository="acme/shop",
        token="ghp_wrongTOKEN0000000000000000",
    )

    deployment = _run(services.deployment_create(project=project, servers=[server]))
    assert deployment.status == Status.SUCCEEDED
    send_due()

    deliveries = NotificationDelivery.objects.filter(integration__isnull=False).order_by("id")
    assert [(d.event, d.status) for d in deliveries] == [
        ("started", DeliveryStatus.FAILED),
        ("succeeded", DeliveryStatus.FAILED),
    ]
    started = deliveries[0]
    assert started.status_code == 401 and started.attempts == 1, "a 401 is not retried"
    assert "HTTP 401: Bad credentials" in started.error
    assert "wrongTOKEN" not in started.error
    assert Deployment.objects.get(pk=deployment.pk).status == Status.SUCCEEDED
