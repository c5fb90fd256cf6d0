"""How many SSH connections deployments open, counted by the servers' own sshd: one per server
for all of a deployment's phases, and none for the next deployment or rollback when the
connections are kept (ssh.ConnectionPool)."""

from __future__ import annotations

import dataclasses
import time

import pytest

from builds.engine import pipeline
from builds.engine.errors import HostKeyMismatch
from builds.engine.specs import CommandSpec, ConfigFileSpec, StrategySpec
from builds.engine.ssh import ConnectionPool
from tests.support.engine import RecordingReporter, after, deploy_spec, server_for

EVERY_STAGE = (
    CommandSpec(command="true", stage="before_transfer"),
    CommandSpec(command="true", stage="before_switch"),
    CommandSpec(command="true", stage="after_switch"),
)


@pytest.fixture
def two_targets(sshd_factory):
    targets = [sshd_factory(), sshd_factory()]
    for target in targets:
        target.count_connections()
    return targets


def _deploy(repo, tmp_path, servers, revision, deployment_id, **overrides):
    result = pipeline.deploy(
        deploy_spec(repo, tmp_path, servers, revision, deployment_id=deployment_id, **overrides),
        RecordingReporter(),
    )
    assert result.ok, [r.error for r in result.servers]
    return result, [after(result, server) for server in servers]


def test_a_deployment_opens_one_connection_per_server_for_all_its_phases(
    two_targets, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit({"index.html": "A\n"}, "A")
    servers = [server_for(target, n + 1) for n, target in enumerate(two_targets)]
    _deploy(
        repo,
        tmp_path,
        servers,
        a,
        1,
        commands=EVERY_STAGE,
        strategy=StrategySpec(kind="prepare_then_switch"),
    )
    assert [target.logins() for target in two_targets] == [1, 1]


def test_kept_connections_serve_the_next_deployment_and_a_rollback(
    two_targets, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    a = repo.commit({"index.html": "A\n"}, "A")
    b = repo.commit({"index.html": "B\n"}, "B")
    pool = ConnectionPool()
    try:
        servers = [server_for(target, n + 1) for n, target in enumerate(two_targets)]
        first, servers = _deploy(repo, tmp_path, servers, a, 1, connections=pool)
        _, servers = _deploy(repo, tmp_path, servers, b, 2, connections=pool, commands=EVERY_STAGE)
        assert len(pool) == 2, "each server's connection is kept"
        back = pipeline.rollback(
            pipeline.RollbackSpec(
                deployment_id=3,
                project="Shop",
                servers=tuple(servers),
                targets={r.server_id: r.release or "" for r in first.servers},
                connections=pool,
            ),
            RecordingReporter(),
        )
        assert all(r.ok for r in back), [r.error for r in back]
        assert [target.logins() for target in two_targets] == [1, 1]
        assert (pool.opened, pool.reused) == (2, 4)
        for target, result in zip(two_targets, first.servers, strict=True):
            assert (target.deploy_path / "current").resolve().name == result.release
    finally:
        pool.close_all()


def test_a_kept_connection_the_server_dropped_is_replaced(sshd_target, git_repo_factory, tmp_path):
    sshd_target.count_connections()
    repo = git_repo_factory()
    a = repo.commit({"index.html": "A\n"}, "A")
    b = repo.commit({"index.html": "B\n"}, "B")
    pool = ConnectionPool()
    try:
        _, servers = _deploy(repo, tmp_path, [server_for(sshd_target)], a, 1, connections=pool)
        # The server restarts (its sessions die with it) while the connection is kept.
        sshd_target.stop()
        sshd_target.start()
        _deploy(repo, tmp_path, servers, b, 2, connections=pool)
        assert sshd_target.logins() == 2, "one login before the restart, one after"
        assert (pool.opened, pool.reused) == (2, 0)
    finally:
        pool.close_all()


def test_a_kept_connection_goes_only_to_the_same_login_and_pinned_key(sshd_factory):
    target = sshd_factory()
    target.count_connections()
    other_key = sshd_factory(new_host_key=True)
    pool = ConnectionPool()
    try:
        endpoint = target.endpoint()
        pool.give_back(pool.take(endpoint))
        # The same server pinned with another key: refused, never handed the kept connection.
        wrong = dataclasses.replace(endpoint, host_key_fingerprint=other_key.host_key_fingerprint)
        with pytest.raises(HostKeyMismatch):
            pool.take(wrong)
        # Another login (here: the same one, with a password too) gets a connection of its own.
        pool.give_back(pool.take(dataclasses.replace(endpoint, password="not-used")))
        assert target.logins() == 2
        assert len(pool) == 2
        kept = pool.take(endpoint)
        assert pool.reused == 1 and kept.endpoint == endpoint
        kept.close()
    finally:
        pool.close_all()


def test_a_connection_that_left_a_command_running_is_not_kept(sshd_target):
    pool = ConnectionPool()
    connection = pool.take(sshd_target.endpoint())
    connection.left_running.append("`sleep 600` (process group 4242)")
    pool.give_back(connection)
    assert len(pool) == 0 and not connection.is_active


def test_kept_connections_are_closed_once_idle_for_too_long(sshd_target):
    pool = ConnectionPool(idle_seconds=0.2)
    connection = pool.take(sshd_target.endpoint())
    pool.give_back(connection)
    deadline = time.monotonic() + 30
    while len(pool) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(pool) == 0
    assert not connection.is_active


def test_a_deployment_and_a_rollback_without_commands_take_few_round_trips(
    sshd_target, git_repo_factory, tmp_path
):
    sshd_target.count_connections()
    repo = git_repo_factory()
    a = repo.commit({"index.html": "A\n"}, "A")
    b = repo.commit({"index.html": "B\n"}, "B")
    first, servers = _deploy(repo, tmp_path, [server_for(sshd_target)], a, 1)
    # Lock and prepare, upload, then finish and switch (clean-up and unlock in the same trip).
    assert sshd_target.commands() == 3
    _, servers = _deploy(repo, tmp_path, servers, b, 2)
    assert sshd_target.commands() == 6
    back = pipeline.rollback(
        pipeline.RollbackSpec(
            deployment_id=3,
            project="Shop",
            servers=tuple(servers),
            targets={servers[0].id: first.servers[0].release or ""},
        ),
        RecordingReporter(),
    )
    assert back[0].ok, back[0].error
    # Lock, check the kept release and read the live one; then switch and unlock.
    assert sshd_target.commands() == 8
    assert (sshd_target.deploy_path / "current").resolve().name == first.servers[0].release
    assert not (sshd_target.deploy_path / ".slipway" / "lock").exists(), "unlocked"


def test_with_commands_before_the_switch_the_release_is_finished_before_they_run(
    sshd_target, git_repo_factory, tmp_path
):
    sshd_target.count_connections()
    repo = git_repo_factory()
    a = repo.commit({"index.html": "A\n"}, "A")
    # The command sees the finished release: its config file, and its manifest recorded.
    check = CommandSpec(
        command="test -f app.env && test -f ../../.slipway/manifests/%release%.json",
        stage="before_switch",
    )
    _deploy(
        repo,
        tmp_path,
        [server_for(sshd_target)],
        a,
        1,
        commands=(check,),
        config_files=(ConfigFileSpec(path="app.env", body="MODE=production\n"),),
    )
    # Lock and prepare, upload, finish, the command, then switch.
    assert sshd_target.commands() == 5
