"""A switch whose clean-up fails in the same round trip: `current` has switched, the database
must say so (docs/reliability-invariant.md)."""

from __future__ import annotations

import os

import pytest

from builds import runner, services
from builds.engine.release import RemoteLayout
from builds.models import Deployment
from servers.models import Release

pytestmark = pytest.mark.django_db(transaction=True)


def deploy(project, server) -> Deployment:
    deployment = services.deployment_create(project=project, servers=[server])
    claimed = services.deployment_claim(deployment.pk, worker="celery@test")
    assert claimed is not None
    runner.run(claimed)
    deployment.refresh_from_db()
    return deployment


def test_a_release_switched_before_its_clean_up_failed_is_recorded_live(
    git_repo_factory, sshd_target, project_factory, server_factory, monkeypatch
):
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    server = server_factory(project, sshd_target)
    first = deploy(project, server)
    assert first.status == "succeeded", first.error
    repo.commit({"index.html": "B\n"}, "B")
    # `rm -rf releases/<old>` refused (a file a command made as root, an I/O error...): the
    # clean-up runs after the rename, in the same script (switch_and_clean_up).
    monkeypatch.setattr(
        RemoteLayout,
        "_clean_up_script",
        lambda self, **_: "echo 'rm: cannot remove releases/old: Permission denied' >&2; exit 1\n",
    )

    second = deploy(project, server)

    current = os.readlink(sshd_target.deploy_path / "current").removeprefix("releases/")
    assert (sshd_target.deploy_path / "current" / "index.html").read_text() == "B\n"
    live = Release.objects.get(server=server, live=True)
    assert live.name == current, (
        f"{second.status}: {second.error!r}; current -> {current}, database live: {live.name}"
    )
