"""A new release made of hard links to the live one's files never changes an older release.

Real sshd targets and Git repositories. An older release is compared file by file (content,
mode, modification time and inode) before and after the next deployments, which change
files, delete some, add some, rewrite config files and change the server's permissions.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

from builds.engine import pipeline
from builds.engine.specs import (
    RELEASE_COPY_AUTO,
    RELEASE_COPY_FULL,
    RELEASE_COPY_HARD_LINKS,
    STAGE_AFTER_SWITCH,
)
from tests.support.engine import RecordingReporter, after, deploy_spec, server_for, tree_digest


def _snapshot(root: Path) -> dict[str, tuple[str, int, int]]:
    """path -> (kind:mode:sha256, mtime in ns, inode) for everything under ``root``."""
    digests = tree_digest(root)
    found = {}
    for path, digest in digests.items():
        status = (root / path).lstat()
        found[path] = (digest, status.st_mtime_ns, status.st_ino)
    return found


def _releases(target) -> Path:
    return target.deploy_path / "releases"


def _deploy(repo, tmp_path, server, sha, number, **overrides):
    result = pipeline.deploy(
        deploy_spec(repo, tmp_path, [server], sha, deployment_id=number, **overrides),
        RecordingReporter(),
    )
    assert result.ok, result.servers[0].error
    return result


def _config(body: str) -> tuple[pipeline.ConfigFileSpec, ...]:
    return (pipeline.ConfigFileSpec(path="config/app.ini", body=body, mode="640"),)


def _inode(target, release: str | None, path: str) -> int:
    assert release
    return (_releases(target) / release / path).lstat().st_ino


def test_it_leaves_an_older_release_byte_identical_when_files_config_and_permissions_change(
    sshd_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit(
        {
            "index.php": "<?php echo 'A';\n",
            "lib/gone.txt": "deleted in B\n",
            "lib/kept.txt": "the same in A and B\n",
            "bin/run": "#!/bin/sh\necho A\n",
        },
        "A",
        executable=["bin/run"],
    )
    server = server_for(sshd_target, release_copy=RELEASE_COPY_HARD_LINKS)
    first = _deploy(repo, tmp_path, server, a, 1, config_files=_config("release=%release%\n"))
    release_a = first.servers[0].release
    assert release_a
    before = _snapshot(_releases(sshd_target) / release_a)

    repo.git("rm", "--quiet", "lib/gone.txt")
    b = repo.commit({"index.php": "<?php echo 'B';\n", "new/added.txt": "added in B\n"}, "B")
    # The server's permissions change too: every file of the copy gets 600.
    server = dataclasses.replace(after(first, server), file_mode="600", directory_mode="750")
    second = _deploy(repo, tmp_path, server, b, 2, config_files=_config("changed=%release%\n"))
    release_b = second.servers[0].release
    assert release_b

    assert _snapshot(_releases(sshd_target) / release_a) == before
    new = _releases(sshd_target) / release_b
    assert (new / "index.php").read_text() == "<?php echo 'B';\n"
    assert not (new / "lib" / "gone.txt").exists()
    assert (new / "config" / "app.ini").read_text() == f"changed={release_b}\n"
    assert {
        path: digest.split(":")[1]
        for path, digest in tree_digest(new).items()
        if digest.startswith("file:") and path != "config/app.ini"
    } == {path: "600" for path in ("index.php", "lib/kept.txt", "bin/run", "new/added.txt")}

    # Without a change of permissions, unchanged files are shared with the release before;
    # what changes is a file of its own, and the release before stays as it was.
    c = repo.commit({"index.php": "<?php echo 'C';\n"}, "C")
    before_b = _snapshot(new)
    third = _deploy(
        repo, tmp_path, after(second, server), c, 3, config_files=_config("c=%release%\n")
    )
    release_c = third.servers[0].release
    assert _snapshot(new) == before_b
    assert _inode(sshd_target, release_c, "lib/kept.txt") == _inode(
        sshd_target, release_b, "lib/kept.txt"
    )
    for changed in ("index.php", "config/app.ini"):
        assert _inode(sshd_target, release_c, changed) != _inode(sshd_target, release_b, changed)
    assert (_releases(sshd_target) / (release_c or "") / "index.php").read_text() == (
        "<?php echo 'C';\n"
    )


def test_it_resends_a_file_changed_on_the_server_as_a_file_of_its_own(
    sshd_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit({"index.php": "A\n", "notes.txt": "as committed\n"}, "A")
    server = server_for(sshd_target, release_copy=RELEASE_COPY_HARD_LINKS)
    first = _deploy(repo, tmp_path, server, a, 1)
    release_a = first.servers[0].release or ""
    # Someone replaces a file of the live release by hand (a new file, as editors write).
    live_notes = _releases(sshd_target) / release_a / "notes.txt"
    replacement = live_notes.with_name("notes.txt.new")
    replacement.write_text("edited on the server\n")
    shutil.chown(replacement, sshd_target.username)
    os.replace(replacement, live_notes)
    before = _snapshot(_releases(sshd_target) / release_a)

    b = repo.commit({"index.php": "B\n"}, "B")
    second = _deploy(repo, tmp_path, after(first, server), b, 2)
    new = _releases(sshd_target) / (second.servers[0].release or "")

    assert (new / "notes.txt").read_text() == "as committed\n"
    assert _snapshot(_releases(sshd_target) / release_a) == before


def test_it_copies_every_file_when_commands_run_on_the_server_or_when_asked(
    sshd_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit({"index.php": "A\n", "vendor/lib.php": "library\n"}, "A")
    b = repo.commit({"index.php": "B\n"}, "B")
    command = pipeline.CommandSpec(command="true", stage=STAGE_AFTER_SWITCH)

    for number, (choice, commands, linked) in enumerate(
        [
            (RELEASE_COPY_AUTO, (), True),
            (RELEASE_COPY_AUTO, (command,), False),
            (RELEASE_COPY_FULL, (), False),
            (RELEASE_COPY_HARD_LINKS, (command,), True),
        ]
    ):
        deploy_path = sshd_target.deploy_path / f"app-{number}"
        server = server_for(sshd_target, deploy_path=str(deploy_path), release_copy=choice)
        workspace = tmp_path / f"build-{number}"
        workspace.mkdir()
        first = _deploy(repo, workspace, server, a, 10 * number + 1, commands=commands)
        second = _deploy(
            repo, workspace, after(first, server), b, 10 * number + 2, commands=commands
        )
        inodes = {
            (deploy_path / "releases" / (result.servers[0].release or "") / "vendor" / "lib.php")
            .lstat()
            .st_ino
            for result in (first, second)
        }
        assert (len(inodes) == 1) is linked, (choice, commands)
