"""The CI gate against a real sshd target and a real repository: a pushed commit waits for its
CI status, a signed GitHub status webhook releases it, and it goes live."""

from __future__ import annotations

import pytest

from builds.models import (
    CommitStatus,
    Deployment,
    GatePolicy,
    Status,
    WebhookDelivery,
    WebhookOutcome,
)
from builds.tasks import reevaluate_gates, run_deployment
from deployer.outbox import unconsumed
from tests.gates.conftest import post_github_status
from tests.webhooks import payloads

pytestmark = pytest.mark.django_db(transaction=True)


def _push(post, project, head, before, message="Ship B"):
    body = payloads.encode(
        payloads.github_push(after=head, before=before, commits=[(head, message)])
    )
    answer = post(project, body, **payloads.github_headers(body, project.webhook_secret))
    assert answer.status_code in (200, 202), answer.content
    return answer.json()


def test_it_holds_a_pushed_commit_until_its_ci_status_turns_green_then_deploys_it(
    git_repo_factory, sshd_target, project_factory, server_factory, post
):
    repo = git_repo_factory()
    first = repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    server_factory(project, sshd_target, environment="production")
    GatePolicy.objects.create(project=project, environment="production", require_ci=True)
    head = repo.commit({"index.html": "B\n"}, "Ship B")

    answer = _push(post, project, head, first)

    (deployment_id,) = answer["deployments"]
    held = Deployment.objects.get(pk=deployment_id)
    assert held.status == Status.GATED
    assert held.gates["sha"] == head
    assert [(c["gate"], c["state"]) for c in held.gates["checks"]] == [("ci", "pending")]
    assert unconsumed(f"deployment:{deployment_id}") is None  # no worker message while held
    assert not (sshd_target.deploy_path / "current").exists()

    pending = post_github_status(post, project, head, "pending")
    assert pending.json()["status"] == WebhookOutcome.RECORDED
    reevaluate_gates.apply(args=(project.pk,))
    assert Deployment.objects.get(pk=deployment_id).status == Status.GATED

    green = post_github_status(post, project, head, "success")

    assert green.status_code == 200
    assert CommitStatus.objects.get(project=project, sha=head, context="ci/test").state == "success"
    assert unconsumed(f"gates:{project.pk}") is not None
    reevaluate_gates.apply(args=(project.pk,))
    released = Deployment.objects.get(pk=deployment_id)
    assert released.status == Status.QUEUED
    assert unconsumed(f"deployment:{deployment_id}") is not None
    run_deployment.apply(args=(deployment_id,))
    deployment = Deployment.objects.get(pk=deployment_id)
    assert deployment.status == Status.SUCCEEDED, deployment.error
    assert deployment.end_revision == head
    assert (sshd_target.deploy_path / "current" / "index.html").read_text() == "B\n"
    assert "Gates passed" in "\n".join(deployment.log_lines.values_list("text", flat=True))


def test_it_refuses_a_held_deployment_when_ci_fails_and_sends_nothing(
    git_repo_factory, sshd_target, project_factory, server_factory, post
):
    repo = git_repo_factory()
    first = repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    server_factory(project, sshd_target, environment="production")
    GatePolicy.objects.create(project=project, environment="production", require_ci=True)
    head = repo.commit({"index.html": "B\n"}, "Ship B")
    (deployment_id,) = _push(post, project, head, first)["deployments"]

    post_github_status(post, project, head, "failure")
    reevaluate_gates.apply(args=(project.pk,))

    deployment = Deployment.objects.get(pk=deployment_id)
    assert (deployment.status, deployment.error_code) == (Status.FAILED, "gates")
    assert "ci/test failed" in deployment.error
    assert not (sshd_target.deploy_path / "current").exists()
    # A later push of a red commit is refused at once, with the reason on the delivery.
    again = _push(post, project, head, first, message="Ship B (pushed again)")
    assert again["status"] == WebhookOutcome.IGNORED
    assert "Gates failed" in again["reason"]
    assert WebhookDelivery.objects.filter(outcome=WebhookOutcome.RECORDED).count() == 1
