"""A remote command that times out or is cancelled is stopped whole, before the lock is let go.

Real sshd targets on loopback run as processes of this machine, so the tests can look for a
command's processes in /proc; an unusual ``sleep`` length names them.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from builds.engine import pipeline, rollout
from builds.engine.errors import Cancelled, CommandTimedOut, LockHeld
from builds.engine.health import HealthCheckSpec
from builds.engine.ssh import connect
from tests.support.engine import RecordingReporter, deploy_spec, server_for
from tests.support.sshd import SSHTarget

pytest_plugins = ["tests.support.sshd"]

# How long the shell that wraps a command (outside its group, see builds/engine/ssh.py) may
# take to exit after the group is killed. A survivor is still there then (it sleeps for
# seconds), or has already touched its marker.
_WRAPPER_EXIT_SECONDS = 1.5


def _sleeping(seconds: str) -> list[int]:
    """Pids of the ``sleep <seconds>`` processes on this machine (the command's own, not
    the shells whose command text mentions it)."""
    wanted = b"sleep\0" + seconds.encode() + b"\0"
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().endswith(wanted):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _marker(target: SSHTarget, name: str) -> Path:
    """A file the command's user could create (not beside the deploy path: the target's
    root belongs to the user running the tests)."""
    directory = target.root / "markers"
    directory.mkdir(exist_ok=True)
    shutil.chown(directory, target.username)
    return directory / name


def _naming(marker: Path) -> list[int]:
    """Pids of the processes on this machine whose command line names ``marker``: every
    shell of a command that would touch it (a subshell has its parent's command line), and
    ``touch`` itself."""
    wanted = str(marker).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if wanted in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _never_appears(marker: Path) -> None:
    """Nothing of the stopped command is left to write ``marker``: its ``sleep`` is gone
    (each test checks), and within a moment so is every process that names the marker
    (checked every 50 ms). A survivor would still be running then, or would have touched
    the marker."""
    deadline = time.monotonic() + _WRAPPER_EXIT_SECONDS
    while (left := _naming(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == [], f"{marker.name}: the command went on running in {left}"
    assert not marker.exists(), f"{marker.name} appeared: the command went on running"


def test_it_kills_a_timed_out_command_with_everything_it_started(sshd_target: SSHTarget) -> None:
    marker = _marker(sshd_target, "marker-timeout")
    background = _marker(sshd_target, "marker-background")
    command = f"(sleep 4.11; touch {background}) & sleep 4.11; touch {marker}"

    with connect(sshd_target.endpoint()) as connection:
        with pytest.raises(CommandTimedOut, match="it was stopped"):
            connection.run(command, timeout=1)
        assert _sleeping("4.11") == []
        assert connection.left_running == []
        assert connection.run("echo still here").stdout == "still here"

    _never_appears(marker)
    _never_appears(background)


def test_it_kills_a_cancelled_command_that_prints_nothing(sshd_target: SSHTarget) -> None:
    marker = _marker(sshd_target, "marker-cancel")
    cancel = threading.Event()

    def check_cancelled() -> None:
        if _sleeping("4.12"):
            cancel.set()
        if cancel.is_set():
            raise Cancelled("Cancelled on request")

    with connect(sshd_target.endpoint()) as connection:
        with pytest.raises(Cancelled):
            connection.run(f"sleep 4.12; touch {marker}", check_cancelled=check_cancelled)
        assert cancel.is_set()
        assert _sleeping("4.12") == []

    _never_appears(marker)


def test_a_timed_out_ssh_command_is_dead_before_the_lock_goes_and_the_next_deploy_runs(
    sshd_target, git_repo_factory, tmp_path
):
    marker = _marker(sshd_target, "marker-deploy")
    repo = git_repo_factory()
    revision = repo.commit({"index.html": "A\n"}, "A")
    server = server_for(sshd_target)
    slow = pipeline.CommandSpec(
        command=f"sleep 4.13; touch {marker}", stage="before_switch", timeout_seconds=1
    )

    first = pipeline.deploy(
        deploy_spec(repo, tmp_path, [server], revision, commands=(slow,)), RecordingReporter()
    )

    outcome = first.servers[0]
    assert not outcome.ok
    assert isinstance(outcome.error, CommandTimedOut)
    assert "it was stopped" in str(outcome.error)
    assert _sleeping("4.13") == []
    assert not (sshd_target.deploy_path / ".slipway" / "lock").exists()

    quick = pipeline.CommandSpec(
        command=f"test ! -e {marker} && echo alone > alone.txt", stage="before_switch"
    )
    second = pipeline.deploy(
        deploy_spec(repo, tmp_path, [server], revision, commands=(quick,), deployment_id=2),
        RecordingReporter(),
    )
    assert second.ok, [r.error for r in second.servers]
    assert (sshd_target.deploy_path / "current" / "alone.txt").read_text() == "alone\n"
    _never_appears(marker)


def test_a_cancelled_deploy_stops_its_running_command_before_it_unlocks(
    sshd_target, git_repo_factory, tmp_path
):
    marker = _marker(sshd_target, "marker-deploy-cancel")
    repo = git_repo_factory()
    revision = repo.commit({"index.html": "A\n"}, "A")
    reporter = RecordingReporter()
    slow = pipeline.CommandSpec(command=f"sleep 4.14; touch {marker}", stage="before_switch")

    def cancel_once_it_sleeps() -> None:
        deadline = time.monotonic() + 30
        while not _sleeping("4.14") and time.monotonic() < deadline:
            time.sleep(0.05)
        reporter.cancel.set()

    canceller = threading.Thread(target=cancel_once_it_sleeps)
    canceller.start()
    result = pipeline.deploy(
        deploy_spec(repo, tmp_path, [server_for(sshd_target)], revision, commands=(slow,)),
        reporter,
    )
    canceller.join()

    assert result.servers[0].cancelled
    assert _sleeping("4.14") == []
    assert not (sshd_target.deploy_path / ".slipway" / "lock").exists()
    _never_appears(marker)


def test_a_health_check_command_that_hangs_is_killed(sshd_target, git_repo_factory, tmp_path):
    marker = _marker(sshd_target, "marker-check")
    repo = git_repo_factory()
    revision = repo.commit({"index.html": "A\n"}, "A")
    check = HealthCheckSpec(
        kind="command",
        when="before_switch",
        command=f"sleep 4.15; touch {marker}",
        retries=1,
        timeout_seconds=1,
    )
    spec = deploy_spec(repo, tmp_path, [server_for(sshd_target)], revision, health_checks=(check,))

    result = pipeline.deploy(dataclasses.replace(spec), RecordingReporter())

    assert not result.ok
    assert "did not finish within 1 s; it was stopped" in str(result.servers[0].error)
    assert _sleeping("4.15") == []
    _never_appears(marker)


def test_a_lock_kept_for_a_command_that_could_not_be_stopped_is_taken_over_once_it_is_gone(
    sshd_target, git_repo_factory, tmp_path, monkeypatch
):
    repo = git_repo_factory()
    revision = repo.commit({"index.html": "A\n"}, "A")
    server = server_for(sshd_target)
    run_commands = rollout.run_commands

    def one_left_running(connection, *args, **kwargs):
        # What Connection.run records when a killed command's group does not go away (a
        # process in uninterruptible sleep, or one kill(2) may not touch).
        connection.left_running.append("sleep 600")
        return run_commands(connection, *args, **kwargs)

    monkeypatch.setattr(rollout, "run_commands", one_left_running)
    failing = pipeline.CommandSpec(command="exit 1", stage="before_switch")
    reporter = RecordingReporter()
    first = pipeline.deploy(
        deploy_spec(repo, tmp_path, [server], revision, commands=(failing,)), reporter
    )
    monkeypatch.setattr(rollout, "run_commands", run_commands)

    assert not first.ok
    assert reporter.text.count("The deploy lock is kept") == 1
    lock = sshd_target.deploy_path / ".slipway" / "lock"
    assert "owner=deployment-1-left-running" in (lock / "info").read_text()
    # The holder names what may still be running.
    assert "a stopped command may still be running: sleep 600\n" in (lock / "info").read_text()
    # What still runs: a process group the deploy user may not kill (root's here, as after
    # sudo), recorded in the lock as its commands record theirs.
    stubborn = subprocess.Popen(["sleep", "3600.08"], start_new_session=True)
    started = Path(f"/proc/{stubborn.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    (lock / "groups").write_text(f"{stubborn.pid} {started}\n")
    finished = dataclasses.replace(
        deploy_spec(repo, tmp_path, [server], revision, deployment_id=2),
        lock_owner_finished=lambda owner: owner == "deployment-1-left-running",
    )
    try:
        refused = pipeline.deploy(finished, RecordingReporter())

        assert isinstance(refused.servers[0].error, LockHeld)
        assert f"still running on the server (process group {stubborn.pid})" in str(
            refused.servers[0].error
        )
        assert "owner=deployment-1-left-running" in (lock / "info").read_text()
    finally:
        stubborn.kill()
        stubborn.wait()

    reporter = RecordingReporter()
    second = pipeline.deploy(dataclasses.replace(finished, deployment_id=3), reporter)

    assert second.ok, [r.error for r in second.servers]
    assert "Took over the lock of deployment-1-left-running, which has finished" in reporter.text
    assert not lock.exists()


def test_a_cancelled_upload_stops_tar_on_the_server_and_unlocks(
    sshd_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    big = {f"blob{n}.bin": os.urandom(2 * 1024 * 1024) for n in range(12)}
    revision = repo.commit(big, "24 MB of incompressible data")
    reporter = RecordingReporter()

    def cancel_once_started(server_id, bytes_done, bytes_total):
        if 0 < bytes_done < bytes_total:
            reporter.cancel.set()

    reporter.on_progress = cancel_once_started
    result = pipeline.deploy(
        deploy_spec(repo, tmp_path, [server_for(sshd_target)], revision), reporter
    )

    assert reporter.cancel.is_set(), "the upload finished before it could be cancelled"
    assert result.servers[0].cancelled
    # It stopped in the middle, not at the next safe point after the upload.
    assert all(done < total for *_, done, total in reporter.progress_reports if total)
    assert not (sshd_target.deploy_path / ".slipway" / "lock").exists()
    assert list((sshd_target.deploy_path / "releases").iterdir()) == []
    assert not (sshd_target.deploy_path / "current").exists()


def test_a_lock_taken_from_a_dead_worker_first_stops_what_its_commands_left_running(
    sshd_target, git_repo_factory, tmp_path, monkeypatch
):
    repo = git_repo_factory()
    revision = repo.commit({"index.html": "A\n"}, "A")
    server = server_for(sshd_target)
    marker = _marker(sshd_target, "marker-dead-worker")
    hanging = pipeline.CommandSpec(
        command=f"(sleep 3600.04; touch {marker}) & sleep 3600.04", stage="before_switch"
    )
    connections = []

    def connect_and_keep(endpoint, **options):
        connection = connect(endpoint, **options)
        connections.append(connection)
        return connection

    def worker_dies_once_it_sleeps() -> None:
        deadline = time.monotonic() + 30
        while len(_sleeping("3600.04")) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        # What a SIGKILLed worker leaves: the connection gone, the command running on.
        connections[0]._transport.close()

    monkeypatch.setattr(rollout, "connect", connect_and_keep)
    killer = threading.Thread(target=worker_dies_once_it_sleeps)
    killer.start()
    first = pipeline.deploy(
        deploy_spec(repo, tmp_path, [server], revision, commands=(hanging,)),
        RecordingReporter(),
    )
    killer.join()
    monkeypatch.undo()

    assert not first.ok
    assert len(_sleeping("3600.04")) == 2, "the command should have outlived its connection"
    lock = sshd_target.deploy_path / ".slipway" / "lock"
    assert "owner=deployment-1\n" in (lock / "info").read_text()
    assert (lock / "groups").read_text().strip()

    reporter = RecordingReporter()
    second = pipeline.deploy(
        dataclasses.replace(
            deploy_spec(repo, tmp_path, [server], revision, deployment_id=2),
            lock_owner_finished=lambda owner: owner == "deployment-1",
        ),
        reporter,
    )

    assert second.ok, [r.error for r in second.servers]
    assert "Took over the lock of deployment-1, which has finished" in reporter.text
    assert _sleeping("3600.04") == []
    assert not lock.exists()
    assert not marker.exists()
