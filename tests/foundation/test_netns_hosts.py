"""The test hosts of `make faults`: sshd in a network namespace, behind a link we can cut."""

from __future__ import annotations

import pytest

from builds.engine.errors import HostUnreachable
from builds.engine.ssh import connect


def test_it_answers_ssh_on_its_own_address_and_not_while_its_link_is_cut(netns_host_factory):
    host = netns_host_factory()
    endpoint = host.target.endpoint(connect_timeout=2.0)
    assert endpoint.hostname == host.address != "127.0.0.1"
    with connect(endpoint) as connection:
        assert connection.run("pwd").stdout.strip().startswith("/")

    host.cut_link()
    with pytest.raises(HostUnreachable):
        connect(endpoint)

    host.restore_link()
    with connect(endpoint) as connection:
        assert connection.run("echo back").stdout.strip() == "back"


def test_its_deploy_path_is_a_small_disk_that_can_be_filled_and_freed(netns_host_factory):
    host = netns_host_factory()
    with connect(host.target.endpoint()) as connection:
        host.fill_disk()
        probe = f"{host.deploy_path}/probe"
        # dash reports a full disk as "I/O error".
        assert connection.run(f"echo x > {probe}", check=False).exit_code != 0
        assert host.free_bytes() == 0
        host.free_disk()
        assert connection.run(f"echo x > {probe}", check=False).exit_code == 0
    assert (host.deploy_path / "probe").read_text() == "x\n"


def test_two_hosts_have_addresses_and_links_of_their_own(netns_host_factory):
    first, second = netns_host_factory(), netns_host_factory()
    assert first.address != second.address
    first.cut_link()
    assert not first.answers_ssh(timeout=1.0)
    assert second.answers_ssh()
