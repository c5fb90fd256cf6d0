"""Large uploads go through the system's OpenSSH client (Connection.run_streaming_stdin with
bulk=True), trusting only the pinned host key, and over paramiko when it cannot be used."""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Iterator

import pytest

from builds.engine.errors import Cancelled, TransferFailed
from builds.engine.ssh import connect
from tests.support.sshd import SSHTarget, generate_key_pair

MEGABYTE = bytes(range(256)) * 4096


def _megabytes(count: int) -> Iterator[bytes]:
    for n in range(count):
        yield bytes([n % 251]) + MEGABYTE[1:]


def _digest(count: int) -> str:
    return hashlib.sha256(b"".join(_megabytes(count))).hexdigest()


def test_a_bulk_upload_goes_through_the_openssh_client(sshd_target: SSHTarget) -> None:
    sshd_target.count_connections()
    destination = sshd_target.deploy_path / "big.bin"
    with connect(sshd_target.endpoint()) as connection:
        result = connection.run_streaming_stdin(
            f"cat > {shlex.quote(str(destination))} && echo stored",
            _megabytes(8),
            bulk=True,
        )
    assert result.exit_code == 0 and result.stdout == "stored"
    assert hashlib.sha256(destination.read_bytes()).hexdigest() == _digest(8)
    # paramiko's login, then the ssh client's, which ran the one command.
    assert (sshd_target.logins(), sshd_target.commands()) == (2, 1)


def test_without_an_ssh_program_it_goes_over_paramiko(
    sshd_target: SSHTarget, tmp_path, monkeypatch
) -> None:
    sshd_target.count_connections()
    nothing = tmp_path / "empty-path"
    nothing.mkdir()
    monkeypatch.setenv("PATH", str(nothing))
    destination = sshd_target.deploy_path / "big.bin"
    with connect(sshd_target.endpoint()) as connection:
        connection.run_streaming_stdin(
            f"/bin/cat > {shlex.quote(str(destination))}", _megabytes(5), bulk=True
        )
    assert hashlib.sha256(destination.read_bytes()).hexdigest() == _digest(5)
    assert (sshd_target.logins(), sshd_target.commands()) == (1, 1)


def test_the_openssh_client_trusts_only_the_pinned_host_key(
    sshd_target: SSHTarget, tmp_path
) -> None:
    destination = sshd_target.deploy_path / "big.bin"
    with connect(sshd_target.endpoint()) as connection:
        # The server now offers another key (and the paramiko connection is gone with it).
        other = generate_key_pair(tmp_path, "other-host")
        sshd_target.stop()
        sshd_target.host_private_key_path = other.private_path
        sshd_target.host_public_key_path = other.public_path
        sshd_target.start()
        with pytest.raises(TransferFailed):
            connection.run_streaming_stdin(
                f"cat > {shlex.quote(str(destination))}", _megabytes(5), bulk=True
            )
    assert not destination.exists(), "the ssh client did not log in to the other key"


def test_a_cancelled_bulk_upload_stops_the_remote_command(sshd_target: SSHTarget) -> None:
    destination = sshd_target.deploy_path / "big.bin"
    finished = sshd_target.deploy_path / "finished"

    def cancelled_after_three() -> Iterator[bytes]:
        for n, chunk in enumerate(_megabytes(64)):
            if n == 3:
                raise Cancelled("Cancelled on request")
            yield chunk

    with connect(sshd_target.endpoint()) as connection:
        with pytest.raises(Cancelled):
            connection.run_streaming_stdin(
                f"cat > {shlex.quote(str(destination))}; touch {shlex.quote(str(finished))}",
                cancelled_after_three(),
                bulk=True,
            )
        assert connection.left_running == []
        assert connection.run("echo still here").stdout == "still here"
    assert destination.exists(), "the upload had started through ssh"
    assert not finished.exists(), "the command was stopped, not left to finish"
