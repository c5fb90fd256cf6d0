"""`slipway approve` and `slipway deploy --gates-reason`: a deployment held by an approvals
gate cannot be approved by the one who asked; an admin's reason lets a deployment past the
gates, and it goes live on the real sshd target."""

from __future__ import annotations

import json

from tests.cli.support import slipway


def test_a_gated_deploy_waits_refuses_self_approval_and_an_admin_reason_deploys(
    served, project, sshd_target
):
    slug = str(project["slug"])
    policy = project["api"].post(
        f"/projects/{slug}/gates/",
        json={"environment": "", "approvals_required": 1, "approver_role": "deployer"},
    )
    assert policy.status_code == 201, policy.text

    held = slipway(served, "deploy", slug, "--json")

    assert held.returncode == 0, held.stdout + held.stderr
    deployment = json.loads(held.stdout)
    assert deployment["status"] == "gated"
    assert deployment["gates"]["checks"][0]["gate"] == "approvals"
    own = slipway(served, "approve", str(deployment["id"]))
    assert own.returncode != 0
    assert "403" in own.stderr and "someone else must approve" in own.stderr
    assert not (sshd_target.deploy_path / "current").exists()

    past = slipway(
        served, "deploy", slug, "--gates-reason", "the only admin, testing alone", "--wait"
    )

    assert past.returncode == 0, past.stdout + past.stderr
    assert (sshd_target.deploy_path / "current" / "index.html").read_text() == "first\n"
    first = project["api"].get(f"/deployments/{deployment['id']}/").json()
    assert first["status"] == "cancelled"  # superseded by the overriding deployment
