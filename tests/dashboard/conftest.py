"""Dashboard fixtures: the personas' browsers sessions, a project with history, and the
end-to-end bed (a real `manage.py serve`, Debian's Chromium through Playwright).

Alice is admin of the project, Bob is on her team (a viewer unless a test says otherwise),
Charlie is no member at all.
"""

from __future__ import annotations

import pytest
from django.utils import timezone

from builds.models import Deployment, DeploymentTarget, LogLine, Status, Step, TargetStatus
from projects.models import Membership, Role
from projects.services import project_create
from servers.models import Release, Server
from tests.dashboard.support import FIRST_SHA, SECOND_SHA, TRUSTED


@pytest.fixture
def project(alice, bob):
    """Alice's project (never fetched: the repository does not exist), Bob a viewer on it."""
    project = project_create(
        owner=alice, name="Shop", repository_url="https://git.example.com/acme/shop.git"
    )
    Membership.objects.create(project=project, user=bob, role=Role.VIEWER)
    return project


@pytest.fixture
def server(project):
    return Server.objects.create(
        project=project,
        name="web1",
        hostname="web1.example.com",
        username="deploy",
        deploy_path="/srv/shop",
        environment="production",
        host_key_fingerprint=TRUSTED,
    )


@pytest.fixture
def history(project, server, alice):
    """Two successful deployments of web1: the second one's release is live."""
    deployments = []
    for number, sha in enumerate((FIRST_SHA, SECOND_SHA), start=1):
        started = timezone.now()
        deployment = Deployment.objects.create(
            project=project,
            status=Status.SUCCEEDED,
            triggered_by=alice,
            end_revision=sha,
            started_at=started,
            finished_at=started,
            commits=[
                {
                    "sha": sha,
                    "author": "Alice",
                    "date": started.isoformat(),
                    "subject": f"Change {number}",
                }
            ],
            changes={"added": ["index.html"], "modified": [], "deleted": [], "bytes": 120},
            log_seq=2,
        )
        DeploymentTarget.objects.create(
            deployment=deployment,
            server=server,
            status=TargetStatus.SUCCEEDED,
            release=f"2026112{number}-101502123-{sha[:7]}",
            files_total=1,
            files_done=1,
            bytes_total=120,
            bytes_done=120,
        )
        Step.objects.create(
            deployment=deployment, name="build", status=TargetStatus.SUCCEEDED, finished_at=started
        )
        LogLine.objects.bulk_create(
            LogLine(deployment=deployment, seq=seq, text=f"line {seq}") for seq in (1, 2)
        )
        Release.objects.filter(server=server).update(live=False)
        Release.objects.create(
            server=server,
            name=f"2026112{number}-101502123-{sha[:7]}",
            revision=sha,
            deployment=deployment,
            live=True,
        )
        deployments.append(deployment)
    return deployments


@pytest.fixture
def running(project, server, alice):
    """A deployment of web1 that is running now."""
    deployment = Deployment.objects.create(
        project=project,
        status=Status.RUNNING,
        triggered_by=alice,
        started_at=timezone.now(),
        stage="build",
    )
    DeploymentTarget.objects.create(
        deployment=deployment, server=server, status=TargetStatus.RUNNING
    )
    return deployment


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    # Each phase's report on the test item, so that a fixture can tell after the test body
    # whether it failed (the browser tests save a screenshot then).
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
