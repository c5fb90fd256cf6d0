"""Deployments started through the API, run by the Celery task against real sshd targets,
then read back through the detail, log and releases endpoints."""

from __future__ import annotations

import pytest
from django.conf import settings

from builds.models import Deployment, Kind, Status
from builds.tasks import run_deployment
from projects.models import AuditEvent
from servers.models import Release
from tests.api.conftest import make_deployer

pytestmark = pytest.mark.django_db(transaction=True)


def deployments_url(project) -> str:
    return f"/api/v1/projects/{project.slug}/deployments/"


def run(deployment_id: int) -> None:
    run_deployment.apply(args=(deployment_id,))


def deploy(api, project, **data):
    response = api.post(deployments_url(project), data, format="json")
    assert response.status_code == 201, response.content
    run(response.json()["id"])
    return api.get(response.json()["url"]).json()


def test_it_deploys_and_reads_back_the_deployment_and_its_log(
    alice_api, repo, project, sshd_target, server_factory
):
    first_sha = repo.head()
    server = server_factory(project, sshd_target)
    created = alice_api.post(deployments_url(project), {"servers": [server.pk]}, format="json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["status"] == "queued" and body["kind"] == "deploy"
    assert body["trigger"] == "api" and body["triggered_by"] == "alice"
    assert body["project"] == project.slug
    assert body["url"] == settings.BASE_URL + f"/api/v1/deployments/{body['id']}/"
    assert body["html_url"] == (
        settings.BASE_URL + f"/projects/{project.slug}/deployments/{body['id']}/"
    )
    assert [(t["server"], t["server_name"], t["status"]) for t in body["targets"]] == [
        (server.pk, "web1", "queued")
    ]
    assert AuditEvent.objects.filter(
        action="deployment.created", target=f"deployment #{body['id']}"
    ).exists()

    run(body["id"])
    detail = alice_api.get(f"/api/v1/deployments/{body['id']}/").json()
    assert detail["status"] == "succeeded", detail["error"]
    assert detail["end_revision"] == first_sha and len(detail["end_revision"]) == 40
    assert detail["start_revision"] == ""
    (target,) = detail["targets"]
    assert target["status"] == "succeeded" and target["release"]
    assert target["files_done"] == target["files_total"] == 1
    assert detail["changes"]["added"] == ["index.html"]
    assert [c["sha"] for c in detail["commits"]] == [first_sha]
    assert {"switch", "transfer"} <= {step["name"] for step in detail["steps"]}
    assert all(step["status"] == "succeeded" for step in detail["steps"])
    assert detail["started_at"] and detail["finished_at"] and detail["error"] == ""
    assert (sshd_target.deploy_path / "current" / "index.html").read_text() == "A\n"

    log = alice_api.get(f"/api/v1/deployments/{body['id']}/log/").json()
    assert log["complete"] is True and log["status"] == "succeeded"
    seqs = [line["seq"] for line in log["lines"]]
    assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) > 3
    assert log["next_after"] == seqs[-1]
    assert {line["stream"] for line in log["lines"]} >= {"system"}
    assert any(line["server"] == server.pk for line in log["lines"])
    later = alice_api.get(f"/api/v1/deployments/{body['id']}/log/?after=3").json()
    assert [line["seq"] for line in later["lines"]] == seqs[3:]
    assert later["complete"] is True
    assert alice_api.get(f"/api/v1/deployments/{body['id']}/log/?after={seqs[-1]}").json() == {
        "lines": [],
        "complete": True,
        "next_after": seqs[-1],
        "status": "succeeded",
    }


def test_it_rolls_back_a_server_and_lists_its_releases(
    alice_api, repo, project, sshd_target, server_factory
):
    a = repo.head()
    server = server_factory(project, sshd_target)
    first = deploy(alice_api, project, servers=[server.pk])
    b = repo.commit({"index.html": "B\n"}, "B")
    repo.tag("v2")
    second = deploy(alice_api, project, servers=[server.pk], revision="v2")
    assert second["status"] == "succeeded", second["error"]
    assert (second["start_revision"], second["end_revision"]) == (a, b)
    assert second["changes"]["modified"] == ["index.html"]

    releases = alice_api.get(f"/api/v1/projects/{project.slug}/servers/{server.pk}/releases/")
    assert releases.status_code == 200
    listed = releases.json()
    assert [(r["revision"], r["live"], r["deployment"]) for r in listed] == [
        (b, True, second["id"]),
        (a, False, first["id"]),
    ]
    assert {r["deployed_by"] for r in listed} == {"alice"}
    one = alice_api.get(listed[1]["url"])
    assert one.status_code == 200 and one.json()["name"] == listed[1]["name"]
    server_body = alice_api.get(f"/api/v1/projects/{project.slug}/servers/{server.pk}/").json()
    assert server_body["live_release"]["name"] == listed[0]["name"]
    assert server_body["live_release"]["revision"] == b

    rollback_url = f"/api/v1/projects/{project.slug}/servers/{server.pk}/rollback/"
    for bad in ("no-such-release", listed[0]["name"]):
        refused = alice_api.post(rollback_url, {"release": bad}, format="json")
        assert refused.status_code == 400 and "release" in refused.json()
    created = alice_api.post(rollback_url, {}, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["kind"] == "rollback"
    assert created.json()["rollback_release"] == listed[1]["name"]
    run(created.json()["id"])
    assert alice_api.get(created.json()["url"]).json()["status"] == "succeeded"
    assert (sshd_target.deploy_path / "current" / "index.html").read_text() == "A\n"
    assert Release.objects.get(server=server, live=True).revision == a
    assert AuditEvent.objects.filter(action="rollback.created").count() == 1

    Release.objects.filter(name=listed[0]["name"]).update(removed_at=first["finished_at"])
    removed = alice_api.post(rollback_url, {"release": listed[0]["name"]}, format="json")
    assert removed.status_code == 400 and "release" in removed.json()


def test_it_undoes_a_deployment(alice_api, repo, project, sshd_target, server_factory):
    server = server_factory(project, sshd_target)
    deploy(alice_api, project, servers=[server.pk])
    repo.commit({"index.html": "B\n"}, "B")
    second = deploy(alice_api, project, servers=[server.pk])
    response = alice_api.post(f"/api/v1/deployments/{second['id']}/rollback/")
    assert response.status_code == 201, response.content
    rollback = response.json()
    assert rollback["kind"] == "rollback" and rollback["rollback_of"] == second["id"]
    run(rollback["id"])
    assert alice_api.get(rollback["url"]).json()["status"] == "succeeded"
    assert (sshd_target.deploy_path / "current" / "index.html").read_text() == "A\n"


def test_it_previews_without_touching_the_server(
    alice_api, repo, project, sshd_target, server_factory
):
    server = server_factory(project, sshd_target, trust=False)
    preview = deploy(alice_api, project, servers=[server.pk], preview=True)
    assert preview["kind"] == Kind.PREVIEW and preview["status"] == "succeeded"
    assert preview["changes"]["added"] == ["index.html"]
    assert preview["end_revision"] == repo.head()
    assert not (sshd_target.deploy_path / "current").exists()
    refused = alice_api.post(f"/api/v1/deployments/{preview['id']}/rollback/")
    assert refused.status_code == 400 and "servers" in refused.json()


def test_it_deploys_a_group_in_its_order(alice_api, project, sshd_factory, server_factory):
    first, second = sshd_factory(), sshd_factory()
    web1 = server_factory(project, first)
    web2 = server_factory(project, second)
    group = alice_api.post(
        f"/api/v1/projects/{project.slug}/groups/",
        {"name": "production", "servers": [web2.pk, web1.pk]},
        format="json",
    )
    assert group.status_code == 201, group.content
    assert group.json()["servers"] == [web2.pk, web1.pk]
    deployment = deploy(alice_api, project, group=group.json()["id"])
    assert deployment["status"] == "succeeded", deployment["error"]
    assert [t["server"] for t in deployment["targets"]] == [web2.pk, web1.pk]
    assert deployment["group"] == group.json()["id"]
    for target in (first, second):
        assert (target.deploy_path / "current" / "index.html").exists()


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"revision": "--upload-pack=x"}, "revision"),
        ({"revision": "main..dev"}, "revision"),
        ({}, "servers"),
        ({"servers": []}, "servers"),
        ({"servers": [999999]}, "servers"),
        ({"group": 999999}, "group"),
    ],
)
def test_it_names_the_field_it_refuses(
    alice_api, project, sshd_target, server_factory, data, field
):
    server = server_factory(project, sshd_target)
    if "revision" in data:
        data = {**data, "servers": [server.pk]}
    response = alice_api.post(deployments_url(project), data, format="json")
    assert response.status_code == 400, response.content
    assert list(response.json()) == [field]
    assert not Deployment.objects.exists()


def test_it_refuses_a_server_whose_host_key_is_not_trusted(
    alice_api, project, sshd_target, server_factory
):
    server = server_factory(project, sshd_target, trust=False)
    response = alice_api.post(deployments_url(project), {"servers": [server.pk]}, format="json")
    assert response.status_code == 400
    assert "host key is not trusted" in response.json()["servers"][0]


def test_it_refuses_a_disabled_server(alice_api, project, sshd_target, server_factory):
    server = server_factory(project, sshd_target, enabled=False)
    response = alice_api.post(deployments_url(project), {"servers": [server.pk]}, format="json")
    assert response.status_code == 400
    assert "disabled" in response.json()["servers"][0]


def test_it_refuses_another_projects_server(
    alice_api, alice, project, project_factory, repo, sshd_target, server_factory
):
    other = project_factory(repo, name="Other")
    theirs = server_factory(other, sshd_target)
    response = alice_api.post(deployments_url(project), {"servers": [theirs.pk]}, format="json")
    assert response.status_code == 400 and "servers" in response.json()


def test_it_cancels_a_queued_deployment_once(alice_api, project, sshd_target, server_factory):
    server = server_factory(project, sshd_target)
    created = alice_api.post(deployments_url(project), {"servers": [server.pk]}, format="json")
    deployment_id = created.json()["id"]
    cancel_url = f"/api/v1/deployments/{deployment_id}/cancel/"
    cancelled = alice_api.post(cancel_url)
    assert cancelled.status_code == 202
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["targets"][0]["status"] == "cancelled"
    again = alice_api.post(cancel_url)
    assert again.status_code == 409 and "cancelled" in again.json()["detail"]
    run(deployment_id)
    assert Deployment.objects.get(pk=deployment_id).status == Status.CANCELLED
    assert AuditEvent.objects.filter(action="deployment.cancelled").count() == 1
    assert not (sshd_target.deploy_path / "current").exists()


def test_it_lists_deployments_newest_first_a_page_at_a_time(
    alice_api, project, sshd_target, server_factory
):
    server = server_factory(project, sshd_target)
    ids = [
        alice_api.post(deployments_url(project), {"servers": [server.pk]}, format="json").json()[
            "id"
        ]
        for _ in range(3)
    ]
    page = alice_api.get(deployments_url(project) + "?page_size=2").json()
    assert page["count"] == 3
    assert [d["id"] for d in page["results"]] == [ids[2], ids[1]]
    assert page["next"].startswith(settings.BASE_URL)
    rest = alice_api.get(page["next"]).json()
    assert [d["id"] for d in rest["results"]] == [ids[0]] and rest["next"] is None
    assert "steps" not in page["results"][0]


def test_a_viewer_cannot_deploy_roll_back_or_cancel(
    alice_api, bob_api, bob, repo, project, sshd_target, server_factory
):
    server = server_factory(project, sshd_target)
    done = deploy(alice_api, project, servers=[server.pk])
    repo.commit({"index.html": "B\n"}, "B")
    queued = alice_api.post(deployments_url(project), {"servers": [server.pk]}, format="json")
    count = Deployment.objects.count()
    responses = {
        "deploy": bob_api.post(deployments_url(project), {"servers": [server.pk]}, format="json"),
        "preview": bob_api.post(
            deployments_url(project), {"servers": [server.pk], "preview": True}, format="json"
        ),
        "server rollback": bob_api.post(
            f"/api/v1/projects/{project.slug}/servers/{server.pk}/rollback/"
        ),
        "rollback": bob_api.post(f"/api/v1/deployments/{done['id']}/rollback/"),
        "cancel": bob_api.post(f"/api/v1/deployments/{queued.json()['id']}/cancel/"),
    }
    assert {name: r.status_code for name, r in responses.items()} == dict.fromkeys(responses, 403)
    assert Deployment.objects.count() == count
    # Reading is fine.
    assert bob_api.get(f"/api/v1/deployments/{done['id']}/").status_code == 200
    assert bob_api.get(f"/api/v1/deployments/{done['id']}/log/").status_code == 200
    assert bob_api.get(deployments_url(project)).status_code == 200

    make_deployer(project, bob)
    assert bob_api.post(f"/api/v1/deployments/{queued.json()['id']}/cancel/").status_code == 202


def test_someone_outside_the_project_finds_nothing(
    alice_api, charlie_api, project, sshd_target, server_factory
):
    server = server_factory(project, sshd_target)
    done = deploy(alice_api, project, servers=[server.pk])
    for response in (
        charlie_api.get(f"/api/v1/deployments/{done['id']}/"),
        charlie_api.get(f"/api/v1/deployments/{done['id']}/log/"),
        charlie_api.post(f"/api/v1/deployments/{done['id']}/rollback/"),
        charlie_api.post(f"/api/v1/deployments/{done['id']}/cancel/"),
        charlie_api.get(deployments_url(project)),
        charlie_api.post(deployments_url(project), {"servers": [server.pk]}, format="json"),
        charlie_api.get(f"/api/v1/projects/{project.slug}/servers/{server.pk}/releases/"),
        charlie_api.post(f"/api/v1/projects/{project.slug}/servers/{server.pk}/rollback/"),
    ):
        assert response.status_code == 404
    assert Deployment.objects.count() == 1
