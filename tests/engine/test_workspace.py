"""The persistent workspace against real git repositories, compared with Mirror.export."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from builds.engine import manifest as manifest_module
from builds.engine.errors import InternalError, InvalidInput, RevisionNotFound
from builds.engine.git import Mirror
from builds.engine.manifest import HashCache, Manifest
from builds.engine.workspace import Workspace
from tests.support.gitrepos import GitRepo, GitRepoFactory

Snapshot = dict[str, tuple[str, bytes | str, int]]


@pytest.fixture
def origin(git_repo_factory: GitRepoFactory) -> GitRepo:
    return git_repo_factory("origin")


@pytest.fixture
def mirror(origin: GitRepo, tmp_path: Path) -> Mirror:
    return Mirror(tmp_path / "mirror.git", origin.url, allow_local=True)


@pytest.fixture
def workspace(mirror: Mirror, tmp_path: Path) -> Iterator[Workspace]:
    """A workspace whose lock the test holds."""
    workspace = Workspace(tmp_path / "project" / "workspace", mirror)
    with workspace.try_lock() as locked:
        assert locked
        yield workspace


def _snapshot(root: Path, *, leave_out: tuple[str, ...] = ()) -> Snapshot:
    """Every path under root: ("file", content, mode), ("link", target, 0) or ("dir", "", 0)."""
    found: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            relative = path.relative_to(root).as_posix()
            if relative.startswith(leave_out):
                continue
            if path.is_symlink():
                found[relative] = ("link", os.readlink(path), 0)
            elif path.is_dir():
                found[relative] = ("dir", "", 0)
            else:
                found[relative] = ("file", path.read_bytes(), stat.S_IMODE(path.lstat().st_mode))
    return found


def _export(mirror: Mirror, sha: str, tmp_path: Path, subdirectory: str | None = None) -> Snapshot:
    dest = tmp_path / "exports" / sha
    mirror.export(sha, dest, subdirectory)
    return _snapshot(dest)


def _remove_folder_in(repo: GitRepo, relative: str) -> None:
    shutil.rmtree(repo.path / relative)


def _pretend_to_build(root: Path, outside: Path) -> None:
    """What build commands do to a workspace, good and bad (every revision has these paths)."""
    # Output and caches, some of it where the next revision has files.
    for relative, content in {
        "public/build/app.js": "compiled",
        "node_modules/left-pad/index.js": "module.exports = pad",
        "storage.log": "noise",
        "vendor/acme/lib.php": "<?php",
        "vendor/acme/.git/HEAD": "ref: refs/heads/main\n",
        ".git/HEAD": "ref: refs/heads/main\n",
        "src/.git": "gitdir: /elsewhere\n",
    }.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(content)
    (root / "empty-output").mkdir(exist_ok=True)
    # Tracked files edited (same size, mtime put back), deleted, chmodded; a folder swapped
    # for a symlink that git must not write through.
    edited = root / "was_link_target.txt"
    before = edited.stat()
    edited.write_bytes(edited.read_bytes().upper())
    os.utime(edited, ns=(before.st_atime_ns, before.st_mtime_ns))
    (root / "src" / "main.py").unlink()
    (root / "config.ini").chmod(0o600)
    (root / "bin" / "deploy").chmod(0o700)
    shutil.rmtree(root / "assets")
    (root / "assets").symlink_to(outside, target_is_directory=True)


# --------------------------------------------------------------------------- equivalence


def test_it_matches_an_export_revision_after_revision_whatever_a_build_did(
    origin: GitRepo, mirror: Mirror, workspace: Workspace, tmp_path: Path
) -> None:
    first = origin.commit(
        {
            "README.md": "# Shop $Format:%H$\n",
            "config.ini": "debug=false\n",
            "src/main.py": "print('v1')\n",
            "src/old_name.py": "renamed later\n",
            "assets/app.css": "body{}",
            "was_file": "becomes a folder",
            "was_folder/inner.txt": "becomes a file",
            "was_link_target.txt": "target",
            "bin/deploy": "#!/bin/sh\n",
            ".gitattributes": "config.ini export-ignore\nREADME.md export-subst\n",
        },
        "First",
        executable=["bin/deploy"],
        symlinks={"current": "src/main.py", "was_link": "was_link_target.txt"},
    )
    _remove_folder_in(origin, "was_folder")
    second = origin.commit(
        {
            "src/main.py": "print('v2')\n",
            "src/old_name.py": None,
            "src/new_name.py": "renamed later\n",
            "was_file": None,
            "was_file/inner.txt": "now a folder",
            "was_folder": "now a file",
            "was_link": "now a file",
            "public/build/app.js": "committed build",
        },
        "Second",
        symlinks={"current": "src/new_name.py", "README.md": "src/main.py"},
    )
    (origin.path / "bin" / "deploy").chmod(0o644)
    _remove_folder_in(origin, "was_file")
    (origin.path / "was_folder").unlink()
    third = origin.commit(
        {"was_file": "a file again", "was_folder/inner.txt": "a folder again", "README.md": "#\n"},
        "Third",
    )
    mirror.fetch()
    outside = tmp_path / "outside"
    outside.mkdir()

    for sha in (first, second, third, first, third):
        root = workspace.checkout(sha, keep=["node_modules"])

        assert _snapshot(root, leave_out=("node_modules",)) == _export(mirror, sha, tmp_path)
        _pretend_to_build(root, outside)

    assert (root / "node_modules" / "left-pad" / "index.js").read_text() == "module.exports = pad"
    assert list(outside.iterdir()) == []


def test_it_checks_out_the_whole_tree_for_a_subdirectory_build(
    origin: GitRepo, mirror: Mirror, workspace: Workspace, tmp_path: Path
) -> None:
    sha = origin.commit({"site/index.html": "<h1>", "site/css/app.css": "b{}", "api/go.mod": "m"})
    mirror.fetch()

    root = workspace.checkout(sha)

    assert _snapshot(root / "site") == _export(mirror, sha, tmp_path, subdirectory="site")
    assert (root / "api" / "go.mod").is_file()


def test_it_turns_a_submodule_into_an_empty_folder_like_an_export(
    git_repo_factory: GitRepoFactory,
    origin: GitRepo,
    mirror: Mirror,
    workspace: Workspace,
    tmp_path: Path,
) -> None:
    library = git_repo_factory("library")
    library.commit({"lib.txt": "library"})
    origin.commit({"app.txt": "app"})
    origin.git(
        "-c", "protocol.file.allow=always", "submodule", "add", "--quiet", library.url, "lib"
    )
    sha = origin.commit({}, "Add submodule")
    mirror.fetch()

    root = workspace.checkout(sha)

    assert _snapshot(root) == _export(mirror, sha, tmp_path)
    assert (root / "lib").is_dir()


# --------------------------------------------------------------------------- what is rewritten


def test_it_rewrites_only_the_files_that_differ(
    origin: GitRepo, mirror: Mirror, workspace: Workspace
) -> None:
    files = {f"pkg{index % 5}/module{index}.py": f"value = {index}\n" for index in range(40)}
    first = origin.commit({**files, "gone.txt": "bye"})
    second = origin.commit({"pkg1/module1.py": "value = 'changed'\n", "gone.txt": None})
    mirror.fetch()
    root = workspace.checkout(first)
    before = {path: (root / path).stat() for path in files}

    workspace.checkout(second)

    rewritten = {
        path
        for path, status in before.items()
        if (root / path).stat().st_ino != status.st_ino
        or (root / path).stat().st_mtime_ns != status.st_mtime_ns
    }
    assert rewritten == {"pkg1/module1.py"}
    assert not (root / "gone.txt").exists()


def test_it_lets_the_next_manifest_read_only_the_files_that_changed(
    origin: GitRepo, mirror: Mirror, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(manifest_module, "RACY_WINDOW_NS", 50_000_000)
    files = {f"lib/module{index}.py": f"value = {index}\n" for index in range(30)}
    first = origin.commit(files)
    second = origin.commit({"lib/module7.py": "value = 'seven'\n", "lib/new.py": "new\n"})
    mirror.fetch()
    root = workspace.checkout(first)
    time.sleep(0.1)
    cache = HashCache()
    Manifest.build(root, cache=cache)
    cache.save(workspace.hash_cache_path)

    workspace.checkout(second)
    time.sleep(0.1)
    cache = HashCache.load(workspace.hash_cache_path)
    manifest = Manifest.build(root, cache=cache)

    assert manifest == Manifest.build(root)
    assert (cache.hits, cache.misses) == (29, 2)


@pytest.mark.parametrize("edited", ["in the second of the checkout", "seconds later"])
def test_it_restores_a_tracked_file_edited_without_changing_its_size_or_mtime(
    edited: str, origin: GitRepo, mirror: Mirror, workspace: Workspace
) -> None:
    sha = origin.commit({"config.php": "<?php return ['debug' => false];\n"})
    mirror.fetch()
    root = workspace.checkout(sha)
    target = root / "config.php"
    before = target.stat()
    if edited == "seconds later":
        # Once the index is newer than the file, git trusts its stat data instead of
        # comparing contents ("racily clean" entries): only the ctime gives the edit away.
        time.sleep(1.05 - time.time() % 1)
        workspace.checkout(sha)

    target.write_text("<?php return ['debug' =>  true];\n")
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (target.stat().st_size, target.stat().st_ino) == (before.st_size, before.st_ino)
    workspace.checkout(sha)

    assert target.read_text() == "<?php return ['debug' => false];\n"


def test_it_restores_permissions_a_build_changed_in_the_second_of_the_checkout(
    origin: GitRepo, mirror: Mirror, workspace: Workspace
) -> None:
    sha = origin.commit(
        {"secret.php": "<?php", "run.sh": "#!/bin/sh\n", "notes.txt": "n", "tool": "#!/bin/sh\n"},
        executable=["run.sh", "tool"],
    )
    mirror.fetch()
    root = workspace.checkout(sha)

    (root / "secret.php").chmod(0o600)
    (root / "run.sh").chmod(0o4700)
    (root / "notes.txt").chmod(0o755)
    (root / "tool").chmod(0o644)
    workspace.checkout(sha)

    assert _snapshot(root) == {
        "secret.php": ("file", b"<?php", 0o644),
        "run.sh": ("file", b"#!/bin/sh\n", 0o755),
        "notes.txt": ("file", b"n", 0o644),
        "tool": ("file", b"#!/bin/sh\n", 0o755),
    }


def test_it_writes_files_with_the_same_modes_whatever_the_umask(
    origin: GitRepo, mirror: Mirror, workspace: Workspace
) -> None:
    sha = origin.commit({"a.txt": "a", "bin/run": "#!/bin/sh\n"}, executable=["bin/run"])
    mirror.fetch()
    previous = os.umask(0o077)
    try:
        root = workspace.checkout(sha)
    finally:
        os.umask(previous)

    assert stat.S_IMODE((root / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((root / "bin" / "run").stat().st_mode) == 0o755


# --------------------------------------------------------------------------- the build cache


def test_it_keeps_cache_paths_and_removes_every_other_build_output(
    origin: GitRepo, mirror: Mirror, workspace: Workspace
) -> None:
    sha = origin.commit({"frontend/package.json": "{}", "frontend/src/app.js": "app"})
    mirror.fetch()
    root = workspace.checkout(sha)
    for relative in (
        "frontend/node_modules/react/index.js",
        "frontend/src/node_modules/stray.js",
        "node_modules/top-level.js",
        "build/cache/warm.bin",
        "build/junk.txt",
        "cache*/literal.txt",
        "cache-wildcard/not-kept.txt",
    ):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(relative)

    workspace.checkout(sha, keep=["frontend/node_modules/", "build/cache", "cache*"])

    assert sorted(path for path, (kind, _, _) in _snapshot(root).items() if kind == "file") == [
        "build/cache/warm.bin",
        "cache*/literal.txt",
        "frontend/node_modules/react/index.js",
        "frontend/package.json",
        "frontend/src/app.js",
    ]


def test_it_lets_the_revision_win_over_a_kept_path_it_tracks(
    origin: GitRepo, mirror: Mirror, workspace: Workspace
) -> None:
    first = origin.commit({"app.py": "app"})
    second = origin.commit({"vendor": "a committed file named like the cache"})
    mirror.fetch()
    root = workspace.checkout(first)
    (root / "vendor" / "pkg").mkdir(parents=True)
    (root / "vendor" / "pkg" / "lib.php").write_text("cached")

    workspace.checkout(second, keep=["vendor"])

    assert (root / "vendor").read_text() == "a committed file named like the cache"


@pytest.mark.parametrize("keep", ["../outside", "/", "", "a/./b", "a/../b", ".git", "a\nb"])
def test_it_refuses_a_cache_path_that_is_not_a_plain_relative_path(
    keep: str, origin: GitRepo, mirror: Mirror, workspace: Workspace
) -> None:
    sha = origin.commit({"a.txt": "a"})
    mirror.fetch()

    with pytest.raises(InvalidInput) as refused:
        workspace.checkout(sha, keep=[keep])

    assert refused.value.field == "cache_paths"


# --------------------------------------------------------------------------- git's own settings


def test_it_writes_files_as_committed_whatever_attributes_config_or_hooks_say(
    origin: GitRepo,
    mirror: Mirror,
    workspace: Workspace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    marker = tmp_path / "something-ran"
    origin.commit({"unix.txt": "one\ntwo\n", "id.txt": "$Id$\n", "utf8.txt": "héllo\n"})
    # Added alone: `git add --all` would run the origin's files through these attributes.
    (origin.path / ".gitattributes").write_text(
        "* text eol=crlf filter=evil\nid.txt ident\n"
        "utf8.txt working-tree-encoding=UTF-16LE\nunix.txt export-ignore\n"
    )
    origin.git("add", ".gitattributes")
    origin.git("commit", "--quiet", "-m", "Attributes")
    sha = origin.head()
    mirror.fetch()
    # The worker's own git config, and config or hooks that someone slipped into the mirror.
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text(
        f'[core]\n\tautocrlf = true\n[filter "evil"]\n\tsmudge = touch {marker}\n'
    )
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    with (mirror.path / "config").open("a") as config:
        config.write(
            f"[core]\n\tfsmonitor = touch {marker}\n\thooksPath = {tmp_path / 'hooks'}\n"
            f'[filter "evil"]\n\tsmudge = touch {marker}\n\trequired = true\n'
        )
    for hook in ("post-checkout", "post-index-change", "reference-transaction"):
        for folder in (tmp_path / "hooks", mirror.path / "hooks"):
            folder.mkdir(exist_ok=True)
            (folder / hook).write_text(f"#!/bin/sh\ntouch {marker}\n")
            (folder / hook).chmod(0o755)

    root = workspace.checkout(sha)
    workspace.checkout(sha)

    assert (root / "unix.txt").read_bytes() == b"one\ntwo\n"
    assert (root / "id.txt").read_bytes() == b"$Id$\n"
    assert (root / "utf8.txt").read_bytes() == "héllo\n".encode()
    assert not marker.exists()


def test_it_never_shares_an_index_between_workspaces_or_touches_the_mirror(
    origin: GitRepo, mirror: Mirror, tmp_path: Path
) -> None:
    first = origin.commit({"app.py": "v1", "old.txt": "old"})
    second = origin.commit({"app.py": "v2", "old.txt": None})
    mirror.fetch()
    mirror_files_before = _snapshot(mirror.path)
    one = Workspace(tmp_path / "one" / "workspace", mirror)
    two = Workspace(tmp_path / "two" / "workspace", mirror)

    with one.try_lock(), two.try_lock():
        one.checkout(first)
        two.checkout(second)
        one.checkout(first)

    assert _snapshot(one.root) == {
        "app.py": ("file", b"v1", 0o644),
        "old.txt": ("file", b"old", 0o644),
    }
    assert _snapshot(two.root) == {"app.py": ("file", b"v2", 0o644)}
    assert one.index_path != two.index_path
    assert one.index_path.is_file() and two.index_path.is_file()
    assert _snapshot(mirror.path) == mirror_files_before


# --------------------------------------------------------------------------- locking and recovery


def test_it_lets_one_deployment_at_a_time_use_a_workspace(mirror: Mirror, tmp_path: Path) -> None:
    root = tmp_path / "project" / "workspace"
    first, second = Workspace(root, mirror), Workspace(root, mirror)

    with first.try_lock() as first_locked, second.try_lock() as second_locked:
        assert (first_locked, second_locked) == (True, False)
        assert _locked_by_another_process(first.lock_path)
        with pytest.raises(InternalError, match="lock"):
            second.checkout("main")

    with second.try_lock() as locked_after_release:
        assert locked_after_release


def _locked_by_another_process(lock_path: Path) -> bool:
    probe = (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDWR)\n"
        "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "except BlockingIOError:\n    sys.exit(3)\n"
    )
    return subprocess.run([sys.executable, "-c", probe, str(lock_path)]).returncode == 3


def test_it_refuses_to_check_out_without_the_lock(
    origin: GitRepo, mirror: Mirror, tmp_path: Path
) -> None:
    sha = origin.commit({"a.txt": "a"})
    mirror.fetch()

    with pytest.raises(InternalError, match="lock"):
        Workspace(tmp_path / "workspace", mirror).checkout(sha)


def test_it_recovers_from_a_damaged_index_and_a_killed_git(
    origin: GitRepo, mirror: Mirror, workspace: Workspace, tmp_path: Path
) -> None:
    first = origin.commit({"a.txt": "a", "b/c.txt": "c"})
    second = origin.commit({"a.txt": "changed", "b/c.txt": None, "d.txt": "d"})
    mirror.fetch()
    root = workspace.checkout(first)
    (root / "leftover.txt").write_text("build output")
    (root / "cache").mkdir()
    (root / "cache" / "warm.bin").write_text("cached")
    workspace.index_path.write_bytes(b"DIRC garbage")
    (workspace.git_dir / "index.lock").write_bytes(b"")

    workspace.checkout(second, keep=["cache"])

    assert _snapshot(root) == _export(mirror, second, tmp_path) | {
        "cache": ("dir", "", 0),
        "cache/warm.bin": ("file", b"cached", 0o644),
    }


def test_it_names_a_revision_the_mirror_does_not_have(
    origin: GitRepo, mirror: Mirror, workspace: Workspace
) -> None:
    origin.commit({"a.txt": "a"})
    mirror.fetch()

    with pytest.raises(RevisionNotFound):
        workspace.checkout("0123456789abcdef0123456789abcdef01234567")
