"""`slipway deploy` by a deployer whose deploy rights leave the server out: refused with the
reason, exit 5 (no permission), nothing deployed."""

from __future__ import annotations

from tests.cli.support import slipway
from tests.support.processes import manage


def test_a_deployer_outside_their_rights_is_told_why(served, project, sshd_target):
    slug = str(project["slug"])
    created = manage(
        "shell",
        "-c",
        "from django.contrib.auth.models import User; "
        "User.objects.create_user('dana', password='dana-password-1')",
        env=served["env"],
    )
    assert created.returncode == 0, created.stderr
    api = project["api"]
    assert api.post(f"/projects/{slug}/members/", json={"username": "dana", "role": "deployer"})
    limited = api.patch(f"/projects/{slug}/members/dana/", json={"deploy_environments": ["qa"]})
    assert limited.status_code == 200, limited.text
    token = manage("issue_token", "dana", env=served["env"]).stdout.strip().splitlines()[-1]

    refused = slipway(served, "deploy", slug, "--server", "web1", SLIPWAY_TOKEN=token)

    assert refused.returncode == 5, refused.stdout + refused.stderr
    assert "dana may not deploy to web1" in refused.stderr
    assert "environment qa" in refused.stderr
    assert not (sshd_target.deploy_path / "current").exists()
    assert slipway(served, "deploy", slug, "--server", "web1", "--wait").returncode == 0
