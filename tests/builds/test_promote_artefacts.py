"""Build once, promote (docs/promote.md): a deployment to staging keeps its build output; a
promotion sends those exact bytes to production with no fetch and no build, linked to its
source; retention, a tampered store and deploy rights refuse it. Real Git repositories and
real sshd targets, through the runner, the services, the API and the dashboard."""

from __future__ import annotations

import os
from datetime import timedelta

import pytest
from django.utils import timezone

from builds import services
from builds.artefacts import artefacts_prune, project_store
from builds.models import Artefact, Deployment, GatePolicy, Kind, LogLine, Status, Step
from builds.retention import records_prune
from builds.services import DeploymentRefused, DeployRightsForbidden
from builds.tasks import run_deployment
from projects.models import AuditEvent, BuildCommand, Membership, Role
from tests.api.conftest import client_for
from tests.support.engine import tree_digest

pytestmark = pytest.mark.django_db(transaction=True)

# Writes what no second run could write again: a promotion that built would show it.
STAMP = "date +%s%N > built-at.txt && head -c 16 /dev/urandom | od -An -tx1 > noise.txt"


def _run(deployment: Deployment) -> Deployment:
    run_deployment.apply(args=(deployment.pk,))
    deployment.refresh_from_db()
    return deployment


def _live(target):
    return (target.deploy_path / "current").resolve()


@pytest.fixture
def estate(git_repo_factory, project_factory, server_factory, sshd_factory, alice, bob):
    """Alice's project (a build command) on a staging and a production server, deployed to
    staging; Bob a deployer on it."""
    repo = git_repo_factory()
    repo.commit(
        {"index.html": "<h1>v1</h1>\n", "app/main.js": "run()\n"},
        "v1",
        symlinks={"home.html": "index.html"},
    )
    project = project_factory(repo)
    BuildCommand.objects.create(project=project, command=STAMP, description="stamp")
    targets = {"staging": sshd_factory(), "production": sshd_factory()}
    staging = server_factory(project, targets["staging"], name="stage1", environment="staging")
    production = server_factory(
        project, targets["production"], name="prod1", environment="production"
    )
    Membership.objects.create(project=project, user=bob, role=Role.DEPLOYER)
    source = _run(services.deployment_create(project=project, servers=[staging], user=alice))
    assert source.status == Status.SUCCEEDED, source.error
    return {
        "repo": repo,
        "project": project,
        "targets": targets,
        "staging": staging,
        "production": production,
        "source": source,
    }


def test_it_promotes_the_staging_build_to_production_byte_for_byte(estate, alice):
    source, targets = estate["source"], estate["targets"]
    artefact = source.artefact
    assert artefact is not None and artefact.revision == source.end_revision
    assert artefact.files == 5 and artefact.deployment_id == source.pk
    # The repository moves on: a promotion still sends what staging got.
    estate["repo"].commit({"index.html": "<h1>v2</h1>\n"}, "v2")

    promotion = services.artefact_promote(
        source=source,
        servers=services.promotion_servers(project=estate["project"], to="production"),
        user=alice,
    )
    assert promotion.kind == Kind.PROMOTE and promotion.promoted_from_id == source.pk
    promotion = _run(promotion)

    assert promotion.status == Status.SUCCEEDED, promotion.error
    assert promotion.end_revision == source.end_revision
    assert promotion.artefact_id == artefact.pk
    assert tree_digest(_live(targets["production"])) == tree_digest(_live(targets["staging"]))
    stamp = (_live(targets["production"]) / "built-at.txt").read_bytes()
    assert stamp == (_live(targets["staging"]) / "built-at.txt").read_bytes()
    steps = set(Step.objects.filter(deployment=promotion).values_list("name", flat=True))
    assert not steps & {"fetch", "checkout", "build"}
    assert "verify" in steps
    log = "\n".join(LogLine.objects.filter(deployment=promotion).values_list("text", flat=True))
    assert (
        f"Promoting artefact of deployment #{source.pk} (revision {source.end_revision[:12]}): "
        "no fetch, no build; 5 files verified against its manifest"
    ) in log
    assert "$ date" not in log
    assert AuditEvent.objects.filter(
        action="deployment.promoted", target=f"deployment #{promotion.pk}"
    ).exists()
    # A promotion can be promoted again: the same artefact.
    again = services.artefact_promote(source=promotion, servers=[estate["staging"]], user=alice)
    assert again.artefact_id == artefact.pk


def test_the_api_and_the_dashboard_promote_and_link_the_source(estate, alice, alice_client):
    source, project = estate["source"], estate["project"]
    answer = client_for(alice).post(
        f"/api/v1/deployments/{source.pk}/promotions/", {"to": "prod1"}, format="json"
    )
    assert answer.status_code == 201, answer.content
    body = answer.json()
    assert body["kind"] == "promote" and body["promoted_from"] == source.pk
    assert body["artefact"] == source.artefact.digest
    promotion = _run(Deployment.objects.get(pk=body["id"]))
    assert promotion.status == Status.SUCCEEDED, promotion.error
    detail = client_for(alice).get(f"/api/v1/deployments/{source.pk}/").json()
    assert detail["promotions"] == [promotion.pk]

    page = alice_client.get(f"/projects/{project.slug}/deployments/{source.pk}/")
    assert b"Promote this build to" in page.content
    assert b'<option value="production">production</option>' in page.content
    promoted_page = alice_client.get(f"/projects/{project.slug}/deployments/{promotion.pk}/")
    assert f'id="promoted-from">#{source.pk}</a>'.encode() in promoted_page.content
    # A promotion is rolled back like any deployment, and promoted on again.
    assert b"Roll back</button>" in promoted_page.content
    assert b"Promote this build to" in promoted_page.content

    posted = alice_client.post(
        f"/projects/{project.slug}/deployments/{source.pk}/promotions/", {"to": "production"}
    )
    newest = Deployment.objects.filter(kind=Kind.PROMOTE).order_by("-pk").first()
    assert newest is not None and newest.pk != promotion.pk
    assert posted.status_code == 302
    assert posted["Location"].endswith(f"/deployments/{newest.pk}/")

    unknown = client_for(alice).post(
        f"/api/v1/deployments/{source.pk}/promotions/", {"to": "nowhere"}, format="json"
    )
    assert unknown.status_code == 400 and "to" in unknown.json()


def test_an_artefact_removed_by_retention_cannot_be_promoted(estate, alice):
    project, source = estate["project"], estate["source"]
    project.artefacts_keep, project.artefacts_keep_days = 0, 1
    project.save(update_fields=["artefacts_keep", "artefacts_keep_days"])
    Artefact.objects.filter(pk=source.artefact_id).update(
        created_at=timezone.now() - timedelta(days=2)
    )
    report = records_prune()
    assert report.count("artefacts") == 1
    store = project_store(project.pk)
    assert not store.has(source.artefact.digest)
    assert not any(path.is_file() for path in store.objects.rglob("*"))

    source.refresh_from_db()
    with pytest.raises(DeploymentRefused, match="removed by the project's artefact retention"):
        services.artefact_promote(source=source, servers=[estate["production"]], user=alice)
    answer = client_for(alice).post(
        f"/api/v1/deployments/{source.pk}/promotions/", {"to": "production"}, format="json"
    )
    assert answer.status_code == 400 and "deployment" in answer.json()
    assert artefacts_prune().artefacts == 0


def test_a_tampered_artefact_is_refused_and_nothing_is_sent(estate, alice):
    source, targets = estate["source"], estate["targets"]
    store = project_store(estate["project"].pk)
    manifest = store.manifest(source.artefact.digest)
    victim = store.object_path(manifest["index.html"].digest)
    os.chmod(victim, 0o644)
    victim.write_text("<h1>not what was built</h1>\n")

    promotion = _run(
        services.artefact_promote(source=source, servers=[estate["production"]], user=alice)
    )

    assert promotion.status == Status.FAILED
    assert promotion.error_code == "artefact_corrupt"
    assert "index.html" in promotion.error and "does not match its manifest" in promotion.error
    assert not (targets["production"].deploy_path / "releases").exists()


def test_charlie_sees_nothing_and_a_staging_deployer_cannot_promote_to_production(
    estate, alice, bob, charlie, charlie_client, bob_client
):
    source, slug = estate["source"], estate["project"].slug
    answer = client_for(charlie).post(
        f"/api/v1/deployments/{source.pk}/promotions/", {"to": "production"}, format="json"
    )
    assert answer.status_code == 404
    page = charlie_client.post(
        f"/projects/{slug}/deployments/{source.pk}/promotions/", {"to": "production"}
    )
    assert page.status_code == 404
    Membership.objects.filter(user=bob).update(role=Role.VIEWER)
    assert (
        b"Promote this build to"
        not in bob_client.get(f"/projects/{slug}/deployments/{source.pk}/").content
    )
    assert (
        client_for(bob)
        .post(f"/api/v1/deployments/{source.pk}/promotions/", {"to": "staging"}, format="json")
        .status_code
        == 403
    )
    Membership.objects.filter(user=bob).update(role=Role.DEPLOYER)

    limited = client_for(alice).patch(
        f"/api/v1/projects/{estate['project'].slug}/members/bob/",
        {"deploy_environments": ["staging"]},
        format="json",
    )
    assert limited.status_code == 200, limited.content
    with pytest.raises(DeployRightsForbidden, match="bob may not deploy to prod1"):
        services.artefact_promote(source=source, servers=[estate["production"]], user=bob)
    answer = client_for(bob).post(
        f"/api/v1/deployments/{source.pk}/promotions/", {"to": "production"}, format="json"
    )
    assert answer.status_code == 403
    assert not Deployment.objects.filter(kind=Kind.PROMOTE).exists()


def test_a_promotion_from_where_its_source_started_carries_its_commits_for_dora(estate, alice):
    project, staging, production = estate["project"], estate["staging"], estate["production"]
    first = _run(services.deployment_create(project=project, servers=[production], user=alice))
    assert first.status == Status.SUCCEEDED, first.error
    estate["repo"].commit({"index.html": "<h1>v2</h1>\n"}, "Fix the title")
    staged = _run(services.deployment_create(project=project, servers=[staging], user=alice))
    assert staged.status == Status.SUCCEEDED and staged.first_commit_at is not None

    promotion = _run(services.artefact_promote(source=staged, servers=[production], user=alice))

    assert promotion.status == Status.SUCCEEDED, promotion.error
    assert promotion.start_revision == staged.start_revision == first.end_revision
    assert promotion.first_commit_at == staged.first_commit_at
    assert [c["subject"] for c in promotion.commits] == ["Fix the title"]
    assert promotion.commits == staged.commits
    assert (_live(estate["targets"]["production"]) / "index.html").read_text() == "<h1>v2</h1>\n"


def test_the_artefact_retention_is_a_project_setting_checked_by_field(
    git_repo_factory, project_factory, alice, alice_client
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    api = client_for(alice)
    url = f"/api/v1/projects/{project.slug}/"
    assert api.get(url).json()["artefacts_keep"] == 10
    changed = api.patch(url, {"artefacts_keep": 3, "artefacts_keep_days": 0}, format="json")
    assert changed.status_code == 200, changed.content
    assert (changed.json()["artefacts_keep"], changed.json()["artefacts_keep_days"]) == (3, 0)
    refused = api.patch(url, {"artefacts_keep_days": -1}, format="json")
    assert refused.status_code == 400 and "artefacts_keep_days" in refused.json()
    page = alice_client.get(f"/projects/{project.slug}/settings/")
    assert b"Build outputs kept for promotion" in page.content


def test_a_promotion_waits_for_the_gates_of_the_environment_it_goes_to(estate, alice, bob):
    source, targets = estate["source"], estate["targets"]
    GatePolicy.objects.create(
        project=estate["project"],
        environment="production",
        approvals_required=1,
        approver_role="admin",
    )

    promotion = services.artefact_promote(
        source=source,
        servers=services.promotion_servers(project=estate["project"], to="production"),
        user=bob,
    )

    assert promotion.status == Status.GATED
    assert not (targets["production"].deploy_path / "current").exists()
    with pytest.raises(services.ApprovalRefused):
        services.deployment_approve(deployment=promotion, user=bob)  # the requester
    approved = services.deployment_approve(deployment=promotion, user=alice)
    assert approved.status == Status.QUEUED
    done = _run(promotion)
    assert done.status == Status.SUCCEEDED, done.error
    assert tree_digest(_live(targets["production"])) == tree_digest(_live(targets["staging"]))
