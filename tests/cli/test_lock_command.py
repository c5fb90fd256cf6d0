"""`slipway lock` and `unlock`: a locked project refuses `slipway deploy` with the reason and
the API error exit code; a rollback still runs and can lock the server it rolls back."""

from __future__ import annotations

from tests.cli.support import slipway


def test_lock_refuses_deploy_until_unlock(served, project, sshd_target):
    slug = str(project["slug"])
    locked = slipway(served, "lock", slug, "--reason", "bad migration, investigating")
    assert locked.returncode == 0, locked.stdout + locked.stderr
    assert "Locked" in locked.stdout and "bad migration, investigating" in locked.stdout

    refused = slipway(served, "deploy", slug, "--wait")
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "409" in refused.stderr and "bad migration, investigating" in refused.stderr
    assert not (sshd_target.deploy_path / "current").exists()

    assert slipway(served, "unlock", slug).returncode == 0
    assert slipway(served, "deploy", slug, "--wait").returncode == 0


def test_a_rollback_runs_on_a_locked_server_and_can_lock_it(served, project, sshd_target):
    slug = str(project["slug"])
    assert slipway(served, "deploy", slug, "--wait").returncode == 0
    first = (sshd_target.deploy_path / "current").resolve()
    project["repo"].commit({"index.html": "second\n"}, "Second")
    assert slipway(served, "deploy", slug, "--wait").returncode == 0

    back = slipway(
        served, "rollback", slug, "--server", "web1", "--lock", "second breaks the cart", "--wait"
    )

    assert back.returncode == 0, back.stdout + back.stderr
    assert (sshd_target.deploy_path / "current").resolve() == first
    server = project["api"].get(f"/projects/{slug}/servers/").json()[0]
    assert server["lock"]["reason"] == "second breaks the cart"
    again = slipway(served, "deploy", slug, "--server", "web1")
    assert again.returncode == 3 and "Server web1 is locked" in again.stderr
    assert slipway(served, "unlock", slug, "--server", "web1").returncode == 0
