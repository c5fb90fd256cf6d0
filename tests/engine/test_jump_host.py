"""Servers behind a bastion: every connection tunnelled through a jump host's sshd, to
targets that the test process itself cannot reach (tests/support/bastion.py)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import pytest

from builds.engine import pipeline, ssh
from builds.engine.errors import (
    AuthenticationRefused,
    HostKeyMismatch,
    HostKeyNotTrusted,
    HostUnreachable,
    InvalidInput,
)
from tests.support.bastion import reachable_directly
from tests.support.engine import RecordingReporter, deploy_spec, server_for
from tests.support.sshd import _free_port, generate_key_pair

WRONG_FINGERPRINT = "SHA256:" + "A" * 43


def _settled(count: Callable[[], int]) -> int:
    """``count()`` once it has stopped changing: sshd logs a closed connection a moment
    after the client has gone."""
    deadline = time.monotonic() + 10
    last = count()
    while time.monotonic() < deadline:
        time.sleep(0.3)
        now = count()
        if now == last and now > 0:
            return now
        last = now
    return last


def test_it_deploys_two_servers_behind_one_jump_host_over_one_jump_connection(
    bastion, git_repo_factory, tmp_path
):
    first, second = bastion.target(), bastion.target()
    assert not reachable_directly(first) and not reachable_directly(second)
    repo = git_repo_factory()
    repo.commit({"index.html": "behind the bastion\n"})
    servers = [
        server_for(target, n + 1, endpoint=bastion.endpoint(target))
        for n, target in enumerate((first, second))
    ]
    logins_before = bastion.jump.accepted_logins()

    result = pipeline.deploy(deploy_spec(repo, tmp_path, servers), RecordingReporter())

    assert [outcome.ok for outcome in result.servers] == [True, True], result.servers
    for target in (first, second):
        assert (target.deploy_path / "current" / "index.html").read_text() == (
            "behind the bastion\n"
        )
        assert target.accepted_logins() == 1
    assert bastion.jump.accepted_logins() - logins_before == 1


def test_it_reads_the_targets_host_key_through_the_jump_host(bastion):
    target = bastion.target()

    offered = ssh.probe_host_key(target.hostname, target.port, jump=bastion.jump_endpoint())

    assert offered.fingerprint == target.host_key_fingerprint
    assert offered.fingerprint != bastion.jump.host_key_fingerprint
    confirmed = ssh.confirm_host_key(
        target.hostname, target.port, target.host_key_fingerprint, jump=bastion.jump_endpoint()
    )
    assert confirmed.fingerprint == target.host_key_fingerprint


def test_it_refuses_a_jump_host_whose_key_is_not_the_pinned_one(bastion):
    target = bastion.target()
    wrong = bastion.endpoint(
        target, jump=bastion.jump_endpoint(host_key_fingerprint=WRONG_FINGERPRINT)
    )
    logins_before = bastion.jump.accepted_logins()

    with pytest.raises(HostKeyMismatch) as refused:
        ssh.connect(wrong)

    assert f"the jump host {bastion.jump.hostname}:22" in str(refused.value)
    assert bastion.jump.host_key_fingerprint in str(refused.value)
    assert bastion.jump.accepted_logins() == logins_before  # no credential was sent


def test_it_refuses_a_jump_host_whose_key_is_not_pinned_yet(bastion):
    target = bastion.target()
    unpinned = bastion.endpoint(target, jump=bastion.jump_endpoint(host_key_fingerprint=None))

    with pytest.raises(HostKeyNotTrusted) as refused:
        ssh.connect(unpinned)

    message = str(refused.value)
    assert message.startswith(f"The jump host {bastion.jump.hostname}:22 offered the host key")
    assert bastion.jump.host_key_fingerprint in message


def test_it_names_the_jump_host_when_it_refuses_the_key(bastion, tmp_path):
    target = bastion.target()
    stranger = generate_key_pair(tmp_path, "stranger")
    endpoint = bastion.endpoint(
        target, jump=bastion.jump_endpoint(private_key=stranger.private_key)
    )

    with pytest.raises(AuthenticationRefused) as refused:
        ssh.connect(endpoint)

    assert str(refused.value).startswith(
        f"The jump host {bastion.jump.hostname}:22 (as {bastion.username}) refused the key"
    )


def test_servers_behind_a_jump_host_that_refuses_the_key_cost_it_one_failed_login(
    bastion, git_repo_factory, tmp_path
):
    stranger = generate_key_pair(tmp_path / "keys", "stranger")
    jump = bastion.jump_endpoint(private_key=stranger.private_key)
    targets = [bastion.target() for _ in range(3)]
    repo = git_repo_factory()
    repo.commit({"index.html": "never\n"})
    servers = [
        server_for(target, n + 1, endpoint=bastion.endpoint(target, jump=jump))
        for n, target in enumerate(targets)
    ]
    refused_before = bastion.jump.refused_logins()

    result = pipeline.deploy(deploy_spec(repo, tmp_path / "work", servers), RecordingReporter())

    for outcome in result.servers:
        assert not outcome.ok
        assert str(outcome.error).startswith(
            f"The jump host {bastion.jump.hostname}:22 (as {bastion.username}) refused the key"
        )
    assert _settled(bastion.jump.refused_logins) - refused_before == 1
    assert all(target.accepted_logins() == 0 for target in targets)


def test_it_names_the_target_hop_when_the_jump_host_cannot_reach_it(bastion):
    target = bastion.target()
    nowhere = bastion.endpoint(target, port=_free_port())

    with pytest.raises(HostUnreachable) as unreachable:
        ssh.connect(nowhere)

    assert str(unreachable.value).startswith(
        f"The target 127.0.0.1:{nowhere.port} could not be reached through the jump host "
        f"{bastion.jump.hostname}:22: it could not connect there"
    )


def test_it_names_the_target_when_its_key_is_not_the_pinned_one(bastion):
    target = bastion.target()

    with pytest.raises(HostKeyMismatch) as refused:
        ssh.connect(bastion.endpoint(target, host_key_fingerprint=WRONG_FINGERPRINT))

    assert f"the target 127.0.0.1:{target.port}" in str(refused.value)
    assert target.host_key_fingerprint in str(refused.value)


def test_it_says_so_when_the_jump_host_does_not_forward_connections(sshd_factory):
    # An ordinary target: its sshd has AllowTcpForwarding no.
    jump, target = sshd_factory(), sshd_factory()
    endpoint = target.endpoint(jump=jump.endpoint())

    with pytest.raises(HostUnreachable) as refused:
        ssh.connect(endpoint)

    assert str(refused.value) == (
        f"The target 127.0.0.1:{target.port} could not be reached through the jump host "
        f"127.0.0.1:{jump.port}: it refuses to forward connections (AllowTcpForwarding or "
        "PermitOpen in its sshd_config)."
    )


def test_a_jump_host_connection_opened_for_one_connection_closes_with_it(bastion):
    target = bastion.target()
    with ssh.connect(bastion.endpoint(target)) as connection:
        assert connection.run("echo hello").stdout == "hello"
        jump = connection._own_jump
        assert jump is not None and jump.is_active()
    assert not jump.is_active()


def test_a_jump_host_has_no_jump_host_of_its_own(sshd_target):
    inner = sshd_target.endpoint()
    with pytest.raises(InvalidInput) as refused:
        sshd_target.endpoint(jump=dataclasses.replace(inner, jump=inner))
    assert refused.value.field == "jump_hostname"


def test_an_sftp_only_server_behind_a_jump_host_gets_its_files_in_place(
    bastion, git_repo_factory, tmp_path
):
    target = bastion.target()
    repo = git_repo_factory()
    repo.commit({"index.html": "in place\n", "css/site.css": "body {}\n"})
    server = server_for(target, endpoint=bastion.endpoint(target), shell=False, atomic=False)

    result = pipeline.deploy(deploy_spec(repo, tmp_path, [server]), RecordingReporter())

    assert result.servers[0].ok, result.servers[0].error
    assert (target.deploy_path / "index.html").read_text() == "in place\n"
    assert (target.deploy_path / "css" / "site.css").read_text() == "body {}\n"
    assert not (target.deploy_path / "current").exists()
