"""Errors a person can act on, produced by real targets: permission denied, disk full."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from builds.engine import pipeline
from tests.support.engine import RecordingReporter, deploy_spec, server_for
from tests.support.sshd import ensure_unprivileged_user


def test_it_names_permission_denied_on_the_deploy_path(sshd_factory, git_repo_factory, tmp_path):
    user = ensure_unprivileged_user()
    target = sshd_factory(username=user)
    forbidden = target.root / "owned-by-root"
    forbidden.mkdir(mode=0o755)
    repo = git_repo_factory()
    sha = repo.commit({"a.txt": "a\n"})
    server = server_for(target, deploy_path=str(forbidden / "app"))
    result = pipeline.deploy(deploy_spec(repo, tmp_path, [server], sha), RecordingReporter())
    error = result.servers[0].error
    assert error is not None
    assert error.code == "permission_denied"
    assert f"127.0.0.1:{target.port}" in str(error)
    assert not (forbidden / "app").exists()
    app = forbidden / "app"
    assert f"the login user {user} may not write {app}" in str(error)
    fix = re.search(r"as root on the server, `([^`]+)`", str(error))
    assert fix is not None, str(error)
    assert fix[1] == f"mkdir -p {app} && chown -R {user}: {app} && chmod -R u+rwX {app}"

    # The advice works: run as root (as these tests are, in CI), the deployment goes through.
    if os.geteuid() == 0:
        subprocess.run(["sh", "-c", fix[1]], check=True)
        again = pipeline.deploy(deploy_spec(repo, tmp_path, [server], sha), RecordingReporter())
        assert again.ok, again.servers[0].error
        assert (app / "current" / "a.txt").read_text() == "a\n"


def test_it_names_the_path_inside_the_deploy_path_that_the_user_may_not_write(
    sshd_factory, git_repo_factory, tmp_path
):
    user = ensure_unprivileged_user()
    target = sshd_factory(username=user)
    releases = target.deploy_path / "releases"
    releases.mkdir(mode=0o755)  # owned by root, not by the login user
    repo = git_repo_factory()
    sha = repo.commit({"a.txt": "a\n"})
    server = server_for(target)
    result = pipeline.deploy(deploy_spec(repo, tmp_path, [server], sha), RecordingReporter())
    error = result.servers[0].error
    assert error is not None and error.code == "permission_denied", error
    assert f"the login user {user} may not write {releases}/" in str(error)
    assert f"chown -R {user}: {target.deploy_path}" in str(error)


@pytest.fixture
def tiny_disk(sshd_target):
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI runs as root: the disk-full test mounts a small tmpfs")
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    # Inside the target's folder, which its (unprivileged) user can reach.
    mount_point = sshd_target.root / "tiny"
    mount_point.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount_point)], check=True
    )
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=True)


def test_it_names_a_full_disk_and_leaves_current_alone(
    sshd_target, git_repo_factory, tmp_path, tiny_disk
):
    repo = git_repo_factory()
    a = repo.commit({"a.txt": "small\n"}, "A")
    server = server_for(sshd_target, deploy_path=str(tiny_disk / "app"))
    first = pipeline.deploy(deploy_spec(repo, tmp_path, [server], a), RecordingReporter())
    assert first.ok, first.servers[0].error
    live = (tiny_disk / "app" / "current").resolve()
    b = repo.commit({"big.bin": os.urandom(2 * 1024 * 1024)}, "B: 2 MB")
    second = pipeline.deploy(
        deploy_spec(repo, tmp_path, [server], b, deployment_id=2), RecordingReporter()
    )
    error = second.servers[0].error
    assert error is not None
    assert error.code == "disk_full", str(error)
    assert "disk is full" in str(error).lower() and f"127.0.0.1:{sshd_target.port}" in str(error)
    assert (tiny_disk / "app" / "current").resolve() == live
    assert (live / "a.txt").read_text() == "small\n"
