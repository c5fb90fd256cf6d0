"""`slipway retry` deploys a failed deployment's revision again to the servers it failed on;
`slipway abort` needs --roll-back (an abort always rolls back) and says why it is refused."""

from __future__ import annotations

from tests.cli.support import slipway


def test_retry_deploys_the_failed_server_again_and_waits(served, project, sshd_target):
    slug = str(project["slug"])
    assert slipway(served, "deploy", slug, "--wait").returncode == 0
    project["repo"].commit({"index.html": "second\n"}, "Second")
    releases = sshd_target.deploy_path / "releases"
    releases.chmod(0o555)  # its login user can no longer make a release there
    try:
        failed = slipway(served, "deploy", slug, "--wait")
    finally:
        releases.chmod(0o755)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    [latest] = project["api"].get(f"/projects/{slug}/deployments/?page_size=1").json()["results"]
    assert latest["status"] == "failed"

    retried = slipway(served, "retry", str(latest["id"]), "--wait")

    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert f"Retrying #{latest['id']} on web1" in retried.stdout
    assert (sshd_target.deploy_path / "current" / "index.html").read_text() == "second\n"
    done = slipway(served, "abort", str(latest["id"]), "--roll-back")
    assert done.returncode == 3 and "already failed" in done.stderr


def test_abort_says_it_rolls_back(served, project):
    refused = slipway(served, "abort", "1")
    assert refused.returncode == 2
    assert "--roll-back" in refused.stderr and "slipway cancel 1" in refused.stderr
