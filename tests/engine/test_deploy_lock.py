"""The deploy path's lock is never left without an owner: it appears complete (its info
written in a fresh folder, renamed into place), one taker wins when several race, a lock
without an owner (an older Slipway's, or a full disk's) is broken with a line in the log, and
a full disk names the server, the path and the free space and leaves no lock behind.

The full-disk tests mount a small tmpfs as a target's deploy path, which needs root (CI runs
the tests as root)."""

from __future__ import annotations

import os
import pwd
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from builds.engine import pipeline
from builds.engine.errors import DiskFull, LockHeld, StorageFailed
from builds.engine.release import LOCK_DIR, META_DIR, RemoteLayout
from builds.engine.specs import RELEASE_COPY_FULL
from builds.engine.ssh import connect
from tests.support.engine import RecordingReporter, after, deploy_spec, server_for
from tests.support.sshd import SSHTarget


def _lock(target: SSHTarget) -> Path:
    return target.deploy_path / LOCK_DIR


def _leftovers(target: SSHTarget) -> list[str]:
    """Lock folders on the way in or out (lock.<pid>.new, lock.<pid>.gone)."""
    meta = target.deploy_path / META_DIR
    return sorted(p.name for p in meta.glob("lock.*")) if meta.exists() else []


def _as_deploy_user(target: SSHTarget, path: Path) -> None:
    if os.geteuid() == 0:
        account = pwd.getpwnam(target.username)
        for folder in [path, *path.parents]:
            if folder == target.deploy_path.parent:
                break
            os.chown(folder, account.pw_uid, account.pw_gid)


def _ownerless_lock(target: SSHTarget, *, info: str | None) -> None:
    lock = _lock(target)
    lock.mkdir(parents=True)
    if info is not None:
        (lock / "info").write_text(info)
    _as_deploy_user(target, lock)
    if info is not None:
        _as_deploy_user(target, lock / "info")


@pytest.mark.parametrize(
    "info",
    [None, "", "holder=Slipway deployment #3\n"],
    ids=["empty folder", "empty info", "no owner line"],
)
def test_a_lock_without_an_owner_is_broken_with_a_line_in_the_log(
    sshd_target, git_repo_factory, tmp_path, info
):
    repo = git_repo_factory()
    sha = repo.commit({"a.txt": "a\n"})
    _ownerless_lock(sshd_target, info=info)
    reporter = RecordingReporter()

    result = pipeline.deploy(deploy_spec(repo, tmp_path, [server_for(sshd_target)], sha), reporter)

    assert result.ok, [r.error for r in result.servers]
    assert "Broke a lock without an owner" in reporter.text
    assert not _lock(sshd_target).exists()
    assert _leftovers(sshd_target) == []


def test_a_lock_is_written_whole_and_read_back(sshd_target):
    with connect(sshd_target.endpoint()) as connection:
        layout = RemoteLayout(connection, str(sshd_target.deploy_path))
        assert layout.read_lock() is None
        assert (
            layout.lock(
                holder="Slipway deployment #7 by alice", owner_id="deployment-7", stale_after=3600
            )
            == ()
        )
        found = layout.read_lock()
        assert found is not None
        assert (found.owner, found.holder) == ("deployment-7", "Slipway deployment #7 by alice")
        assert found.since.endswith("Z") and found.age_seconds >= 0
        assert _leftovers(sshd_target) == []
        # The same owner takes it again; nobody else does.
        assert layout.lock(holder="again", owner_id="deployment-7", stale_after=3600) == ()
        with pytest.raises(LockHeld) as held:
            layout.lock(holder="other", owner_id="deployment-8", stale_after=3600)
        assert held.value.owner == "deployment-7"
        assert "again" in str(held.value)
        layout.unlock(owner_id="deployment-7")
        assert layout.read_lock() is None
        assert _leftovers(sshd_target) == []


def test_of_many_takers_at_once_exactly_one_holds_the_lock(sshd_target):
    takers = 8
    start = threading.Barrier(takers)
    won: list[str] = []
    refused: list[str] = []
    errors: list[BaseException] = []

    def take(number: int) -> None:
        owner = f"deployment-{number}"
        try:
            with connect(sshd_target.endpoint()) as connection:
                layout = RemoteLayout(connection, str(sshd_target.deploy_path))
                start.wait()
                try:
                    layout.lock(holder=f"taker {number}", owner_id=owner, stale_after=3600)
                    won.append(owner)
                except LockHeld as held:
                    refused.append(held.owner)
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=take, args=(n,)) for n in range(takers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(won) == 1, won
    assert len(refused) == takers - 1
    # Every refused taker was told who holds it: the lock never looked ownerless.
    assert set(refused) == set(won)
    info = (_lock(sshd_target) / "info").read_text()
    assert f"owner={won[0]}\n" in info
    assert _leftovers(sshd_target) == []


def test_breaking_a_lock_leaves_one_taken_again_since_it_was_read(sshd_target):
    with connect(sshd_target.endpoint()) as connection:
        layout = RemoteLayout(connection, str(sshd_target.deploy_path))
        layout.lock(holder="first", owner_id="deployment-1", stale_after=3600)
        assert layout.break_lock(owner_id="deployment-2") is False
        assert layout.read_lock() is not None
        assert layout.break_lock(owner_id="deployment-1") is True
        assert layout.read_lock() is None
        assert layout.break_lock(owner_id="deployment-1") is False
    _ownerless_lock(sshd_target, info="")
    with connect(sshd_target.endpoint()) as connection:
        layout = RemoteLayout(connection, str(sshd_target.deploy_path))
        found = layout.read_lock()
        assert found is not None and found.owner == ""
        assert layout.break_lock(owner_id="") is True
    assert not _lock(sshd_target).exists()


# --------------------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(sshd_target: SSHTarget) -> Iterator[SSHTarget]:
    """The target's deploy path on a 1 MiB tmpfs owned by its deploy user."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI runs as root: the full-disk tests mount a tmpfs")
        pytest.skip("mounting a tmpfs as the deploy path needs root (CI runs as root)")
    account = pwd.getpwnam(sshd_target.username)
    path = sshd_target.deploy_path
    mounted = subprocess.run(
        [
            "mount",
            "-t",
            "tmpfs",
            "-o",
            f"size=1m,mode=0755,uid={account.pw_uid},gid={account.pw_gid}",
            "slipway-test-disk",
            str(path),
        ],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        reason = f"mounting a tmpfs failed: {mounted.stderr.strip()}"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI must allow it: the tests run as root there)")
        pytest.skip(reason)
    try:
        yield sshd_target
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=False, capture_output=True)


def _remount(target: SSHTarget, options: str) -> None:
    subprocess.run(
        ["mount", "-o", f"remount,{options}", str(target.deploy_path)],
        check=True,
        capture_output=True,
    )


def _assert_names_the_place(error: BaseException | None, target: SSHTarget) -> None:
    message = str(error)
    assert isinstance(error, DiskFull), message
    assert f"{target.hostname}:{target.port}" in message
    assert str(target.deploy_path) in message
    assert "free of 1.0 MiB (df -Pk, read after the failure)" in message
    assert "Free space there" in message


def test_a_full_disk_while_uploading_says_where_and_leaves_no_lock(
    small_disk, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    sha = repo.commit({"small.txt": "a\n", "big.bin": os.urandom(3 * 1024 * 1024)})
    server = server_for(small_disk)

    result = pipeline.deploy(deploy_spec(repo, tmp_path, [server], sha), RecordingReporter())

    _assert_names_the_place(result.servers[0].error, small_disk)
    assert not _lock(small_disk).exists()
    assert _leftovers(small_disk) == []
    assert list((small_disk.deploy_path / "releases").iterdir()) == []
    # Once there is room, the next deployment goes through.
    _remount(small_disk, "size=16m")
    again = pipeline.deploy(
        deploy_spec(repo, tmp_path, [server], sha, deployment_id=2), RecordingReporter()
    )
    assert again.ok, [r.error for r in again.servers]


def test_a_disk_too_full_for_the_lock_says_where_and_leaves_no_lock(
    small_disk, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    first = repo.commit({"a.txt": "a\n"})
    server = server_for(small_disk)
    server = after(
        pipeline.deploy(deploy_spec(repo, tmp_path, [server], first), RecordingReporter()), server
    )
    filler = small_disk.deploy_path / "filler"
    filled = subprocess.run(
        ["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True, text=True
    )
    assert "No space left on device" in filled.stderr
    second = repo.commit({"a.txt": "b\n"})

    result = pipeline.deploy(
        deploy_spec(repo, tmp_path, [server], second, deployment_id=2), RecordingReporter()
    )

    _assert_names_the_place(result.servers[0].error, small_disk)
    assert not _lock(small_disk).exists()
    assert _leftovers(small_disk) == []
    assert (small_disk.deploy_path / "current" / "a.txt").read_text() == "a\n"
    filler.unlink()
    again = pipeline.deploy(
        deploy_spec(repo, tmp_path, [server], second, deployment_id=3), RecordingReporter()
    )
    assert again.ok, [r.error for r in again.servers]
    assert (small_disk.deploy_path / "current" / "a.txt").read_text() == "b\n"


def test_a_full_disk_while_copying_the_live_release_leaves_no_lock_and_no_copy(
    small_disk, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    first = repo.commit({"a.txt": "a\n", "big.bin": os.urandom(600 * 1024)})
    # A real copy: hard links would take no room for the file's bytes.
    server = server_for(small_disk, release_copy=RELEASE_COPY_FULL)
    server = after(
        pipeline.deploy(deploy_spec(repo, tmp_path, [server], first), RecordingReporter()), server
    )
    second = repo.commit({"a.txt": "b\n"})

    result = pipeline.deploy(
        deploy_spec(repo, tmp_path, [server], second, deployment_id=2), RecordingReporter()
    )

    _assert_names_the_place(result.servers[0].error, small_disk)
    assert not _lock(small_disk).exists()
    assert _leftovers(small_disk) == []
    assert [p.name for p in (small_disk.deploy_path / "releases").iterdir()] == [
        server.live_release
    ]
    assert (small_disk.deploy_path / "current" / "a.txt").read_text() == "a\n"


def test_a_file_system_gone_read_only_says_so_with_its_free_space(
    small_disk, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    first = repo.commit({"a.txt": "a\n"})
    server = server_for(small_disk)
    server = after(
        pipeline.deploy(deploy_spec(repo, tmp_path, [server], first), RecordingReporter()), server
    )
    second = repo.commit({"a.txt": "b\n"})
    _remount(small_disk, "ro")

    result = pipeline.deploy(
        deploy_spec(repo, tmp_path, [server], second, deployment_id=2), RecordingReporter()
    )

    error = result.servers[0].error
    assert isinstance(error, StorageFailed) and not isinstance(error, DiskFull), error
    message = str(error)
    assert f"Writing to {small_disk.deploy_path} on 127.0.0.1:{small_disk.port} failed" in message
    assert "Read-only file system" in message
    assert "free of 1.0 MiB (df -Pk, read after the failure)" in message
    assert "mounted read-only" in message
    _remount(small_disk, "rw")
    assert not _lock(small_disk).exists()
    again = pipeline.deploy(
        deploy_spec(repo, tmp_path, [server], second, deployment_id=3), RecordingReporter()
    )
    assert again.ok, [r.error for r in again.servers]


# --------------------------------------------------------------------------- in place (SFTP)


def _in_place_leftovers(target: SSHTarget) -> list[str]:
    return sorted(p.name for p in target.deploy_path.glob(".slipway-lock*"))


def test_in_place_the_lock_names_its_owner_and_an_empty_one_is_broken(
    sshd_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    sha = repo.commit({"a.txt": "a\n"})
    server = server_for(sshd_target, atomic=False, shell=False)
    old = sshd_target.deploy_path / ".slipway-lock"
    old.mkdir()
    _as_deploy_user(sshd_target, old)
    reporter = RecordingReporter()

    result = pipeline.deploy(deploy_spec(repo, tmp_path, [server], sha), reporter)

    assert result.ok, [r.error for r in result.servers]
    assert "Broke a lock without an owner" in reporter.text
    assert _in_place_leftovers(sshd_target) == []
    assert (sshd_target.deploy_path / "a.txt").read_text() == "a\n"


def test_in_place_a_held_lock_is_refused_and_a_finished_ones_taken_over(
    sshd_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    sha = repo.commit({"a.txt": "a\n"})
    server = server_for(sshd_target, atomic=False, shell=False)
    held = sshd_target.deploy_path / ".slipway-lock"
    held.mkdir()
    (held / "info").write_text(
        "owner=deployment-9\nholder=Slipway deployment #9 by bob\nsince=2026-12-01T00:00:00Z\n"
    )
    _as_deploy_user(sshd_target, held)
    _as_deploy_user(sshd_target, held / "info")

    refused = pipeline.deploy(
        deploy_spec(repo, tmp_path, [server], sha, deployment_id=10), RecordingReporter()
    )
    error = refused.servers[0].error
    assert isinstance(error, LockHeld)
    assert error.owner == "deployment-9"
    assert "Slipway deployment #9 by bob" in str(error)
    assert "deployment-9" in (held / "info").read_text()
    assert not (sshd_target.deploy_path / "a.txt").exists()

    reporter = RecordingReporter()
    taken = pipeline.deploy(
        deploy_spec(
            repo,
            tmp_path,
            [server],
            sha,
            deployment_id=11,
            lock_owner_finished=lambda owner: owner == "deployment-9",
        ),
        reporter,
    )
    assert taken.ok, [r.error for r in taken.servers]
    assert "Took over the lock of deployment-9, which has finished" in reporter.text
    assert _in_place_leftovers(sshd_target) == []
