"""The SSH transport against real sshd targets: no mocks, no database."""

from __future__ import annotations

import io
import shlex
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from builds.engine.errors import (
    AuthenticationRefused,
    CommandFailed,
    CommandTimedOut,
    DiskFull,
    HostKeyMismatch,
    HostKeyNotTrusted,
    HostUnreachable,
    InvalidInput,
    PermissionDenied,
    TransferFailed,
)
from builds.engine.ssh import (
    CommandResult,
    Endpoint,
    classify_command_failure,
    connect,
    fingerprint,
    load_private_key,
    probe_host_key,
)
from tests.support.sshd import SSHTarget, SSHTargetFactory, generate_key_pair

# Lets this module run on its own (`pytest tests/engine/test_ssh.py -p no:django`); when the
# project conftest also lists the plugin, pytest registers it only once.
pytest_plugins = ["tests.support.sshd"]


def test_it_runs_a_command_and_streams_each_stream_in_order(sshd_target: SSHTarget) -> None:
    lines: list[tuple[str, str]] = []

    with connect(sshd_target.endpoint()) as connection:
        result = connection.run(
            "echo hello; echo world; echo oops >&2; echo again >&2; exit 3",
            on_line=lambda stream, text: lines.append((stream, text)),
            check=False,
        )

    assert result.exit_code == 3
    assert [text for stream, text in lines if stream == "stdout"] == ["hello", "world"]
    assert [text for stream, text in lines if stream == "stderr"] == ["oops", "again"]
    assert result.stdout == "hello\nworld"
    assert result.stderr == "oops\nagain"


def test_it_delivers_lines_while_the_command_is_still_running(sshd_target: SSHTarget) -> None:
    arrivals: dict[str, float] = {}

    def record_arrival(_stream: str, text: str) -> None:
        arrivals[text] = time.monotonic()

    with connect(sshd_target.endpoint()) as connection:
        started = time.monotonic()
        connection.run("echo first; sleep 1; echo second", on_line=record_arrival)

    assert arrivals["first"] - started < 0.8
    assert arrivals["second"] - arrivals["first"] > 0.8


def test_it_decodes_split_utf8_partial_lines_and_invalid_bytes(sshd_target: SSHTarget) -> None:
    with connect(sshd_target.endpoint()) as connection:
        result = connection.run(r"printf 'caf\303\251\r\nbad \377 byte\nno newline at the end'")

    assert result.stdout.split("\n") == ["café", "bad \ufffd byte", "no newline at the end"]


def test_it_runs_several_commands_over_one_connection(sshd_target: SSHTarget) -> None:
    with connect(sshd_target.endpoint()) as connection:
        results = [connection.run(f"echo {number}") for number in range(5)]
        stdin_result = connection.run("cat", stdin=b"from stdin\n")
        empty_stdin_result = connection.run("cat")

    assert [result.stdout for result in results] == ["0", "1", "2", "3", "4"]
    assert stdin_result.stdout == "from stdin"
    assert empty_stdin_result.stdout == ""


def test_it_refuses_a_host_key_that_differs_from_the_pinned_one(
    sshd_target: SSHTarget, sshd_factory: SSHTargetFactory
) -> None:
    rebuilt = sshd_factory(new_host_key=True)
    pinned = sshd_target.host_key_fingerprint
    assert rebuilt.host_key_fingerprint != pinned

    with pytest.raises(HostKeyMismatch) as refused:
        connect(rebuilt.endpoint(host_key_fingerprint=pinned))

    message = str(refused.value)
    assert f"127.0.0.1:{rebuilt.port}" in message
    assert pinned in message
    assert rebuilt.host_key_fingerprint in message
    assert refused.value.offered == rebuilt.host_key_fingerprint


def test_it_refuses_a_server_whose_key_is_not_pinned_yet(sshd_target: SSHTarget) -> None:
    with pytest.raises(HostKeyNotTrusted) as refused:
        connect(sshd_target.endpoint(host_key_fingerprint=None))

    assert f"127.0.0.1:{sshd_target.port}" in str(refused.value)
    assert sshd_target.host_key_fingerprint in str(refused.value)


def test_it_reports_a_refused_client_key_with_user_and_host(
    sshd_target: SSHTarget, tmp_path: Path
) -> None:
    stranger = generate_key_pair(tmp_path, "stranger")

    with pytest.raises(AuthenticationRefused) as refused:
        connect(sshd_target.endpoint(private_key=stranger.private_key))

    assert f"{sshd_target.username}@127.0.0.1:{sshd_target.port}" in str(refused.value)
    assert stranger.fingerprint in str(refused.value)
    # What to do: the public key's line, for the login user's authorized_keys.
    assert f"Add this line to ~/.ssh/authorized_keys of {sshd_target.username} on 127.0.0.1" in (
        str(refused.value)
    )
    line = str(refused.value).splitlines()[-1]
    assert line.split()[:2] == stranger.public_key.split()[:2]

    # Adding that line is what lets Slipway in.
    sshd_target.authorize(line)
    connect(sshd_target.endpoint(private_key=stranger.private_key)).close()


@pytest.mark.parametrize(
    ("key_type", "bits"), [("ecdsa", None), ("rsa", 2048)], ids=["ecdsa", "rsa"]
)
def test_it_logs_in_with_ecdsa_and_rsa_keys_too(
    sshd_target: SSHTarget, tmp_path: Path, key_type: str, bits: int | None
) -> None:
    key_pair = generate_key_pair(tmp_path, key_type, key_type=key_type, bits=bits)
    sshd_target.authorize(key_pair.public_key)

    with connect(sshd_target.endpoint(private_key=key_pair.private_key)) as connection:
        assert connection.run("echo in").stdout == "in"
    assert fingerprint(load_private_key(key_pair.private_key)) == key_pair.fingerprint


def test_it_refuses_a_private_key_it_cannot_read() -> None:
    with pytest.raises(InvalidInput, match="private_key"):
        load_private_key("-----BEGIN OPENSSH PRIVATE KEY-----\nnonsense\n")


def test_it_reports_a_closed_port_as_unreachable(sshd_target: SSHTarget) -> None:
    sshd_target.stop()

    with pytest.raises(HostUnreachable, match=f"127.0.0.1:{sshd_target.port}"):
        connect(sshd_target.endpoint())
    with pytest.raises(HostUnreachable, match=f"127.0.0.1:{sshd_target.port}.*5 s"):
        probe_host_key("127.0.0.1", sshd_target.port, timeout=5)


def test_it_reports_a_port_that_does_not_speak_ssh_as_unreachable() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        started = time.monotonic()

        with pytest.raises(HostUnreachable, match=f"127.0.0.1:{port}"):
            probe_host_key("127.0.0.1", port, timeout=1)

    assert time.monotonic() - started < 5


def test_it_connects_again_after_the_target_restarts(sshd_target: SSHTarget) -> None:
    sshd_target.stop()
    sshd_target.start()

    with connect(sshd_target.endpoint()) as connection:
        assert connection.run("echo back").stdout == "back"


def test_it_probes_the_fingerprint_that_ssh_keygen_prints(sshd_target: SSHTarget) -> None:
    listing = subprocess.run(
        ["ssh-keygen", "-lf", str(sshd_target.host_public_key_path)],
        check=True,
        capture_output=True,
        text=True,
    )

    host_key = probe_host_key("127.0.0.1", sshd_target.port, timeout=5)

    assert host_key.fingerprint == listing.stdout.split()[1]
    assert host_key.key_type == "ssh-ed25519"


def test_it_extracts_a_tar_stream_piped_to_stdin(sshd_target: SSHTarget) -> None:
    files = {
        "index.html": b"<h1>Hello</h1>\n",
        "lib/app.py": b"print('deployed')\n" * 1000,
        "assets/blob.bin": bytes(range(256)) * 4096,
    }
    archive = _tar_gz(files)
    chunks = [archive[offset : offset + 7000] for offset in range(0, len(archive), 7000)]
    release = sshd_target.deploy_path / "releases" / "20260101120000"
    quoted = shlex.quote(str(release))

    with connect(sshd_target.endpoint()) as connection:
        result = connection.run_streaming_stdin(
            f"mkdir -p {quoted} && tar -xzf - -C {quoted}", chunks, timeout=30
        )

    assert result.exit_code == 0
    for name, content in files.items():
        assert (release / name).read_bytes() == content


def test_it_raises_command_failed_with_the_exit_code_and_last_lines(
    sshd_target: SSHTarget,
) -> None:
    with connect(sshd_target.endpoint()) as connection, pytest.raises(CommandFailed) as failed:
        connection.run("for n in $(seq 1 30); do echo line $n >&2; done; exit 7")

    assert failed.value.exit_code == 7
    assert failed.value.tail == [f"line {n}" for n in range(11, 31)]
    assert "line 30" in str(failed.value)


def test_it_tells_a_full_disk_and_a_permission_problem_apart() -> None:
    failure = CommandFailed("tar -x", 2, ["tar: app.js: Cannot write: No space left on device"])

    full = classify_command_failure(failure, failure.tail, "web1:22")
    denied = classify_command_failure(
        failure, ["mkdir: cannot create directory '/srv': Permission denied"], "web1:22"
    )
    other = classify_command_failure(failure, ["tar: unexpected EOF"], "web1:22")

    assert isinstance(full, DiskFull)
    assert "web1:22" in str(full)
    assert "No space left" in str(full)
    assert isinstance(denied, PermissionDenied)
    assert other is failure


def test_it_raises_permission_denied_when_stderr_says_so(sshd_target: SSHTarget) -> None:
    with (
        connect(sshd_target.endpoint()) as connection,
        pytest.raises(PermissionDenied, match="exit code 1"),
    ):
        connection.run("echo 'cannot open /srv/app: Permission denied' >&2; exit 1")


def test_it_times_out_a_command_and_keeps_the_connection_usable(
    sshd_target: SSHTarget,
) -> None:
    with connect(sshd_target.endpoint()) as connection:
        started = time.monotonic()
        with pytest.raises(CommandTimedOut, match=r"0\.5 s"):
            connection.run("sleep 10", timeout=0.5)
        elapsed = time.monotonic() - started

        assert elapsed < 5  # the timeout, then stopping the command's processes
        assert connection.run("echo still here").stdout == "still here"


def test_it_raises_transfer_failed_when_the_target_dies_mid_upload(
    sshd_target: SSHTarget,
) -> None:
    sent_a_few_megabytes = threading.Event()
    megabyte = bytes(range(256)) * 4096

    def upload() -> Iterator[bytes]:
        # Far more than can be sent before the target dies; bounded so a bug cannot loop.
        for sent in range(2048):
            if sent == 4:
                sent_a_few_megabytes.set()
            yield megabyte

    def kill_target() -> None:
        sent_a_few_megabytes.wait(timeout=20)
        sshd_target.stop()

    killer = threading.Thread(target=kill_target)
    destination = shlex.quote(str(sshd_target.deploy_path / "big.bin"))
    with connect(sshd_target.endpoint()) as connection:
        killer.start()
        started = time.monotonic()
        with pytest.raises(TransferFailed, match=f"127.0.0.1:{sshd_target.port}"):
            connection.run_streaming_stdin(f"cat > {destination}", upload(), timeout=20)
        elapsed = time.monotonic() - started
    killer.join(timeout=10)

    assert sent_a_few_megabytes.is_set()
    assert elapsed < 10


def test_it_runs_three_targets_at_once(sshd_factory: SSHTargetFactory) -> None:
    started = time.monotonic()
    targets = [sshd_factory() for _ in range(3)]
    startup = time.monotonic() - started

    connections = [connect(target.endpoint()) for target in targets]
    try:
        results: list[CommandResult] = [
            connection.run("echo $SSH_CONNECTION") for connection in connections
        ]
    finally:
        for connection in connections:
            connection.close()

    for target, result in zip(targets, results, strict=True):
        assert result.stdout.split()[-1] == str(target.port)
    assert startup < 5


def test_it_reuses_one_sftp_client(sshd_target: SSHTarget) -> None:
    (sshd_target.deploy_path / "shared").mkdir()

    with connect(sshd_target.endpoint()) as connection:
        sftp = connection.sftp()
        assert connection.sftp() is sftp
        assert sftp.listdir(str(sshd_target.deploy_path)) == ["shared"]


def test_it_keeps_secrets_out_of_the_endpoint_repr() -> None:
    endpoint = Endpoint(
        hostname="web1.example.com",
        username="deploy",
        private_key="-----BEGIN OPENSSH PRIVATE KEY-----\nsecret-key-material\n",
        password="hunter2",
    )

    assert "secret-key-material" not in repr(endpoint)
    assert "hunter2" not in repr(endpoint)
    assert "web1.example.com" in repr(endpoint)


def _tar_gz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, content in files.items():
            member = tarfile.TarInfo(name)
            member.size = len(content)
            member.mode = 0o644
            archive.addfile(member, io.BytesIO(content))
    return buffer.getvalue()
