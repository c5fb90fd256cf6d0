"""Real OpenSSH servers on 127.0.0.1 for engine tests (a pytest plugin).

Each target is its own ``sshd -D`` with its own config, port and directory. It logs in as the
user running the tests, or, when that is root, as an unprivileged account made for the tests
(``slipway-test``, shell /bin/sh): deploying as root would hide permission problems, and
root's rc files here are slow. Key pairs are made once per session, so a target costs one process
start (tens of milliseconds) and several can run at once.

Needs Debian's ``openssh-server`` (``/usr/sbin/sshd``) and ``ssh-keygen`` (openssh-client). The
Makefile installs them in CI; a missing sshd fails the test with what to install rather than
skipping it, so a green run always means the transport really ran.

Password authentication is off: with ``UsePAM no`` it would need a real password in
/etc/shadow, and the tests do not create system users.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Protocol

import pytest

from builds.engine.ssh import Endpoint

SSHD_PATH = Path("/usr/sbin/sshd")
PRIVILEGE_SEPARATION_DIR = Path("/run/sshd")
STARTUP_TIMEOUT_SECONDS = 10.0
_PORT_ATTEMPTS = 3
INSTALL_HINT = (
    "install Debian's openssh-server package: apt-get install -y openssh-server "
    "(it provides /usr/sbin/sshd and pulls in ssh-keygen)"
)


@dataclass(frozen=True)
class KeyPair:
    private_path: Path
    public_path: Path
    #: OpenSSH private key text, as a user would paste it into Slipway.
    private_key: str
    #: One authorized_keys line: "ssh-ed25519 AAAA... comment".
    public_key: str
    #: As ``ssh-keygen -l`` prints it; computed by ssh-keygen, not by the code under test.
    fingerprint: str


def generate_key_pair(
    directory: Path, name: str, key_type: str = "ed25519", bits: int | None = None
) -> KeyPair:
    """Make an unencrypted key pair with ssh-keygen."""
    if shutil.which("ssh-keygen") is None:
        pytest.fail(f"ssh-keygen is missing: {INSTALL_HINT}", pytrace=False)
    directory.mkdir(parents=True, exist_ok=True)
    private_path = directory / name
    command = ["ssh-keygen", "-q", "-t", key_type, "-N", "", "-C", f"slipway-test-{name}"]
    if bits is not None:
        command += ["-b", str(bits)]
    subprocess.run([*command, "-f", str(private_path)], check=True, capture_output=True)
    public_path = directory / f"{name}.pub"
    listing = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(public_path)], check=True, capture_output=True, text=True
    )
    return KeyPair(
        private_path=private_path,
        public_path=public_path,
        private_key=private_path.read_text(),
        public_key=public_path.read_text().strip(),
        fingerprint=listing.stdout.split()[1],
    )


class SSHDDidNotStart(Exception):
    def __init__(self, message: str, *, port_taken: bool = False) -> None:
        super().__init__(message)
        self.port_taken = port_taken


@dataclass
class SSHTarget:
    """One running sshd and the directory a deployment writes into."""

    port: int
    root: Path
    deploy_path: Path
    client_private_key: str
    client_public_key: str
    host_key_fingerprint: str
    host_public_key_path: Path
    host_private_key_path: Path
    hostname: str = "127.0.0.1"
    username: str = field(default_factory=getpass.getuser)
    #: Run sshd through this prefix: ``("ip", "netns", "exec", name)`` for a target in a
    #: network namespace (tests/support/netns.py). sshd listens on ``hostname``.
    launcher: tuple[str, ...] = ()
    #: Let clients tunnel TCP through this sshd (a jump host); off like on a locked-down
    #: server, so that a target refuses to be used as a jump host.
    allow_tcp_forwarding: bool = False
    #: sshd's LogLevel: INFO logs each accepted login ("Accepted publickey for ..."), VERBOSE
    #: each login and command (see ``count_connections``).
    log_level: str = "ERROR"
    #: False for an sshd the test process cannot connect to (it listens inside a network
    #: namespace on that namespace's loopback): started once its log says it listens.
    reachable_from_here: bool = True
    process: subprocess.Popen[bytes] | None = None
    _listening_before: int = 0

    @property
    def config_path(self) -> Path:
        return self.root / "sshd_config"

    @property
    def log_path(self) -> Path:
        return self.root / "sshd.log"

    @property
    def authorized_keys_path(self) -> Path:
        return self.root / "authorized_keys"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def endpoint(self, **overrides: Any) -> Endpoint:
        """An Endpoint that logs in with the session's client key and pins the host key."""
        endpoint = Endpoint(
            hostname=self.hostname,
            port=self.port,
            username=self.username,
            private_key=self.client_private_key,
            host_key_fingerprint=self.host_key_fingerprint,
            connect_timeout=5.0,
        )
        return dataclasses.replace(endpoint, **overrides)

    def authorize(self, public_key: str) -> None:
        """Also accept this public key (sshd rereads authorized_keys at every login)."""
        with self.authorized_keys_path.open("a") as keys:
            keys.write(public_key.strip() + "\n")

    def start(self) -> None:
        """Start sshd (again, on the same port) and wait until it accepts connections."""
        try:
            self.start_or_raise()
        except SSHDDidNotStart as exc:
            pytest.fail(str(exc), pytrace=False)

    def start_or_raise(self) -> None:
        if self.running:
            return
        self._write_config()
        self._listening_before = self._log_text().count("Server listening on")
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*self.launcher, str(SSHD_PATH), "-D", "-e", "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        self._wait_until_listening()

    def stop(self) -> None:
        """Kill sshd and every session it forked, as if the server lost power.

        Killing only the listener is not enough: each connection lives in a child that called
        setsid(), so neither the listener's death nor killpg() reaches it.
        """
        process = self.process
        if process is None:
            return
        self.process = None
        if process.poll() is not None:
            return
        # Frozen, the listener can neither accept nor fork while we collect its descendants.
        os.kill(process.pid, signal.SIGSTOP)
        for pid in [process.pid, *_descendants(process.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait(timeout=10)

    def _write_config(self) -> None:
        lines = [
            f"ListenAddress {self.hostname}",
            f"Port {self.port}",
            f"HostKey {self.host_private_key_path}",
            f"AuthorizedKeysFile {self.authorized_keys_path}",
            "PidFile none",
            # The target lives under a pytest temp dir whose parents sshd would otherwise audit.
            "StrictModes no",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            # CI runs the tests as root, and the target logs in as the user running them.
            "PermitRootLogin yes",
            "UsePAM no",
            "Subsystem sftp internal-sftp",
            # Tests open many channels and connections at once.
            "MaxSessions 50",
            "MaxStartups 100",
            "PrintMotd no",
            "PrintLastLog no",
            "X11Forwarding no",
            f"AllowTcpForwarding {'yes' if self.allow_tcp_forwarding else 'no'}",
            # An unreachable sshd is known to listen by its log: at least INFO.
            f"LogLevel {'INFO' if not self.reachable_from_here and self.log_level == 'ERROR' else self.log_level}",
        ]
        if _sshd_version() >= (9, 8):
            # Failed logins (a test of a wrong key) would otherwise get 127.0.0.1 refused
            # for a while by the next tests on that target.
            lines.append("PerSourcePenalties no")
        self.config_path.write_text("\n".join(lines) + "\n")

    def _wait_until_listening(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = self._log_text()
                raise SSHDDidNotStart(
                    f"sshd exited with {self.process.returncode} on port {self.port}:\n{log}",
                    port_taken="Address already in use" in log,
                )
            if self._answers_with_ssh_banner():
                return
            if (
                not self.reachable_from_here
                and self._log_text().count("Server listening on") > self._listening_before
            ):
                return
            time.sleep(0.02)
        self.stop()
        raise SSHDDidNotStart(
            f"sshd did not listen on {self.hostname}:{self.port} within "
            f"{STARTUP_TIMEOUT_SECONDS:g} s:\n{self._log_text()}"
        )

    def accepted_logins(self) -> int:
        """How many logins this sshd accepted so far (needs ``log_level`` INFO or above)."""
        return self._log_text().count("Accepted publickey for ")

    def refused_logins(self) -> int:
        """How many connections ended before a login was accepted (needs ``log_level`` INFO):
        sshd logs each one as "Connection closed by <address> port <port> [preauth]"."""
        return sum(
            1
            for line in self._log_text().splitlines()
            if line.startswith("Connection closed by") and line.endswith("[preauth]")
        )

    def _answers_with_ssh_banner(self) -> bool:
        if not self.reachable_from_here:
            return False
        try:
            with socket.create_connection((self.hostname, self.port), timeout=0.5) as probe:
                banner = probe.recv(256)
                # Introducing ourselves keeps sshd from logging the probe as an error.
                probe.sendall(b"SSH-2.0-slipway-test-probe\r\n")
        except OSError:
            return False
        return banner.startswith(b"SSH-")

    def logins(self) -> int:
        """How many logins sshd accepted (SSH connections opened and authenticated) since
        ``count_connections``."""
        return self._counted("Accepted publickey for ")

    def commands(self) -> int:
        """How many commands (exec requests: one round trip each) sshd started since
        ``count_connections``."""
        return self._counted("Starting session: command for ")

    def count_connections(self) -> None:
        """Restart sshd logging each login and command it starts, counted from zero
        (``logins``, ``commands``)."""
        self.stop()
        self.log_path.unlink(missing_ok=True)
        self.log_level = "VERBOSE"
        self.start()

    def _counted(self, sign: str) -> int:
        if self.log_level != "VERBOSE":
            raise AssertionError("call count_connections() first")
        return self._log_text().count(sign)

    def _log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace").strip() or "(no output)"
        except FileNotFoundError:
            return "(no output)"


class SSHTargetFactory(Protocol):
    def __call__(self, *, new_host_key: bool = False, username: str | None = None) -> SSHTarget: ...


UNPRIVILEGED_USER = "slipway-test"


def ensure_unprivileged_user(name: str = UNPRIVILEGED_USER) -> str:
    """A plain system account to log in as (root only): permission errors are real for it.

    Its password field is "*" rather than locked ("!"): with UsePAM off, sshd refuses even key
    logins to a locked account.
    """
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI runs as root: the unprivileged-user tests need to create an account")
        pytest.skip("creating a system account needs root (CI runs as root)")
    if subprocess.run(["id", name], capture_output=True).returncode != 0:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--create-home",
                "--home-dir",
                f"/var/lib/{name}",
                "--shell",
                "/bin/sh",
                name,
            ],
            check=True,
            capture_output=True,
        )
    subprocess.run(["usermod", "--password", "*", name], check=True, capture_output=True)
    home = Path(f"/var/lib/{name}")
    if not home.is_dir():
        # An account made by an earlier version of this fixture, without a home.
        subprocess.run(["usermod", "--home", str(home), name], check=True, capture_output=True)
        home.mkdir(mode=0o755, parents=True, exist_ok=True)
        shutil.chown(home, name, name)
    return name


@pytest.fixture(scope="session")
def sshd_keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sshd-keys")


@pytest.fixture(scope="session")
def ssh_client_key_pair(sshd_keys_dir: Path) -> KeyPair:
    """The key Slipway logs in with, shared by every target of the session."""
    return generate_key_pair(sshd_keys_dir, "client")


@pytest.fixture(scope="session")
def ssh_host_key_pair(sshd_keys_dir: Path) -> KeyPair:
    """The host key every target offers unless it asks for its own."""
    return generate_key_pair(sshd_keys_dir, "host")


@pytest.fixture
def sshd_factory(
    tmp_path_factory: pytest.TempPathFactory,
    ssh_client_key_pair: KeyPair,
    ssh_host_key_pair: KeyPair,
) -> Iterator[SSHTargetFactory]:
    """Start sshd targets on demand; all are killed when the test ends."""
    _require_sshd()
    targets: list[SSHTarget] = []
    roots: list[Path] = []

    def start_target(*, new_host_key: bool = False, username: str | None = None) -> SSHTarget:
        if username is None and os.geteuid() == 0:
            # Not root: root's shell here reads a .bashrc that runs `pyenv init` (and waits
            # on pyenv's rehash lock) for every command; a deploy user is also what a real
            # server has. The account's shell is /bin/sh, with no rc file.
            username = ensure_unprivileged_user()
        root = Path(tempfile.mkdtemp(prefix="sshd-target-", dir=_targets_base()))
        root.chmod(0o755)
        roots.append(root)
        host_key = (
            generate_key_pair(root / "host-key", "host") if new_host_key else ssh_host_key_pair
        )
        deploy_path = root / "deploy"
        deploy_path.mkdir()
        target = SSHTarget(
            port=_free_port(),
            root=root,
            deploy_path=deploy_path,
            client_private_key=ssh_client_key_pair.private_key,
            client_public_key=ssh_client_key_pair.public_key,
            host_key_fingerprint=host_key.fingerprint,
            host_public_key_path=host_key.public_path,
            host_private_key_path=host_key.private_path,
        )
        if username is not None:
            target.username = username
            shutil.chown(deploy_path, username)
        target.authorize(ssh_client_key_pair.public_key)
        targets.append(target)
        attempts_left = _PORT_ATTEMPTS
        while True:
            try:
                target.start_or_raise()
                return target
            except SSHDDidNotStart as exc:
                attempts_left -= 1
                # The free port we picked was taken before sshd bound it: pick another.
                if not exc.port_taken or attempts_left == 0:
                    pytest.fail(str(exc), pytrace=False)
                target.port = _free_port()

    yield start_target

    for target in targets:
        target.stop()
    for root in roots:
        shutil.rmtree(root, ignore_errors=True)


def _targets_base() -> Path:
    """Where targets live: outside pytest's own temp folders, which are private (0700) to the
    user running the tests, while the targets' deploy user must reach its files."""
    base = Path(tempfile.gettempdir()) / "slipway-test-targets"
    base.mkdir(mode=0o755, exist_ok=True)
    base.chmod(0o755)
    return base


@pytest.fixture
def sshd_target(sshd_factory: SSHTargetFactory) -> SSHTarget:
    return sshd_factory()


def _require_sshd() -> None:
    if not SSHD_PATH.exists():
        pytest.fail(f"{SSHD_PATH} is missing: {INSTALL_HINT}", pytrace=False)
    if os.geteuid() == 0:
        # sshd refuses to start as root without its privilege separation directory, which
        # Debian creates only when the service starts (tmpfiles), not at install time.
        PRIVILEGE_SEPARATION_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)


@cache
def _sshd_version() -> tuple[int, int]:
    # `sshd -V` prints the version on stderr; older sshd reject -V but print it in the usage.
    completed = subprocess.run([str(SSHD_PATH), "-V"], capture_output=True, text=True)
    match = re.search(r"OpenSSH_(\d+)\.(\d+)", completed.stderr + completed.stdout)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _free_port() -> int:
    # Another process may take the port before sshd binds it; the factory then retries.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid``, from /proc (Linux)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces; the parent pid follows.
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found
