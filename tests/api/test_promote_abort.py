"""Promote and abort through the API: what a person decides for a running deployment, and a
manual canary driven end to end against real sshd targets."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from django.db import connection
from django.utils import timezone

from builds.models import Deployment, DeploymentTarget, Status, TargetStatus
from builds.services import deployment_abort
from builds.tasks import run_deployment
from projects.models import AuditEvent
from servers.models import Release, Server
from tests.api.conftest import make_deployer

TRUSTED = "SHA256:" + "p" * 43
# Bounds for the end-to-end test: each wait fails the test rather than hanging it.
WAIT_SECONDS = 60


def promote_url(deployment_id: int) -> str:
    return f"/api/v1/deployments/{deployment_id}/promote/"


def abort_url(deployment_id: int) -> str:
    return f"/api/v1/deployments/{deployment_id}/abort/"


@pytest.fixture
def canary_waiting(project):
    """A canary deployment as the runner leaves it while it waits: web1 switched, web2 waiting."""
    servers = [
        Server.objects.create(
            project=project,
            name=name,
            hostname=f"{name}.example",
            username="u",
            deploy_path="/srv",
            host_key_fingerprint=TRUSTED,
        )
        for name in ("web1", "web2")
    ]
    deployment = Deployment.objects.create(
        project=project, status=Status.RUNNING, strategy="canary", started_at=timezone.now()
    )
    for position, (server, status) in enumerate(
        zip(servers, (TargetStatus.SUCCEEDED, TargetStatus.WAITING), strict=True)
    ):
        DeploymentTarget.objects.create(
            deployment=deployment,
            server=server,
            position=position,
            status=status,
            reason="Waiting for promotion" if status == TargetStatus.WAITING else "",
        )
    return deployment


@pytest.mark.django_db
def test_a_deployer_promotes_a_waiting_canary_once(bob_api, bob, project, canary_waiting):
    make_deployer(project, bob)
    response = bob_api.post(promote_url(canary_waiting.pk))
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["id"] == canary_waiting.pk and body["status"] == "running"
    assert body["strategy"] == "canary"
    assert [t["status"] for t in body["targets"]] == ["succeeded", "waiting"]
    canary_waiting.refresh_from_db()
    assert canary_waiting.promote_requested_at is not None
    assert AuditEvent.objects.filter(
        project=project, actor=bob, action="deployment.promoted", target=f"deployment #{body['id']}"
    ).exists()

    again = bob_api.post(promote_url(canary_waiting.pk))
    assert again.status_code == 409 and "promoted already" in again.json()["detail"]
    assert AuditEvent.objects.filter(action="deployment.promoted").count() == 1


@pytest.mark.django_db
def test_only_a_running_deployment_with_servers_waiting_can_be_promoted(alice_api, canary_waiting):
    DeploymentTarget.objects.filter(status=TargetStatus.WAITING).update(status=TargetStatus.RUNNING)
    still_on_the_canaries = alice_api.post(promote_url(canary_waiting.pk))
    assert still_on_the_canaries.status_code == 409
    assert "no server waiting" in still_on_the_canaries.json()["detail"]
    Deployment.objects.filter(pk=canary_waiting.pk).update(status=Status.SUCCEEDED)
    finished = alice_api.post(promote_url(canary_waiting.pk))
    assert finished.status_code == 409 and "succeeded" in finished.json()["detail"]
    canary_waiting.refresh_from_db()
    assert canary_waiting.promote_requested_at is None
    assert not AuditEvent.objects.filter(action="deployment.promoted").exists()


@pytest.mark.django_db
def test_an_aborted_canary_can_no_longer_be_promoted(alice_api, alice, project, canary_waiting):
    response = alice_api.post(abort_url(canary_waiting.pk))
    assert response.status_code == 202, response.content
    canary_waiting.refresh_from_db()
    assert canary_waiting.abort_requested_at is not None
    assert AuditEvent.objects.filter(
        project=project, actor=alice, action="deployment.aborted"
    ).exists()
    again = alice_api.post(abort_url(canary_waiting.pk))
    assert again.status_code == 409 and "already" in again.json()["detail"]
    promoted = alice_api.post(promote_url(canary_waiting.pk))
    assert promoted.status_code == 409 and "aborted" in promoted.json()["detail"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("status", "detail"),
    [(Status.QUEUED, "cancel it instead"), (Status.SUCCEEDED, "already succeeded")],
)
def test_only_a_running_deployment_can_be_aborted(alice_api, canary_waiting, status, detail):
    Deployment.objects.filter(pk=canary_waiting.pk).update(status=status)
    response = alice_api.post(abort_url(canary_waiting.pk))
    assert response.status_code == 409 and detail in response.json()["detail"]
    canary_waiting.refresh_from_db()
    assert canary_waiting.abort_requested_at is None
    assert not AuditEvent.objects.filter(action="deployment.aborted").exists()


@pytest.mark.django_db
def test_a_viewer_can_neither_promote_nor_abort(bob_api, canary_waiting):
    for url in (promote_url(canary_waiting.pk), abort_url(canary_waiting.pk)):
        assert bob_api.post(url).status_code == 403
    canary_waiting.refresh_from_db()
    assert canary_waiting.promote_requested_at is None
    assert canary_waiting.abort_requested_at is None


@pytest.mark.django_db
def test_someone_outside_the_project_finds_no_deployment_to_decide(charlie_api, canary_waiting):
    for url in (promote_url(canary_waiting.pk), abort_url(canary_waiting.pk)):
        assert charlie_api.post(url).status_code == 404
    assert charlie_api.post(promote_url(999999)).status_code == 404
    canary_waiting.refresh_from_db()
    assert canary_waiting.promote_requested_at is None
    assert canary_waiting.abort_requested_at is None


# --------------------------------------------------------------------------- end to end


def _run_in_thread(deployment_id: int) -> None:
    try:
        run_deployment.apply(args=(deployment_id,))
    finally:
        # This thread's own connection; left open, it keeps the test database in use.
        connection.close()


def _wait_for(api, url: str, ready, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        body = api.get(url).json()
        if ready(body):
            return body
        assert body["status"] in ("queued", "running"), f"{what}: {body['status']} {body['error']}"
        assert time.monotonic() < deadline, f"{what} within {WAIT_SECONDS} s: {body}"
        time.sleep(0.2)


@pytest.mark.django_db(transaction=True)
def test_a_manual_canary_waits_then_goes_on_when_promoted_through_the_api(
    alice_api, repo, project, sshd_factory, server_factory
):
    targets = [sshd_factory(), sshd_factory()]
    web1, web2 = (server_factory(project, target) for target in targets)
    first = alice_api.post(
        f"/api/v1/projects/{project.slug}/deployments/",
        {"servers": [web1.pk, web2.pk]},
        format="json",
    ).json()
    run_deployment.apply(args=(first["id"],))
    assert alice_api.get(first["url"]).json()["status"] == "succeeded"
    new_revision = repo.commit({"index.html": "B\n"}, "B")

    group = alice_api.post(
        f"/api/v1/projects/{project.slug}/groups/",
        {
            "name": "production",
            "servers": [web1.pk, web2.pk],
            "strategy": "canary",
            "canary_count": 1,
            "promotion": "manual",
        },
        format="json",
    )
    assert group.status_code == 201, group.content
    created = alice_api.post(
        f"/api/v1/projects/{project.slug}/deployments/",
        {"group": group.json()["id"]},
        format="json",
    )
    assert created.status_code == 201, created.content
    deployment = created.json()
    assert deployment["strategy"] == "canary"

    worker = threading.Thread(target=_run_in_thread, args=(deployment["id"],), daemon=True)
    worker.start()
    try:
        waiting = _wait_for(
            alice_api,
            deployment["url"],
            lambda body: body["targets"][1]["status"] == "waiting",
            "web2 waiting for promotion",
        )
        assert waiting["status"] == "running"
        # The canary is switched (its result is recorded when the deployment ends).
        assert waiting["targets"][0]["status"] in {"running", "succeeded"}
        assert (targets[0].deploy_path / "current" / "index.html").read_text() == "B\n"
        assert (targets[1].deploy_path / "current" / "index.html").read_text() == "A\n"

        promoted = alice_api.post(deployment["url"] + "promote/")
        assert promoted.status_code == 202, promoted.content
        worker.join(timeout=WAIT_SECONDS)
        assert not worker.is_alive(), "the deployment did not finish after promotion"
    finally:
        if worker.is_alive():
            # Stop the runner's wait rather than leave it polling after the test.
            deployment_abort(Deployment.objects.get(pk=deployment["id"]))
            worker.join(timeout=WAIT_SECONDS)

    finished = alice_api.get(deployment["url"]).json()
    assert finished["status"] == "succeeded", finished["error"]
    assert [t["status"] for t in finished["targets"]] == ["succeeded", "succeeded"]
    for server, target in zip((web1, web2), targets, strict=True):
        assert (target.deploy_path / "current" / "index.html").read_text() == "B\n"
        assert Release.objects.get(server=server, live=True).revision == new_revision
        answer = alice_api.get(f"/api/v1/projects/{project.slug}/servers/{server.pk}/").json()
        assert answer["live_release"]["revision"] == new_revision
    assert AuditEvent.objects.filter(
        action="deployment.promoted", target=f"deployment #{deployment['id']}"
    ).exists()
