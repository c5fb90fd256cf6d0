"""Submodules are checked out (recursively, at the recorded commit) and Git LFS files arrive
as their content, not as pointers; what cannot be had fails naming the path."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil

import pytest

from builds.engine import pipeline
from builds.engine.content import ContentPolicy
from builds.engine.errors import InvalidInput, LfsUnavailable, SubmoduleUnavailable
from builds.engine.git import Mirror, resolve_submodule_url
from builds.engine.workspace import Workspace
from tests.support.engine import RecordingReporter, after, deploy_spec, server_for

IMAGE = os.urandom(50_000)
FONT = os.urandom(20_000)


def _lfs(repo, pattern: str) -> None:
    repo.git("lfs", "install", "--local")
    repo.git("lfs", "track", pattern)


def _add_submodule(repo, url: str, path: str) -> None:
    repo.git("-c", "protocol.file.allow=always", "submodule", "add", "--quiet", url, path)
    repo.git("commit", "--quiet", "-m", f"Add {path}")


@pytest.fixture
def repos(git_repo_factory):
    """app -> lib (relative URL ../lib) -> theme (absolute URL); LFS files in app and theme."""
    theme = git_repo_factory("theme")
    _lfs(theme, "*.woff")
    theme.commit({"theme.css": "body{}\n", "font.woff": FONT}, "Theme")
    lib = git_repo_factory("lib")
    lib.commit({"lib.php": "<?php // lib v1\n"}, "Lib v1")
    _add_submodule(lib, theme.url, "vendor/theme")
    app = git_repo_factory("app")
    _lfs(app, "*.png")
    app.commit({"index.php": "<?php\n", "logo.png": IMAGE}, "App")
    _add_submodule(app, "../lib", "modules/lib")
    return app, lib, theme


def _current(target):
    return target.deploy_path / "current"


def test_it_deploys_submodules_recursively_and_lfs_content(sshd_target, repos, tmp_path):
    app, lib, _ = repos
    assert app.git("cat-file", "-p", "HEAD:logo.png").startswith("version https://git-lfs")
    server = server_for(sshd_target)
    first = pipeline.deploy(deploy_spec(app, tmp_path, [server]), RecordingReporter())
    assert first.ok, first.servers[0].error
    current = _current(sshd_target)
    assert (current / "logo.png").read_bytes() == IMAGE
    assert (current / "modules/lib/lib.php").read_text() == "<?php // lib v1\n"
    assert (current / "modules/lib/vendor/theme/theme.css").read_text() == "body{}\n"
    assert (current / "modules/lib/vendor/theme/font.woff").read_bytes() == FONT
    assert not (current / "modules/lib/.git").exists()

    # A new commit in the submodule is deployed once the superproject records it; a commit
    # the superproject does not record is not.
    lib.commit({"lib.php": "<?php // lib v2\n"}, "Lib v2")
    app.git("-C", "modules/lib", "pull", "--quiet", "origin", "main")
    app.git("commit", "--quiet", "-am", "Bump lib")
    lib.commit({"lib.php": "<?php // lib v3, not recorded\n"}, "Lib v3")
    second = pipeline.deploy(
        deploy_spec(app, tmp_path, [after(first, server)], deployment_id=2), RecordingReporter()
    )
    assert second.ok, second.servers[0].error
    assert (_current(sshd_target) / "modules/lib/lib.php").read_text() == "<?php // lib v2\n"
    assert (_current(sshd_target) / "logo.png").read_bytes() == IMAGE


def test_a_removed_submodule_leaves_nothing_behind(sshd_target, repos, tmp_path):
    app, _, _ = repos
    server = server_for(sshd_target)
    first = pipeline.deploy(deploy_spec(app, tmp_path, [server]), RecordingReporter())
    assert first.ok, first.servers[0].error
    app.git("rm", "--quiet", "modules/lib")
    app.git("commit", "--quiet", "-m", "Drop lib")
    second = pipeline.deploy(
        deploy_spec(app, tmp_path, [after(first, server)], deployment_id=2), RecordingReporter()
    )
    assert second.ok, second.servers[0].error
    assert not (_current(sshd_target) / "modules").exists()


def test_submodules_and_lfs_in_an_export_beside_a_busy_workspace(sshd_target, repos, tmp_path):
    app, _, _ = repos
    spec = deploy_spec(app, tmp_path, [server_for(sshd_target)])
    mirror = Mirror(spec.build.mirror_dir, app.url, allow_local=True)
    reporter = RecordingReporter()
    with Workspace(spec.build.workspace_dir, mirror).try_lock():
        result = pipeline.deploy(spec, reporter)
    assert result.ok, result.servers[0].error
    assert "building in a fresh directory" in reporter.text
    assert (_current(sshd_target) / "modules/lib/vendor/theme/font.woff").read_bytes() == FONT
    assert (_current(sshd_target) / "logo.png").read_bytes() == IMAGE


def test_a_project_can_turn_submodules_off(sshd_target, repos, tmp_path):
    app, _, _ = repos
    spec = deploy_spec(
        app, tmp_path, [server_for(sshd_target)], build={"content": ContentPolicy(submodules=False)}
    )
    reporter = RecordingReporter()
    result = pipeline.deploy(spec, reporter)
    assert result.ok, result.servers[0].error
    assert "Submodules are off for this project; left empty: modules/lib" in reporter.text
    assert (_current(sshd_target) / "modules/lib").is_dir()
    assert list((_current(sshd_target) / "modules/lib").iterdir()) == []
    assert (_current(sshd_target) / "logo.png").read_bytes() == IMAGE


def test_a_submodule_url_the_policy_refuses_fails_naming_the_path(sshd_target, repos, tmp_path):
    app, _, _ = repos

    def refuse(url: str) -> None:
        raise InvalidInput("repository_url", f"{url} is on a refused network.")

    spec = deploy_spec(
        app, tmp_path, [server_for(sshd_target)], build={"content": ContentPolicy(check_url=refuse)}
    )
    with pytest.raises(SubmoduleUnavailable) as failed:
        pipeline.deploy(spec, RecordingReporter())
    assert "Submodule modules/lib (../lib) is refused" in str(failed.value)
    assert "refused network" in str(failed.value)
    assert not _current(sshd_target).exists()


def test_a_submodule_that_cannot_be_fetched_fails_naming_the_path(
    sshd_target, git_repo_factory, tmp_path
):
    lib = git_repo_factory("lib")
    lib.commit({"lib.php": "x\n"})
    app = git_repo_factory("app")
    app.commit({"index.php": "<?php\n"})
    _add_submodule(app, lib.url, "modules/lib")
    (lib.path / ".git").rename(lib.path / "gone")  # the submodule's repository is gone
    with pytest.raises(SubmoduleUnavailable, match="Submodule modules/lib: Could not fetch"):
        pipeline.deploy(deploy_spec(app, tmp_path, [server_for(sshd_target)]), RecordingReporter())


def test_a_missing_lfs_object_fails_naming_the_file(sshd_target, git_repo_factory, tmp_path):
    app = git_repo_factory("app")
    _lfs(app, "*.png")
    app.commit({"index.php": "<?php\n", "img/logo.png": IMAGE})
    oid = hashlib.sha256(IMAGE).hexdigest()
    (app.path / ".git/lfs/objects" / oid[:2] / oid[2:4] / oid).unlink()
    with pytest.raises(LfsUnavailable, match=r"img/logo\.png"):
        pipeline.deploy(deploy_spec(app, tmp_path, [server_for(sshd_target)]), RecordingReporter())
    assert not _current(sshd_target).exists()


def test_a_pointer_outside_an_lfs_filter_is_kept_as_committed(
    sshd_target, git_repo_factory, tmp_path
):
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{'a' * 64}\nsize 12\n"
    app = git_repo_factory("app")
    # LFS is in use, but not for this path: git would check it out as committed.
    attributes = "*.png filter=lfs diff=lfs merge=lfs -text\n"
    app.commit({".gitattributes": attributes, "docs/pointer-example.txt": pointer})
    result = pipeline.deploy(
        deploy_spec(app, tmp_path, [server_for(sshd_target)]), RecordingReporter()
    )
    assert result.ok, result.servers[0].error
    assert (_current(sshd_target) / "docs/pointer-example.txt").read_text() == pointer


@pytest.mark.parametrize(
    ("base", "url", "resolved"),
    [
        (
            "https://git.example.com/acme/shop.git",
            "../lib.git",
            "https://git.example.com/acme/lib.git",
        ),
        (
            "https://git.example.com/acme/shop.git",
            "../../other/lib.git",
            "https://git.example.com/other/lib.git",
        ),
        (
            "https://git.example.com/acme/shop.git",
            "./sub.git",
            "https://git.example.com/acme/shop.git/sub.git",
        ),
        ("git@git.example.com:acme/shop.git", "../lib.git", "git@git.example.com:acme/lib.git"),
        (
            "ssh://git@git.example.com:2222/acme/shop.git",
            "../lib.git",
            "ssh://git@git.example.com:2222/acme/lib.git",
        ),
        ("/srv/git/shop", "../lib", "/srv/git/lib"),
        (
            "https://git.example.com/acme/shop.git",
            "https://elsewhere.example/x.git",
            "https://elsewhere.example/x.git",
        ),
    ],
)
def test_it_resolves_relative_submodule_urls_like_git(base: str, url: str, resolved: str) -> None:
    assert resolve_submodule_url(base, url) == resolved


def test_a_relative_url_above_the_host_is_refused() -> None:
    with pytest.raises(InvalidInput) as refused:
        resolve_submodule_url("https://git.example.com/shop.git", "../../x.git")
    assert refused.value.field == "submodule"


def test_the_token_goes_only_to_the_repository_host(tmp_path) -> None:
    mirror = Mirror(
        tmp_path / "m.git", "https://git.example.com/acme/shop.git", https_token="tok-secret-1"
    )
    _, same = mirror.for_submodule("../lib.git")
    _, other = mirror.for_submodule("https://elsewhere.example/lib.git")
    assert same._https_secret == "tok-secret-1"
    assert other._https_secret is None
    assert dataclasses.is_dataclass(ContentPolicy)


def test_an_ssh_submodule_on_another_host_is_refused(tmp_path) -> None:
    mirror = Mirror(tmp_path / "m.git", "https://git.example.com/acme/shop.git")
    with pytest.raises(InvalidInput, match="another host"):
        mirror.for_submodule("git@elsewhere.example:acme/lib.git")
    ssh_mirror = Mirror(
        tmp_path / "s.git", "git@git.example.com:acme/shop.git", host_key="ssh-ed25519 AAAA"
    )
    _, same = ssh_mirror.for_submodule("../lib.git")
    assert same._host_key == "ssh-ed25519 AAAA"
    with pytest.raises(InvalidInput, match="another host"):
        ssh_mirror.for_submodule("git@elsewhere.example:acme/lib.git")


def test_a_worker_without_git_lfs_fails_naming_the_lfs_files(
    sshd_target, git_repo_factory, tmp_path, monkeypatch
):
    app = git_repo_factory("app")
    _lfs(app, "*.png")
    app.commit({"index.php": "<?php\n", "logo.png": IMAGE})
    # A worker where git is installed and git-lfs is not.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "git").symlink_to(shutil.which("git") or "/usr/bin/git")
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(LfsUnavailable, match=r"logo\.png .*git-lfs is not installed"):
        pipeline.deploy(deploy_spec(app, tmp_path, [server_for(sshd_target)]), RecordingReporter())


def test_the_repository_cannot_send_git_lfs_to_another_server(
    sshd_target, git_repo_factory, tmp_path
):
    # .lfsconfig is repository content: it must not choose where the worker connects.
    app = git_repo_factory("app")
    _lfs(app, "*.png")
    app.commit(
        {
            ".lfsconfig": "[lfs]\n\turl = http://127.0.0.1:9/elsewhere\n",
            "index.php": "<?php\n",
            "logo.png": IMAGE,
        }
    )
    # git-lfs reads a bare mirror's .lfsconfig from HEAD; a new mirror's HEAD is "master".
    app.git("branch", "master")
    result = pipeline.deploy(
        deploy_spec(app, tmp_path, [server_for(sshd_target)]), RecordingReporter()
    )
    assert result.ok, result.servers[0].error
    assert (_current(sshd_target) / "logo.png").read_bytes() == IMAGE


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("https://git.example.com/acme/shop.git", "https://git.example.com/acme/shop.git/info/lfs"),
        ("https://git.example.com/acme/shop", "https://git.example.com/acme/shop.git/info/lfs"),
        (
            "https://tok:secret-pw@git.example.com/a/b.git",
            "https://git.example.com/a/b.git/info/lfs",
        ),
        ("git://git.example.com/acme/shop.git", "https://git.example.com/acme/shop.git/info/lfs"),
        ("/srv/git/shop", "file:///srv/git/shop"),
    ],
)
def test_git_lfs_goes_to_the_server_it_derives_from_the_repository_url(
    tmp_path, url: str, endpoint: str
) -> None:
    assert Mirror(tmp_path / "m.git", url, allow_local=True)._lfs_endpoint() == endpoint
