"""Scaled out: with Redis away, a new deployment is recorded, its start message waits, and the
Pending work page says why; once Redis is back the relay sends it."""

from __future__ import annotations

import pytest

from builds import services
from deployer import health, outbox
from tests.dashboard.support import signed_in

pytestmark = pytest.mark.django_db(transaction=True)


def test_it_says_the_message_waits_for_the_broker_and_sends_it_when_it_is_back(
    own_broker, site_admin, git_repo_factory, sshd_target, project_factory, server_factory
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"})
    project = project_factory(repo)
    server = server_factory(project, sshd_target)
    own_broker.stop()

    deployment = services.deployment_create(project=project, servers=[server])

    health.cluster_state(fresh=True)
    rows = signed_in(site_admin).get("/pending/?format=json").json()["deployments"]
    (row,) = rows
    assert row["id"] == deployment.pk
    assert row["message"]["state"] == "unsent"
    assert row["message"]["attempts"] == 1
    assert row["message"]["last_error"]
    assert row["why"].startswith("Its start message is not sent yet (the broker does not answer;")

    own_broker.start()
    assert outbox.relay() == 1
    health.cluster_state(fresh=True)
    (row,) = signed_in(site_admin).get("/pending/?format=json").json()["deployments"]
    assert row["message"]["state"] == "sent"
    assert (
        row["why"]
        == "Sent; no live worker consumes the deployments queue: start one (docs/reliability-invariant.md)"
    )
