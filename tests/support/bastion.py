"""A bastion on a test network (a pytest plugin): a jump host whose sshd forwards TCP, and
targets that only it can reach.

The jump host is a network namespace's sshd (tests/support/netns.py) on 10.211.<n>.2:22,
restarted with ``AllowTcpForwarding yes`` and a log of each accepted login. Each target is an
sshd inside that namespace listening on the namespace's own 127.0.0.1: the test process's
127.0.0.1 is another interface, so only a tunnel through the jump host gets there.
"""

from __future__ import annotations

import dataclasses
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from builds.engine.ssh import Endpoint
from tests.support.netns import NetnsHost, NetnsHostFactory
from tests.support.sshd import KeyPair, SSHTarget, _free_port, generate_key_pair


@dataclass
class Bastion:
    jump_host: NetnsHost
    #: The key the targets offer (not the jump host's: pinning one for the other must fail).
    target_host_key: KeyPair
    client_key: KeyPair
    username: str
    targets: list[SSHTarget] = field(default_factory=list)

    @property
    def jump(self) -> SSHTarget:
        return self.jump_host.target

    def jump_endpoint(self, **overrides: object) -> Endpoint:
        """The jump host as the engine sees it: the client key, its host key pinned."""
        return dataclasses.replace(self.jump.endpoint(), **overrides)  # type: ignore[arg-type]

    def target(self) -> SSHTarget:
        """A new target behind the jump host, on a port nothing listens on here."""
        target = self.jump_host.start_inner_target(
            port=_free_port(),
            host_key=self.target_host_key,
            client_key=self.client_key,
            username=self.username,
        )
        self.targets.append(target)
        return target

    def endpoint(self, target: SSHTarget, **overrides: object) -> Endpoint:
        """``target`` reached through the jump host."""
        return target.endpoint(**{"jump": self.jump_endpoint(), **overrides})


def reachable_directly(target: SSHTarget) -> bool:
    """Does anything answer at the target's address from the test process?"""
    try:
        with socket.create_connection((target.hostname, target.port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture
def bastion(
    netns_host_factory: NetnsHostFactory, ssh_client_key_pair: KeyPair
) -> Iterator[Bastion]:
    host = netns_host_factory()
    host.become_jump_host()
    with tempfile.TemporaryDirectory(prefix="bastion-keys-") as keys:
        yield Bastion(
            jump_host=host,
            target_host_key=generate_key_pair(Path(keys), "target-host"),
            client_key=ssh_client_key_pair,
            username=netns_host_factory.username,
        )
