"""The server page's "Break the lock" button, against a real sshd target: admins see it
(with a confirmation), breaking says what it did, and a lock still in use is refused."""

from __future__ import annotations

import pytest

from builds.engine.release import LOCK_DIR, RemoteLayout
from builds.engine.ssh import connect
from builds.models import Deployment, Status
from projects.models import AuditEvent
from tests.dashboard.support import forms_posting_to

pytestmark = pytest.mark.django_db


@pytest.fixture
def target_server(git_repo_factory, sshd_target, project_factory, server_factory):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    return server_factory(project, sshd_target)


def _lock(target, owner: str) -> None:
    with connect(target.endpoint()) as connection:
        RemoteLayout(connection, str(target.deploy_path)).lock(
            holder="Slipway deployment by alice", owner_id=owner, stale_after=3600
        )


def test_an_admin_breaks_a_lock_from_the_server_page(alice_client, sshd_target, target_server):
    page = f"/projects/{target_server.project.slug}/servers/{target_server.pk}/"
    action = f"{page}lock/break/"
    html = alice_client.get(page).content.decode()
    assert action in forms_posting_to(html)
    assert 'data-confirm="Break the deploy lock of web1?' in html

    running = Deployment.objects.create(project=target_server.project, status=Status.RUNNING)
    _lock(sshd_target, f"deployment-{running.pk}")
    refused = alice_client.post(action, follow=True)
    assert refused.redirect_chain[-1][0].endswith(f"{page}#lock")
    assert f"deployment #{running.pk} is still running" in refused.content.decode()
    assert (sshd_target.deploy_path / LOCK_DIR).exists()

    broken = alice_client.post(action, {"force": "1"}, follow=True)
    assert "The deploy lock on web1 was broken" in broken.content.decode()
    assert not (sshd_target.deploy_path / LOCK_DIR).exists()
    assert AuditEvent.objects.filter(action="server.lock_broken").count() == 1
