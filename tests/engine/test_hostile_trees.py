"""Repositories and servers with hostile or odd contents: nothing outside the release is
touched, and the live release survives."""

from __future__ import annotations

import os

from builds.engine import pipeline
from tests.support.engine import RecordingReporter, after, deploy_spec, server_for, tree_digest


def test_odd_file_names_in_the_live_release_make_a_full_upload_not_a_deletion(
    sshd_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit({"public/index.html": "A\n", "app.txt": "app\n"}, "A")
    server = server_for(sshd_target)
    first = pipeline.deploy(deploy_spec(repo, tmp_path, [server], a), RecordingReporter())
    server = after(first, server)
    live = (sshd_target.deploy_path / "current").resolve()
    # What an app saving uploads under their own names could leave in its release.
    (live / "public\tupload.txt").write_text("tab\n")
    weird = live / "x\n.."
    weird.mkdir()
    (weird / f"{live.name}\tq").write_text("newline\n")
    snapshot = tree_digest(live)

    b = repo.commit({"public/index.html": "B\n"}, "B")
    reporter = RecordingReporter()
    second = pipeline.deploy(deploy_spec(repo, tmp_path, [server], b, deployment_id=2), reporter)
    assert second.ok, second.servers[0].error
    assert "(full upload)" in reporter.text
    assert live.is_dir() and tree_digest(live) == snapshot, "the previous release is untouched"
    current = (sshd_target.deploy_path / "current").resolve()
    assert (current / "public" / "index.html").read_text() == "B\n"
    assert (current / "app.txt").read_text() == "app\n"


def test_a_committed_symlink_above_a_config_file_is_refused(
    sshd_target, git_repo_factory, tmp_path
):
    outside = sshd_target.root / "web-root"
    outside.mkdir()
    os.chmod(outside, 0o777)  # noqa: S103 (the deploy user must be able to write there)
    repo = git_repo_factory()
    sha = repo.commit({"index.html": "A\n"}, "A", symlinks={"config": str(outside)})
    server = server_for(sshd_target)
    spec = deploy_spec(
        repo,
        tmp_path,
        [server],
        sha,
        config_files=(pipeline.ConfigFileSpec(path="config/.env", body="DB_PASSWORD=hunter2\n"),),
        shared_paths=("config/storage/",),
    )
    result = pipeline.deploy(spec, RecordingReporter())
    error = result.servers[0].error
    assert error is not None
    assert "config is a symbolic link" in str(error)
    assert list(outside.iterdir()) == [], "nothing was written through the link"
    assert not (sshd_target.deploy_path / "current").exists()
