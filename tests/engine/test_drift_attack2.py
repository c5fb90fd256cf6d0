"""Attack probes on drift checks (hostile servers)."""

from __future__ import annotations

import os
import shutil

import pytest

from builds.engine import drift
from builds.engine.errors import ReleaseMissing
from tests.engine.test_drift import APP, _check, _deploy, _live
from tests.support.engine import after, server_for


def test_current_pointing_outside_the_deploy_path_is_not_clean(
    sshd_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit(APP, "A")
    server = server_for(sshd_target)
    result, _ = _deploy(repo, tmp_path, server, a, 1)
    server = after(result, server)
    live = _live(sshd_target)
    # Someone copies the release elsewhere, plants a shell there and points current at it,
    # under the same release name.
    elsewhere = sshd_target.deploy_path.parent / "evil" / live.name
    shutil.copytree(live, elsewhere, symlinks=True)
    (elsewhere / "shell.php").write_text("<?php system($_GET['c']);\n")
    current = sshd_target.deploy_path / "current"
    current.unlink()
    current.symlink_to(elsewhere)
    with pytest.raises(ReleaseMissing, match="points outside"):
        _check(sshd_target, server)
    # A relative link out of releases/ too.
    current.unlink()
    current.symlink_to(f"releases/../../evil/{live.name}")
    with pytest.raises(ReleaseMissing, match="points outside"):
        _check(sshd_target, server)
    # The absolute form Slipway accepts still checks.
    current.unlink()
    current.symlink_to(live)
    assert _check(sshd_target, server).clean


def test_hostile_names_fifo_dir_for_file(sshd_target, git_repo_factory, tmp_path):
    repo = git_repo_factory()
    a = repo.commit(APP, "A")
    server = server_for(sshd_target)
    result, _ = _deploy(repo, tmp_path, server, a, 1)
    server = after(result, server)
    live = _live(sshd_target)
    (live / "README.md").unlink()
    os.mkfifo(live / "README.md")
    (live / "src" / "cart.php").unlink()
    (live / "src" / "cart.php").mkdir()
    (live / "src" / "cart.php" / "x").write_text("x")
    (live / "back\\slash").write_text("b")
    (live / ("l" * 250)).write_text("long")
    (live / "out").symlink_to("/etc/passwd")
    (live / "index.php").chmod(0)
    with open(os.fsencode(live) + b"/\xff\xfe", "wb") as handle:
        handle.write(b"x")
    report = _check(sshd_target, server)
    got = {(f.path, f.change) for f in report.files}
    assert ("README.md", drift.REMOVED) in got
    assert ("src/cart.php", drift.REMOVED) in got
    assert ("src/cart.php/x", drift.ADDED) in got
    assert ("back\\slash", drift.ADDED) in got
    assert ("out", drift.ADDED) in got
    assert ("index.php", drift.CHANGED) in got
    assert ("l" * 250, drift.ADDED) in got
    assert len(got) == 8, got


def test_a_server_streaming_one_endless_record_is_stopped_not_buffered():
    import base64

    from builds.engine.errors import InternalError
    from builds.engine.manifest import Manifest

    reader = drift._Reader(Manifest())
    reader.line("stdout", "live=20261202-000000000-abc")
    line = base64.b64encode(b"x" * 57).decode()

    def endless() -> None:
        for _ in range(100_000):
            reader.line("stdout", line)

    with pytest.raises(InternalError, match="longer than any path"):
        endless()
    assert len(reader._rest) < 128 * 1024
