"""An ssh repository's host key: checked, trusted by an admin, then required and enforced,
against a real sshd on loopback serving a real git repository."""

from __future__ import annotations

import subprocess

import pytest

from builds import services
from builds.models import Status
from builds.tasks import run_deployment
from projects.models import AuditEvent
from projects.services import project_update
from tests.support.gitrepos import GitRepo
from tests.support.sshd import generate_key_pair

pytestmark = pytest.mark.django_db(transaction=True)

WRONG = "SHA256:" + "A" * 43


@pytest.fixture
def ssh_project(project, sshd_target, settings):
    # The test's Git server is on loopback, which the operator must allow for repositories.
    settings.ALLOW_PRIVATE_REPOSITORIES = True
    """Alice's project, its repository served over ssh by the target's login user."""
    origin = GitRepo(sshd_target.root / "repos" / "shop")
    origin.commit({"index.html": "over ssh\n"}, "Start")
    subprocess.run(["chown", "-R", sshd_target.username, str(origin.path)], check=True)
    sshd_target.authorize(project.public_key)
    project.repository_url = (
        f"ssh://{sshd_target.username}@127.0.0.1:{sshd_target.port}{origin.path}"
    )
    project.save()
    return project


def _url(project, action: str) -> str:
    return f"/api/v1/projects/{project.slug}/repository/{action}/"


def _deploy(project, server, user):
    deployment = services.deployment_create(project=project, servers=[server], user=user)
    run_deployment.apply(args=(deployment.pk,))
    deployment.refresh_from_db()
    return deployment


def test_it_shows_the_key_then_trusts_only_the_offered_one(
    alice_api, alice, bob_api, ssh_project, sshd_target
):
    check = alice_api.post(_url(ssh_project, "check")).json()
    assert check["ssh"] is True and check["trusted"] is False
    assert check["address"] == f"127.0.0.1:{sshd_target.port}"
    assert check["host_key_fingerprint"] == sshd_target.host_key_fingerprint
    assert check["host_key_type"] == "ssh-ed25519"
    assert "not trusted yet" in check["error"]

    wrong = alice_api.post(_url(ssh_project, "trust"), {"fingerprint": WRONG}, format="json")
    assert wrong.status_code == 400
    (message,) = wrong.json()["fingerprint"]
    assert WRONG in message and sshd_target.host_key_fingerprint in message

    offered = {"fingerprint": sshd_target.host_key_fingerprint}
    assert bob_api.post(_url(ssh_project, "trust"), offered, format="json").status_code == 403
    trusted = alice_api.post(_url(ssh_project, "trust"), offered, format="json")
    assert trusted.status_code == 200, trusted.content
    assert trusted.json()["repository_host_key_fingerprint"] == sshd_target.host_key_fingerprint
    event = AuditEvent.objects.get(action="repository_host_key.trusted")
    assert event.actor == alice and event.detail["fingerprint"] == sshd_target.host_key_fingerprint
    after = alice_api.post(_url(ssh_project, "check")).json()
    assert after["trusted"] is True and after["error"] == ""


def test_a_deployment_needs_the_trusted_key_and_refuses_a_changed_one(
    alice_api, alice, ssh_project, sshd_target, server_factory, tmp_path
):
    server = server_factory(ssh_project, sshd_target)

    untrusted = _deploy(ssh_project, server, alice)
    assert untrusted.status == Status.FAILED
    assert untrusted.error_code == "host_key_not_trusted"
    assert sshd_target.host_key_fingerprint in untrusted.error
    assert "repository settings" in untrusted.error

    alice_api.post(
        _url(ssh_project, "trust"),
        {"fingerprint": sshd_target.host_key_fingerprint},
        format="json",
    )
    ssh_project.refresh_from_db()
    deployed = _deploy(ssh_project, server, alice)
    assert deployed.status == Status.SUCCEEDED, deployed.error
    assert (sshd_target.deploy_path / "current" / "index.html").read_text() == "over ssh\n"

    other = generate_key_pair(tmp_path / "keys", "other-host")
    ssh_project.repository_host_key = " ".join(other.public_key.split()[:2])
    ssh_project.save()
    changed = _deploy(ssh_project, server, alice)
    assert changed.status == Status.FAILED
    assert changed.error_code == "host_key_mismatch"
    assert f"127.0.0.1:{sshd_target.port}" in changed.error
    assert other.fingerprint in changed.error and sshd_target.host_key_fingerprint in changed.error


def test_a_new_repository_host_forgets_the_trusted_key(alice, ssh_project, sshd_target):
    project_update(project=ssh_project, actor=alice, branch="main")
    ssh_project.repository_host_key = (
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    )
    ssh_project.save()
    same_host = ssh_project.repository_url.replace("/shop", "/shop2")
    project_update(project=ssh_project, actor=alice, repository_url=same_host)
    assert ssh_project.repository_host_key != ""
    project_update(project=ssh_project, actor=alice, repository_url="git@git.example.com:a/b.git")
    assert ssh_project.repository_host_key == ""
