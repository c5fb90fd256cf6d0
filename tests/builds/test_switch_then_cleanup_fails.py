"""A switch whose clean-up fails in the same round trip: `current` has switched, the database
must say so (docs/reliability-invariant.md)."""

from __future__ import annotations

import os

import pytest

from builds import runner, services
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
    git_repo_factory, sshd_target, project_factory, server_factory
):
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail(
                "CI runs as root: the old release needs a file its deploy user cannot remove"
            )
        pytest.skip(
            "needs root: a root-owned file in the old release, which the target's user cannot remove"
        )
    repo = git_repo_factory()
    repo.commit({"index.html": "A\n"}, "A")
    project = project_factory(repo)
    server = server_factory(project, sshd_target)
    server.keep_releases = 1
    server.save(update_fields=["keep_releases"])
    first = deploy(project, server)
    assert first.status == "succeeded", first.error
    repo.commit({"index.html": "B\n"}, "B")
    assert deploy(project, server).status == "succeeded"  # the live one, A, is never removed
    repo.commit({"index.html": "C\n"}, "C")
    # A command run as root left a file in the old release that the deploy user cannot
    # remove: the clean-up (`rm -rf releases/<old>`, in the same trip as the switch, after the
    # rename) fails for real.
    old_release = sshd_target.deploy_path / "releases" / first.targets.get().release
    made_by_root = old_release / "cache-made-by-root"
    made_by_root.mkdir()
    (made_by_root / "compiled.php").write_text("<?php\n")
    os.chown(made_by_root, 0, 0)
    made_by_root.chmod(0o755)

    second = deploy(project, server)

    current = os.readlink(sshd_target.deploy_path / "current").removeprefix("releases/")
    assert (sshd_target.deploy_path / "current" / "index.html").read_text() == "C\n"
    assert second.status == "failed" and made_by_root.exists()
    live = Release.objects.get(server=server, live=True)
    assert live.name == current, (
        f"{second.status}: {second.error!r}; current -> {current}, database live: {live.name}"
    )
