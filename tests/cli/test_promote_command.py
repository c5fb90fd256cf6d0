"""`slipway promote ID --to ENVIRONMENT`: the deployment's kept build output goes to the
servers of that environment with no fetch and no build; a name that matches nothing is
refused naming `to`."""

from __future__ import annotations

from tests.cli.support import slipway


def test_promote_sends_the_kept_build_to_an_environment_and_waits(served, project, sshd_factory):
    slug, api = str(project["slug"]), project["api"]
    production = sshd_factory()
    created = api.post(
        f"/projects/{slug}/servers/",
        json={
            "name": "prod1",
            "environment": "production",
            "hostname": production.hostname,
            "port": production.port,
            "username": production.username,
            "deploy_path": str(production.deploy_path),
        },
    )
    assert created.status_code == 201, created.text
    production.authorize(api.get(f"/projects/{slug}/").json()["public_key"])
    server_id = created.json()["id"]
    check = api.post(f"/projects/{slug}/servers/{server_id}/check/").json()
    api.post(
        f"/projects/{slug}/servers/{server_id}/trust/",
        json={"fingerprint": check["host_key_fingerprint"]},
    )
    assert slipway(served, "deploy", slug, "--server", "web1", "--wait").returncode == 0
    [staged] = api.get(f"/projects/{slug}/deployments/?page_size=1").json()["results"]
    project["repo"].commit({"index.html": "moved on\n"}, "Moved on")

    promoted = slipway(served, "promote", str(staged["id"]), "--to", "production", "--wait")

    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    assert f"Promoting the build output of #{staged['id']} to prod1" in promoted.stdout
    assert "no fetch, no build" in promoted.stdout
    assert (production.deploy_path / "current" / "index.html").read_text() == "first\n"
    refused = slipway(served, "promote", str(staged["id"]), "--to", "nowhere")
    assert refused.returncode != 0 and "nowhere" in refused.stderr
