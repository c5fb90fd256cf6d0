"""A repository host that accepts the connection and never answers cannot hold a worker."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from builds.engine.errors import Cancelled, FetchTimedOut
from builds.engine.git import Mirror


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that accepts every connection and never sends a byte."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            accepted.append(connection)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    listener.close()


def _git_processes_of(mirror_dir: Path) -> dict[int, int]:
    """pid -> process group of every live `git fetch` into the mirror (not the quick
    `git init` / `git config` before it, which run in the test's own group)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, _, pgrp = stat.rpartition(")")[2].split()[:3]
        if str(mirror_dir).encode() in cmdline and b"\0fetch\0" in cmdline and state != "Z":
            found[int(entry.name)] = int(pgrp)
    return found


def _alive(pid: int) -> bool:
    """Running (a zombie has ended: it only waits for its parent to read its status)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    return state != "Z"


def _members_of(group: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def test_a_git_server_that_never_answers_fails_the_fetch_at_its_deadline(silent_server, tmp_path):
    mirror = Mirror(
        tmp_path / "mirror.git",
        f"git://127.0.0.1:{silent_server}/x",
        allow_local=True,
        fetch_timeout=1.5,
    )
    with pytest.raises(FetchTimedOut) as timed_out:
        mirror.fetch()
    message = str(timed_out.value)
    assert f"Fetching git://127.0.0.1:{silent_server}/x did not finish within 1.5 s" in message
    assert "SLIPWAY_FETCH_TIMEOUT" in message
    assert timed_out.value.code == "fetch_timed_out" and timed_out.value.user_facing
    assert _git_processes_of(tmp_path / "mirror.git") == {}


@pytest.mark.parametrize("scheme", ["git", "http"])
def test_cancelling_a_hanging_fetch_kills_gits_whole_process_group(silent_server, tmp_path, scheme):
    mirror_dir = tmp_path / "mirror.git"
    mirror = Mirror(
        mirror_dir, f"{scheme}://127.0.0.1:{silent_server}/x", allow_local=True, fetch_timeout=600
    )
    cancel = threading.Event()
    seen: dict[int, int] = {}
    members: list[int] = []

    def check_cancelled() -> None:
        if cancel.is_set():
            raise Cancelled("Cancelled on request")

    def cancel_once_git_hangs() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not seen:
            seen.update(_git_processes_of(mirror_dir))
            time.sleep(0.1)
        time.sleep(0.5)  # let git start its remote helper (http) and connect
        for group in set(seen.values()):
            members.extend(_members_of(group))
        cancel.set()

    canceller = threading.Thread(target=cancel_once_git_hangs)
    canceller.start()
    with pytest.raises(Cancelled):
        mirror.fetch(check_cancelled=check_cancelled)
    canceller.join()

    assert seen, "git was running while the server kept silent"
    if scheme == "http":
        assert len(members) >= 2, "git and its remote helper, git-remote-http, in one group"
    # SIGKILL is delivered at once, but a dying process takes a moment to be gone.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(pid) for pid in {*seen, *members}):
        time.sleep(0.05)
    assert [pid for pid in {*seen, *members} if _alive(pid)] == []
    for group in set(seen.values()):
        assert _members_of(group) == []
