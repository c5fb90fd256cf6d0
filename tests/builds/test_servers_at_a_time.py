"""A parallel group works on as many servers at once as its ``max_parallel`` says, above five
too. Real sshd targets: each server's before-switch command waits, at a barrier, for the
others; with fewer servers at once than the group allows, the barrier is never reached."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from builds import services
from builds.models import Status
from builds.tasks import run_deployment
from projects.models import Command
from servers.models import GroupMember, ServerGroup

pytestmark = pytest.mark.django_db(transaction=True)

SERVERS = 6


def test_a_parallel_group_runs_more_than_five_servers_at_once_when_it_says_so(
    git_repo_factory, sshd_factory, project_factory, server_factory
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    group = ServerGroup.objects.create(
        project=project, name="web", strategy="parallel", max_parallel=SERVERS
    )
    for position in range(SERVERS):
        server = server_factory(project, sshd_factory(), name=f"web{position}")
        GroupMember.objects.create(group=group, server=server, position=position)
    # Where every server's login user can write (the targets may log in as another user).
    barrier = Path(tempfile.mkdtemp(prefix="slipway-barrier-"))
    barrier.chmod(0o1777)
    # Each server checks in, then waits (up to 60 s) until every server has.
    Command.objects.create(
        project=project,
        stage="before_switch",
        command=(
            f"touch {barrier}/%server%; n=0; "
            f'while [ "$(ls {barrier} | wc -l)" -lt {SERVERS} ]; do '
            "n=$((n + 1)); [ $n -lt 600 ] || exit 9; sleep 0.1; done"
        ),
    )

    deployment = services.deployment_create(project=project, group=group)
    run_deployment.apply(args=(deployment.pk,))
    deployment.refresh_from_db()

    try:
        assert deployment.status == Status.SUCCEEDED, deployment.error
        assert len(list(barrier.iterdir())) == SERVERS
    finally:
        shutil.rmtree(barrier, ignore_errors=True)
