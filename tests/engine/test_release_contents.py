"""A release holds the build output plus today's config files and shared links, nothing more."""

from __future__ import annotations

import dataclasses

from builds.engine import pipeline
from builds.engine.specs import ConfigFileSpec
from tests.support.engine import RecordingReporter, after, deploy_spec, server_for


def _deploy(repo, tmp_path, server, revision, deployment_id, **overrides):
    result = pipeline.deploy(
        deploy_spec(repo, tmp_path, [server], revision, deployment_id=deployment_id, **overrides),
        RecordingReporter(),
    )
    assert result.ok, [r.error for r in result.servers]
    return result, after(result, server)


def test_config_files_and_shared_paths_removed_from_the_settings_are_gone_from_the_next_release(
    sshd_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit({"index.html": "A\n"}, "A")
    server = server_for(sshd_target)
    configured = {
        "config_files": (ConfigFileSpec(path="config/app.env", body="KEY=value\n"),),
        "shared_paths": ("storage/", "uploads.db"),
    }
    _, server = _deploy(repo, tmp_path, server, a, 1, **configured)
    live = sshd_target.deploy_path / "current"
    assert (live / "config" / "app.env").read_text() == "KEY=value\n"
    assert (live / "storage").is_symlink() and (live / "uploads.db").is_symlink()
    (live / "storage" / "photo.jpg").write_text("user data\n")
    # A person edits the config file on the server: drift, which must not bring it back either.
    (live / "config" / "app.env").write_text("KEY=edited\n")

    b = repo.commit({"index.html": "B\n"}, "B")
    _, server = _deploy(repo, tmp_path, server, b, 2, shared_paths=("uploads.db",))

    release = live.resolve()
    assert release.name == server.live_release
    assert not (release / "config" / "app.env").exists()
    assert not (release / "storage").exists() and not (release / "storage").is_symlink()
    assert (release / "uploads.db").is_symlink(), "a shared path still configured stays linked"
    assert (release / "index.html").read_text() == "B\n"
    shared = sshd_target.deploy_path / "shared"
    assert (shared / "storage" / "photo.jpg").read_text() == "user data\n", "shared data stays"

    c = repo.commit({"index.html": "C\n", "storage/README": "from the repository\n"}, "C")
    _, server = _deploy(repo, tmp_path, server, c, 3)
    release = live.resolve()
    assert not (release / "uploads.db").exists() and not (release / "uploads.db").is_symlink()
    assert (release / "storage" / "README").read_text() == "from the repository\n", (
        "a path no longer shared is the repository's again"
    )
    assert sorted(p.name for p in release.iterdir()) == ["index.html", "storage"]


def test_a_config_only_deployment_also_drops_config_files_no_longer_configured(
    sshd_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit({"index.html": "A\n"}, "A")
    server = server_for(sshd_target)
    files = (
        ConfigFileSpec(path="one.env", body="1\n"),
        ConfigFileSpec(path="two.env", body="2\n"),
    )
    _, server = _deploy(repo, tmp_path, server, a, 1, config_files=files)
    result = pipeline.deploy(
        dataclasses.replace(
            deploy_spec(repo, tmp_path, [server], a, deployment_id=2, config_files=files[1:]),
            config_only=True,
        ),
        RecordingReporter(),
    )
    assert result.ok, [r.error for r in result.servers]
    release = (sshd_target.deploy_path / "current").resolve()
    assert sorted(p.name for p in release.iterdir()) == ["index.html", "two.env"]
