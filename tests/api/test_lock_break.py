"""lock/break/ against real sshd targets: an admin breaks a deploy lock left behind, after
Slipway has read who holds it; a lock whose deployment is still at work is refused unless
forced; every break is audited; viewers and other projects' members cannot."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest

from builds.engine.release import LOCK_DIR, RemoteLayout
from builds.engine.ssh import connect
from builds.models import Deployment, Status
from projects.models import AuditEvent, Membership, Role
from servers.models import Protocol, Server
from tests.engine.test_stopping_commands import _sleeping

pytestmark = pytest.mark.django_db


def url(server: Server) -> str:
    return f"/api/v1/projects/{server.project.slug}/servers/{server.pk}/lock/break/"


def lock(target, owner: str, holder: str = "Slipway deployment by alice") -> None:
    with connect(target.endpoint()) as connection:
        RemoteLayout(connection, str(target.deploy_path)).lock(
            holder=holder, owner_id=owner, stale_after=3600
        )


def locked(target) -> bool:
    return (target.deploy_path / LOCK_DIR).exists()


def test_an_admin_breaks_a_lock_left_by_a_finished_deployment(
    alice_api, alice, project, sshd_target, server_factory
):
    server = server_factory(project, sshd_target)
    finished = Deployment.objects.create(project=project, status=Status.FAILED)
    lock(sshd_target, f"deployment-{finished.pk}", "Slipway deployment #1 by alice")

    response = alice_api.post(url(server), {}, format="json")

    assert response.status_code == 200, response.json()
    body = response.json()
    assert body["broken"] is True
    assert body["owner"] == f"deployment-{finished.pk}"
    assert body["holder"] == "Slipway deployment #1 by alice"
    assert body["deployment_id"] == finished.pk
    assert body["since"].endswith("Z") and body["age_seconds"] >= 0
    assert not locked(sshd_target)
    event = AuditEvent.objects.get(action="server.lock_broken")
    assert (event.actor, event.target) == (alice, f"server {server.name}")
    assert event.detail["owner"] == f"deployment-{finished.pk}"
    assert event.detail["forced"] is False
    assert event.detail["path"] == str(sshd_target.deploy_path / LOCK_DIR)


def test_it_refuses_a_lock_whose_deployment_still_runs_unless_forced(
    alice_api, project, sshd_target, server_factory
):
    server = server_factory(project, sshd_target)
    running = Deployment.objects.create(project=project, status=Status.RUNNING)
    lock(sshd_target, f"deployment-{running.pk}")

    refused = alice_api.post(url(server), {}, format="json")

    assert refused.status_code == 409
    assert f"deployment #{running.pk} is still running" in refused.json()["detail"]
    assert locked(sshd_target)
    assert not AuditEvent.objects.filter(action="server.lock_broken").exists()

    forced = alice_api.post(url(server), {"force": True}, format="json")
    assert forced.status_code == 200
    assert forced.json()["broken"] is True
    assert not locked(sshd_target)
    assert AuditEvent.objects.get(action="server.lock_broken").detail["forced"] is True


def test_it_refuses_a_lock_kept_for_a_command_that_may_still_run_unless_forced(
    alice_api, project, sshd_target, server_factory
):
    server = server_factory(project, sshd_target)
    ended = Deployment.objects.create(project=project, status=Status.CANCELLED)
    lock(
        sshd_target,
        f"deployment-{ended.pk}-left-running",
        "Slipway deployment #1: a stopped command may still be running: `sleep 600` "
        "(process group 4242)",
    )

    refused = alice_api.post(url(server), {}, format="json")

    assert refused.status_code == 409
    detail = refused.json()["detail"]
    assert "`sleep 600` (process group 4242)" in detail
    assert "may still be running on the server" in detail
    assert locked(sshd_target)
    assert alice_api.post(url(server), {"force": True}, format="json").json()["broken"] is True


def test_it_breaks_a_lock_without_an_owner_and_says_when_there_is_none(
    alice_api, project, sshd_target, server_factory
):
    server = server_factory(project, sshd_target)
    nothing = alice_api.post(url(server), {}, format="json")
    assert nothing.status_code == 200
    assert nothing.json()["broken"] is False
    assert "is not locked" in nothing.json()["message"]

    lock(sshd_target, "deployment-1")
    (sshd_target.deploy_path / LOCK_DIR / "info").write_text("")
    response = alice_api.post(url(server), {}, format="json")
    assert response.json()["broken"] is True
    assert response.json()["owner"] == ""
    assert not locked(sshd_target)


def test_it_breaks_the_lock_of_a_server_deployed_in_place(
    alice_api, project, sshd_target, server_factory
):
    server = server_factory(project, sshd_target, protocol=Protocol.SFTP, atomic=False)
    (sshd_target.deploy_path / ".slipway-lock").mkdir()
    (sshd_target.deploy_path / ".slipway-lock").chmod(0o777)

    response = alice_api.post(url(server), {}, format="json")

    assert response.status_code == 200, response.json()
    assert response.json()["broken"] is True
    assert not (sshd_target.deploy_path / ".slipway-lock").exists()


def test_an_unreachable_server_is_a_409_that_says_why(
    alice_api, project, sshd_target, server_factory
):
    server = server_factory(project, sshd_target)
    sshd_target.stop()
    response = alice_api.post(url(server), {}, format="json")
    assert response.status_code == 409
    assert f"127.0.0.1:{sshd_target.port}" in response.json()["detail"]


def test_a_host_name_saved_before_it_was_checked_is_a_409_naming_it(
    alice_api, project, server_factory, sshd_target
):
    # Saved before host names were checked at save time: the idna codec refuses it.
    server = server_factory(project, sshd_target)
    Server.objects.filter(pk=server.pk).update(hostname="a" * 64 + ".example")
    response = alice_api.post(url(server), {}, format="json")
    assert response.status_code == 409, response.content
    assert "not a valid host name" in response.json()["detail"]


def test_only_admins_may_break_a_lock(
    bob_api, charlie_api, bob, project, sshd_target, server_factory
):
    server = server_factory(project, sshd_target)
    lock(sshd_target, "deployment-1")
    viewer = bob_api.post(url(server), {"force": True}, format="json")
    assert viewer.status_code == 403
    assert "You are viewer" in viewer.json()["detail"]
    Membership.objects.filter(user=bob).update(role=Role.DEPLOYER)
    assert bob_api.post(url(server), {"force": True}, format="json").status_code == 403
    assert charlie_api.post(url(server), {"force": True}, format="json").status_code == 404
    assert locked(sshd_target)


def test_breaking_a_lock_first_stops_what_its_deployment_left_running(
    alice_api, project, sshd_target, server_factory
):
    server = server_factory(project, sshd_target)
    dead = Deployment.objects.create(project=project, status=Status.RUNNING)
    owner = f"deployment-{dead.pk}"
    connection = connect(sshd_target.endpoint())
    layout = RemoteLayout(connection, str(sshd_target.deploy_path))
    layout.lock(holder="Slipway deployment by alice", owner_id=owner, stale_after=3600)
    command = threading.Thread(
        target=_run_quietly, args=(connection, "sleep 3600.05", layout.groups_file)
    )
    command.start()
    deadline = time.monotonic() + 30
    while not _sleeping("3600.05") and time.monotonic() < deadline:
        time.sleep(0.05)
    connection.close()  # the worker died; its command runs on
    command.join()
    assert _sleeping("3600.05"), "the command should have outlived its connection"

    response = alice_api.post(url(server), {"force": True}, format="json")

    assert response.status_code == 200, response.json()
    assert response.json()["broken"] is True
    assert _sleeping("3600.05") == []
    assert not locked(sshd_target)


def _run_quietly(connection, command: str, group_file: str) -> None:
    with contextlib.suppress(Exception):
        connection.run(command, group_file=group_file)
