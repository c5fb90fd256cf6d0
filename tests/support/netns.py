"""Test hosts in network namespaces: a real sshd on an address of its own (a pytest plugin).

Each host is a network namespace joined to the root namespace by a veth pair, on a private
/24 that only it uses::

    root namespace                          namespace slipway-<n>
    sw<n>h  10.211.<n>.1/24  <-- veth -->   sw<n>t  10.211.<n>.2/24, sshd on port 22

Its deploy path sits on a small tmpfs of its own, so the disk can be filled. The link is the
host side of the veth: ``cut_link`` sets it down (packets are dropped, connections hang as on
a real network cut), ``slow_link`` puts a token bucket on it (``tc qdisc … tbf``; the kernels
we run on have no netem), which slows what is sent to the host (uploads). The namespaces share
the root namespace's mounts and processes: a test reads the deployed files directly.

Used by ``make faults`` (faults/) and by tests/foundation/test_netns_hosts.py. Needs root, and
Debian's iproute2 (``ip``, ``tc``) and openssh-server. Slipway's workers reach the 10.211.x
addresses from the root namespace through the veth: SLIPWAY_ALLOW_PRIVATE_SERVERS (on by
default) must stay on.

Namespaces are numbered from a registry under /run (one file per namespace with its owner's
pid): two runs at once take different numbers, and a namespace left by a run that died
(SIGKILL, power loss) is removed by the next one that needs its number.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.sshd import (
    INSTALL_HINT,
    PRIVILEGE_SEPARATION_DIR,
    SSHD_PATH,
    KeyPair,
    SSHTarget,
    _descendants,
    ensure_unprivileged_user,
)

SUBNET_PREFIX = "10.211"
NAMESPACE_PREFIX = "slipway-"
REGISTRY = Path("/run/slipway-netns")
SSH_PORT = 22
DISK_MEGABYTES = 16
# tc's token bucket: 64 kbit/s with a 4 KiB burst, packets queued up to 400 ms then dropped.
SLOW_RATE = "64kbit"
SLOW_BURST = "4kb"
SLOW_LATENCY = "400ms"


class NetnsError(Exception):
    """A namespace, link, mount or sshd could not be set up; the message says which and why."""


def unavailable_reason() -> str | None:
    """Why test hosts cannot be made here (not root, a tool missing), or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    for tool in ("ip", "tc", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"{tool} is missing: apt-get install -y iproute2 mount"
    if not SSHD_PATH.exists():
        return f"{SSHD_PATH} is missing: {INSTALL_HINT}"
    return None


def _run(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise NetnsError(f"`{' '.join(command)}` failed ({result.returncode}): {result.stderr}")
    return result


@dataclass
class NetnsHost:
    """One test host: namespace, veth link, tmpfs disk and sshd (``target``)."""

    number: int
    root: Path
    target: SSHTarget
    #: A process that lives in the namespace for as long as the host does: sshd is started
    #: through it (``nsenter --net=/proc/<pid>/ns/net``), since the bind mount under
    #: /run/netns that ``ip netns exec`` needs has been seen to vanish during a run.
    holder: subprocess.Popen[bytes] | None = None
    #: Set while the disk is filled: the file that fills it.
    filler: Path | None = None
    #: sshd targets inside the namespace, on its loopback (start_inner_target).
    inner: list[SSHTarget] = field(default_factory=list)

    @property
    def namespace(self) -> str:
        return f"{NAMESPACE_PREFIX}{self.number}"

    @property
    def host_veth(self) -> str:
        """The root namespace's end of the link: cut and slowed here."""
        return f"sw{self.number}h"

    @property
    def target_veth(self) -> str:
        return f"sw{self.number}t"

    @property
    def address(self) -> str:
        return f"{SUBNET_PREFIX}.{self.number}.2"

    @property
    def gateway(self) -> str:
        return f"{SUBNET_PREFIX}.{self.number}.1"

    @property
    def disk(self) -> Path:
        """The tmpfs mount that holds the deploy path."""
        return self.root / "disk"

    @property
    def deploy_path(self) -> Path:
        return self.target.deploy_path

    # -- the link

    def cut_link(self) -> None:
        """Set the link down: packets to and from the host are dropped until restore_link."""
        _run("ip", "link", "set", self.host_veth, "down")

    def restore_link(self) -> None:
        _run("ip", "link", "set", self.host_veth, "up")

    def slow_link(self) -> None:
        """Put a 64 kbit/s token bucket on what is sent to the host (until unslow_link)."""
        _run(
            *("tc", "qdisc", "replace", "dev", self.host_veth, "root", "tbf"),
            *("rate", SLOW_RATE, "burst", SLOW_BURST, "latency", SLOW_LATENCY),
        )

    def unslow_link(self) -> None:
        _run("tc", "qdisc", "del", "dev", self.host_veth, "root", check=False)

    # -- the disk

    def fill_disk(self) -> int:
        """Fill the host's tmpfs with one file (root's: the deploy user cannot remove it);
        returns the bytes it took."""
        self.filler = self.disk / "filler"
        stats = os.statvfs(self.disk)
        free = stats.f_bavail * stats.f_frsize
        with self.filler.open("ab") as handle:
            # Another writer may take some of it meanwhile: what is left is taken below.
            with contextlib.suppress(OSError):
                os.posix_fallocate(handle.fileno(), 0, max(free, 1))
            chunk = b"\0" * 65536
            with contextlib.suppress(OSError):
                while True:
                    handle.write(chunk)
                    handle.flush()
        return self.filler.stat().st_size

    def free_disk(self) -> None:
        if self.filler is not None:
            self.filler.unlink(missing_ok=True)
            self.filler = None

    def free_bytes(self) -> int:
        stats = os.statvfs(self.disk)
        return stats.f_bavail * stats.f_frsize

    # -- sshd

    def stop_sshd(self) -> None:
        """Kill sshd and every session it forked, as a crash would."""
        self.target.stop()

    def start_sshd(self) -> None:
        self.target.start_or_raise()

    def become_jump_host(self) -> None:
        """Restart the host's sshd as a jump host: it forwards TCP connections (what
        ``direct-tcpip`` channels need) and logs every login it accepts."""
        self.target.allow_tcp_forwarding = True
        self.target.log_level = "INFO"
        self.stop_sshd()
        self.start_sshd()

    def start_inner_target(
        self, *, port: int, host_key: KeyPair, client_key: KeyPair, username: str
    ) -> SSHTarget:
        """An sshd inside the namespace on the namespace's own loopback (127.0.0.1:``port``):
        reachable through this host's sshd as a jump host, never from the root namespace,
        whose 127.0.0.1 is another interface. Logins with ``client_key`` as ``username``."""
        root = Path(tempfile.mkdtemp(prefix="inner-", dir=self.root))
        root.chmod(0o755)
        deploy_path = root / "deploy"
        deploy_path.mkdir()
        shutil.chown(deploy_path, username, username)
        target = SSHTarget(
            port=port,
            root=root,
            deploy_path=deploy_path,
            client_private_key=client_key.private_key,
            client_public_key=client_key.public_key,
            host_key_fingerprint=host_key.fingerprint,
            host_public_key_path=host_key.public_path,
            host_private_key_path=host_key.private_path,
            hostname="127.0.0.1",
            username=username,
            launcher=self.target.launcher,
            reachable_from_here=False,
        )
        target.authorize(client_key.public_key)
        self.inner.append(target)
        target.start_or_raise()
        return target

    def session_commands(self) -> list[str]:
        """The command lines of what runs in sshd's sessions (not sshd itself): what a
        deployment that has ended left running on the host."""
        process = self.target.process
        if process is None or process.poll() is not None:
            return []
        commands = []
        for pid in _descendants(process.pid):
            with contextlib.suppress(OSError):
                raw = Path(f"/proc/{pid}/cmdline").read_bytes()
                command = raw.replace(b"\0", b" ").decode(errors="replace").strip()
                if command and not command.startswith("sshd"):
                    commands.append(command)
        return commands

    def answers_ssh(self, timeout: float = 2.0) -> bool:
        """Does an SSH banner come back from the host's address within ``timeout`` seconds?"""
        try:
            with socket.create_connection((self.address, SSH_PORT), timeout=timeout) as probe:
                probe.settimeout(timeout)
                banner = probe.recv(256)
                probe.sendall(b"SSH-2.0-slipway-netns-probe\r\n")
        except OSError:
            return False
        return banner.startswith(b"SSH-")

    def close(self) -> None:
        """Stop sshd, unmount the disk, delete the namespace (and with it the veth pair)."""
        for inner in self.inner:
            with contextlib.suppress(Exception):
                inner.stop()
        with contextlib.suppress(Exception):
            self.target.stop()
        if self.holder is not None:
            self.holder.kill()
            self.holder.wait()
        if _run("umount", str(self.disk), check=False).returncode != 0:
            # A process that still has a file open there (it is being killed): detach anyway.
            _run("umount", "-l", str(self.disk), check=False)
        _remove_namespace(self.number)
        shutil.rmtree(self.root, ignore_errors=True)


def _remove_namespace(number: int) -> None:
    _run("ip", "netns", "del", f"{NAMESPACE_PREFIX}{number}", check=False)
    # Deleting the namespace destroys its end of the pair, which takes the other end along;
    # a half-made host may have only the root end.
    _run("ip", "link", "del", f"sw{number}h", check=False)
    (REGISTRY / str(number)).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _claim_number() -> int:
    """A free namespace number, registered to this process; reclaims those of dead owners."""
    REGISTRY.mkdir(mode=0o755, parents=True, exist_ok=True)
    with (REGISTRY / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        namespaces = set(_run("ip", "netns", "list").stdout.split())
        addresses = _run("ip", "-o", "-4", "addr", "show").stdout
        for number in range(1, 255):
            entry = REGISTRY / str(number)
            if entry.exists():
                try:
                    owner = int(entry.read_text().strip() or "0")
                except ValueError:
                    owner = 0
                if owner and _alive(owner):
                    continue
                _remove_namespace(number)  # left by a run that died
            elif f"{NAMESPACE_PREFIX}{number}" in namespaces:
                continue  # not ours to reclaim
            if f" {SUBNET_PREFIX}.{number}." in addresses:
                continue  # someone else's network
            entry.write_text(f"{os.getpid()}\n")
            return number
    raise NetnsError(f"no free {SUBNET_PREFIX}.x.0/24 network left (see {REGISTRY})")


def start_netns_host(
    *,
    host_key: KeyPair,
    authorized_keys: Iterable[str],
    username: str,
    base: Path | None = None,
    disk_megabytes: int = DISK_MEGABYTES,
) -> NetnsHost:
    """Make a namespace, its link, a tmpfs disk with ``<disk>/deploy`` owned by ``username``,
    and start sshd there (logins with ``authorized_keys`` only). Raises NetnsError; whatever
    was made is removed again."""
    reason = unavailable_reason()
    if reason is not None:
        raise NetnsError(reason)
    number = _claim_number()
    root = Path(tempfile.mkdtemp(prefix=f"slipway-netns-{number}-", dir=base))
    root.chmod(0o755)
    target = SSHTarget(
        port=SSH_PORT,
        root=root,
        deploy_path=root / "disk" / "deploy",
        client_private_key="",
        client_public_key="",
        host_key_fingerprint=host_key.fingerprint,
        host_public_key_path=host_key.public_path,
        host_private_key_path=host_key.private_path,
        hostname=f"{SUBNET_PREFIX}.{number}.2",
        username=username,
    )
    host = NetnsHost(number=number, root=root, target=target)
    try:
        namespace, host_veth, target_veth = host.namespace, host.host_veth, host.target_veth
        _run("ip", "netns", "add", namespace)
        _run(
            *("ip", "link", "add", host_veth, "type", "veth"),
            *("peer", "name", target_veth, "netns", namespace),
        )
        _run("ip", "addr", "add", f"{host.gateway}/24", "dev", host_veth)
        _run("ip", "link", "set", host_veth, "up")
        _run("ip", "-n", namespace, "addr", "add", f"{host.address}/24", "dev", target_veth)
        _run("ip", "-n", namespace, "link", "set", target_veth, "up")
        _run("ip", "-n", namespace, "link", "set", "lo", "up")
        host.holder = subprocess.Popen(
            ["ip", "netns", "exec", namespace, "sleep", "infinity"],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        _wait_until_inside(host.holder, namespace)
        target.launcher = ("nsenter", f"--net=/proc/{host.holder.pid}/ns/net", "--")
        host.disk.mkdir()
        _run(
            *("mount", "-t", "tmpfs", "-o", f"size={disk_megabytes}m,mode=0755"),
            *("slipway-netns", str(host.disk)),
        )
        host.deploy_path.mkdir()
        shutil.chown(host.deploy_path, username, username)
        for key in authorized_keys:
            target.authorize(key)
        PRIVILEGE_SEPARATION_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        target.start_or_raise()
    except BaseException:
        host.close()
        raise
    return host


def _wait_until_inside(process: subprocess.Popen[bytes], namespace: str) -> None:
    """Until ``process`` has joined ``namespace`` (ip execs it after setns)."""
    ours = os.readlink("/proc/self/ns/net")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise NetnsError(f"could not start a process in {namespace} ({process.returncode})")
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{process.pid}/ns/net") != ours:
                return
        time.sleep(0.01)
    raise NetnsError(f"no process joined {namespace} within 10 s")


@dataclass(frozen=True)
class NetnsHostFactory:
    """Makes test hosts for one test; they log in with ``client_key`` as the unprivileged
    deploy user, and offer ``host_key``."""

    client_key: KeyPair
    host_key: KeyPair
    username: str
    hosts: list[NetnsHost]

    def __call__(self) -> NetnsHost:
        host = start_netns_host(
            host_key=self.host_key,
            authorized_keys=[self.client_key.public_key],
            username=self.username,
        )
        host.target.client_private_key = self.client_key.private_key
        host.target.client_public_key = self.client_key.public_key
        self.hosts.append(host)
        return host


@pytest.fixture
def netns_host_factory(
    ssh_client_key_pair: KeyPair, ssh_host_key_pair: KeyPair
) -> Iterator[NetnsHostFactory]:
    """Test hosts in network namespaces (root only: skipped elsewhere, a failure in CI)."""
    reason = unavailable_reason()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must be able to make network namespaces: {reason}")
        pytest.skip(reason)
    factory = NetnsHostFactory(
        client_key=ssh_client_key_pair,
        host_key=ssh_host_key_pair,
        username=ensure_unprivileged_user(),
        hosts=[],
    )
    yield factory
    for host in factory.hosts:
        host.close()
