"""Deploy rights (docs/users.md#deploy-rights): a deployer limited to some environments or
servers deploys, rolls back, retries and stops deployments there only, through the API, the
dashboard and the services alike; admins set the limits; webhook pushes are the project's.
Real Git repositories and real sshd targets."""

from __future__ import annotations

import pytest

from builds import services
from builds.models import Deployment, Status
from builds.services import DeployRightsForbidden
from builds.tasks import run_deployment
from projects.models import AuditEvent, Membership, Project, Role
from servers.models import GroupMember, Server, ServerGroup, Strategy
from tests.api.conftest import client_for
from tests.dashboard.support import signed_in

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def estate(git_repo_factory, project_factory, server_factory, sshd_factory, alice, bob):
    """Alice's project with a staging and a production server; Bob a deployer on it."""
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    staging = server_factory(project, sshd_factory(), name="stage1", environment="staging")
    production = server_factory(project, sshd_factory(), name="prod1", environment="production")
    membership = Membership.objects.create(project=project, user=bob, role=Role.DEPLOYER)
    return {
        "project": project,
        "staging": staging,
        "production": production,
        "bob": membership,
        "repo": repo,
    }


def _limit_to_staging(estate, alice) -> None:
    answer = client_for(alice).patch(
        f"/api/v1/projects/{estate['project'].slug}/members/bob/",
        {"deploy_environments": ["staging"]},
        format="json",
    )
    assert answer.status_code == 200, answer.content
    assert answer.json()["deploy_environments"] == ["staging"]
    assert answer.json()["deploy_servers"] == [] and answer.json()["role"] == "deployer"


def _run(deployment: Deployment) -> Deployment:
    run_deployment.apply(args=(deployment.pk,))
    deployment.refresh_from_db()
    return deployment


def test_an_unlimited_deployer_deploys_everywhere(estate, bob):
    deployment = services.deployment_create(
        project=estate["project"], servers=[estate["staging"], estate["production"]], user=bob
    )
    assert _run(deployment).status == Status.SUCCEEDED, deployment.error


def test_a_deployer_limited_to_staging_is_refused_production_through_the_api(estate, alice, bob):
    _limit_to_staging(estate, alice)
    slug = estate["project"].slug
    api = client_for(bob)

    refused = api.post(
        f"/api/v1/projects/{slug}/deployments/",
        {"servers": [estate["staging"].pk, estate["production"].pk]},
        format="json",
    )
    assert refused.status_code == 403, refused.content
    detail = refused.json()["detail"]
    assert "bob may not deploy to prod1 (production)" in detail
    assert "environment staging" in detail and "Members page" in detail
    assert not Deployment.objects.exists()

    allowed = api.post(
        f"/api/v1/projects/{slug}/deployments/", {"servers": [estate["staging"].pk]}, format="json"
    )
    assert allowed.status_code == 201, allowed.content
    assert _run(Deployment.objects.get(pk=allowed.json()["id"])).status == Status.SUCCEEDED

    # Alice (an admin) is never limited: she deploys production, and Bob may not stop it.
    theirs = services.deployment_create(
        project=estate["project"], servers=[estate["production"]], user=alice
    )
    stopped = api.post(f"/api/v1/deployments/{theirs.pk}/cancel/")
    assert stopped.status_code == 403 and "prod1" in stopped.json()["detail"]
    assert _run(theirs).status == Status.SUCCEEDED

    rollback = api.post(
        f"/api/v1/projects/{slug}/servers/{estate['production'].pk}/rollback/", {}, format="json"
    )
    assert rollback.status_code == 403, rollback.content


def test_named_servers_widen_the_environments(estate, alice, bob):
    answer = client_for(alice).patch(
        f"/api/v1/projects/{estate['project'].slug}/members/bob/",
        {"deploy_environments": ["staging"], "deploy_servers": [estate["production"].pk]},
        format="json",
    )
    assert answer.status_code == 200, answer.content
    deployment = services.deployment_create(
        project=estate["project"], servers=[estate["production"]], user=bob
    )
    assert deployment.pk
    event = AuditEvent.objects.filter(action="member.updated").latest("pk")
    assert event.detail["deploy_rights"] == {
        "limited": True,
        "environments": ["staging"],
        "servers": ["prod1"],
    }


def test_limits_are_checked_on_input_and_only_admins_set_them(estate, alice, bob):
    slug = estate["project"].slug
    url = f"/api/v1/projects/{slug}/members/bob/"
    by_bob = client_for(bob).patch(url, {"deploy_environments": []}, format="json")
    assert by_bob.status_code == 403
    for body, field in (
        ({"deploy_environments": "staging"}, "deploy_environments"),
        ({"deploy_environments": [""]}, "deploy_environments"),
        ({"deploy_servers": [999999]}, "deploy_servers"),
    ):
        answer = client_for(alice).patch(url, body, format="json")
        assert answer.status_code == 400, (body, answer.content)
        assert field in answer.json(), answer.json()
    # A server of another project cannot be named.
    other = Project.objects.create(
        name="Other", slug="other", repository_url=estate["project"].repository_url
    )
    foreign = Server.objects.create(
        project=other, name="x", hostname="127.0.0.1", username="u", deploy_path="/srv/x"
    )
    answer = client_for(alice).patch(url, {"deploy_servers": [foreign.pk]}, format="json")
    assert answer.status_code == 400 and "deploy_servers" in answer.json()


def test_the_dashboard_offers_and_enforces_the_limits(estate, alice, bob):
    project = estate["project"]
    admin = signed_in(alice)
    saved = admin.post(
        f"/projects/{project.slug}/members/bob/rights/",
        {"deploy_environments": "staging, qa", "deploy_servers": []},
        follow=True,
    )
    assert "Deploy rights of bob saved." in saved.content.decode()
    estate["bob"].refresh_from_db()
    assert estate["bob"].deploy_environments == ["staging", "qa"]
    assert "Deploys to:" in saved.content.decode()

    page = signed_in(bob).get(f"/projects/{project.slug}/deploy/").content.decode()
    assert "stage1" in page and "prod1" not in page
    server_page = signed_in(bob).get(f"/projects/{project.slug}/servers/{estate['production'].pk}/")
    assert "Deploy to prod1" not in server_page.content.decode()
    assert (
        "Deploy to stage1"
        in signed_in(bob)
        .get(f"/projects/{project.slug}/servers/{estate['staging'].pk}/")
        .content.decode()
    )
    refused = signed_in(bob).post(
        f"/projects/{project.slug}/members/bob/rights/", {"deploy_environments": ""}
    )
    assert refused.status_code == 403


def test_webhook_pushes_are_the_projects_not_a_members(estate, alice, bob):
    _limit_to_staging(estate, alice)
    # No member is behind a push: the servers that follow the branch with auto-deploy on
    # are deployed, production included (an admin's setting).
    deployment = services.deployment_create(
        project=estate["project"],
        servers=[estate["staging"], estate["production"]],
        trigger="webhook",
    )
    assert deployment.targets.count() == 2
    with pytest.raises(DeployRightsForbidden):
        services.deployment_create(
            project=estate["project"], servers=[estate["production"]], user=bob
        )


def test_limits_stay_when_the_servers_named_are_deleted(estate, alice, bob):
    slug = estate["project"].slug
    answer = client_for(alice).patch(
        f"/api/v1/projects/{slug}/members/bob/",
        {"deploy_servers": [estate["staging"].pk]},
        format="json",
    )
    assert answer.status_code == 200 and answer.json()["deploy_limited"] is True
    assert client_for(alice).delete(
        f"/api/v1/projects/{slug}/servers/{estate['staging'].pk}/"
    ).status_code in (200, 204)
    member = client_for(alice).get(f"/api/v1/projects/{slug}/members/bob/").json()
    assert member["deploy_servers"] == [] and member["deploy_limited"] is True
    refused = client_for(bob).post(
        f"/api/v1/projects/{slug}/deployments/",
        {"servers": [estate["production"].pk]},
        format="json",
    )
    assert refused.status_code == 403, refused.content
    assert "no server any more" in refused.json()["detail"]
    # Both lists emptied by an admin lifts the limits.
    lifted = client_for(alice).patch(
        f"/api/v1/projects/{slug}/members/bob/",
        {"deploy_environments": [], "deploy_servers": []},
        format="json",
    )
    assert lifted.json()["deploy_limited"] is False


def test_a_blue_green_groups_router_counts_as_one_of_its_servers(estate, alice, bob):
    _limit_to_staging(estate, alice)
    project = estate["project"]
    green = Server.objects.create(
        project=project,
        name="stage2",
        environment="staging",
        hostname="127.0.0.1",
        username="u",
        deploy_path="/srv/x",
    )
    group = ServerGroup.objects.create(
        project=project, name="web", strategy=Strategy.BLUE_GREEN, router=estate["production"]
    )
    GroupMember.objects.create(group=group, server=estate["staging"], colour="blue", position=0)
    GroupMember.objects.create(group=group, server=green, colour="green", position=1)
    with pytest.raises(DeployRightsForbidden, match="prod1"):
        services.deployment_create(project=project, group=group, user=bob)
    answer = client_for(bob).post(f"/api/v1/projects/{project.slug}/groups/{group.pk}/switch-back/")
    assert answer.status_code == 403, answer.content


def test_locks_follow_the_deploy_rights(estate, alice, bob):
    _limit_to_staging(estate, alice)
    slug = estate["project"].slug
    production = f"/api/v1/projects/{slug}/servers/{estate['production'].pk}/deploy-lock/"
    staging = f"/api/v1/projects/{slug}/servers/{estate['staging'].pk}/deploy-lock/"
    assert client_for(alice).post(
        production, {"reason": "incident"}, format="json"
    ).status_code == (200)
    assert client_for(bob).delete(production).status_code == 403
    assert (
        client_for(bob)
        .post(f"/api/v1/projects/{slug}/deploy-lock/", {"reason": "mine"}, format="json")
        .status_code
        == 403
    )
    assert client_for(bob).post(staging, {"reason": "testing"}, format="json").status_code == 200
    estate["production"].refresh_from_db()
    assert estate["production"].lock_reason == "incident"


def test_ids_past_the_databases_integers_are_refused_in_the_forms(estate, alice, bob):
    project = estate["project"]
    answer = signed_in(alice).post(
        f"/projects/{project.slug}/members/bob/rights/",
        {"deploy_environments": "", "deploy_servers": ["99999999999999999999"]},
        follow=True,
    )
    assert answer.status_code == 200 and "not a server of" in answer.content.decode()
    page = signed_in(bob).post(
        f"/projects/{project.slug}/deploy/", {"servers": ["99999999999999999999"]}
    )
    assert page.status_code == 200
    assert not Deployment.objects.exists()
