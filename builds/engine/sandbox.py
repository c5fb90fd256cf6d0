"""The build sandbox: every build command runs in bubblewrap, away from the worker.

A build command is code from a project's repository or settings, written by people the
operator may not trust with anything but that project. On the worker it would see the data
directory (database, encryption key), every other project's checkout and keys, the worker's
environment and its loopback services. The sandbox gives it instead:

- the system read-only (``/usr``, ``/etc``, ``/opt`` and the operator's extra toolchain paths);
- the checkout read-write at ``/build/src``, the project's persistent cache read-write at
  ``/build/home`` (``HOME``; npm, pip, composer and yarn caches point there), a private ``/tmp``;
- nothing else of the worker's file system: no data directory, no mirror, no other project;
- new user, PID, IPC, UTS, cgroup and network namespaces, so neither the worker's ``/proc`` nor
  its environment is visible (the command starts from an empty environment plus the project's
  build variables and ``PATH``, ``HOME``, ``LANG``, ``TMPDIR``, ``CI``);
- an unprivileged uid: the operator's build account (``SLIPWAY_BUILD_USER``) when the worker is
  root, so that root-only files (``/etc/shadow``, host keys) stay unreadable, and otherwise the
  worker's uid in a user namespace of its own that holds no capability;
- its own network namespace whose only way out is slirp4netns with host loopback disabled
  (package registries work; Redis, PostgreSQL and Slipway's port on the worker's loopback do
  not), or no network at all when the project says so;
- limits on processes and open files (``prlimit``), and on memory where the worker may create
  a cgroup (cgroup v2, or v1's ``memory`` and ``pids`` controllers).

Sources: bubblewrap(1) (``--info-fd``/``--block-fd`` let the caller attach the network and the
cgroup before the command starts), slirp4netns(1) (``--disable-host-loopback``,
``--ready-fd``), the kernel's cgroup-v1 and cgroup-v2 documentation.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import select
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from builds.engine.errors import UserError

#: Where the checkout and the cache appear inside the sandbox.
SANDBOX_SOURCE = "/build/src"
SANDBOX_HOME = "/build/home"

SYSTEM_PATHS = ("/usr", "/etc", "/opt")
MERGED_USR = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# slirp4netns's fixed addresses: the guest is 10.0.2.100, its DNS forwarder 10.0.2.3.
_SLIRP_DNS = "10.0.2.3"
_START_TIMEOUT_SECONDS = 30.0


class SandboxUnavailable(UserError):
    """Builds cannot be isolated on this worker, so they are refused (never run bare)."""

    code = "sandbox_unavailable"


@dataclass(frozen=True)
class SandboxPolicy:
    """How build commands are isolated on this worker (from the operator's settings).

    ``enabled=False`` is the operator's explicit ``SLIPWAY_BUILD_SANDBOX=off``: commands then
    run as the worker's user with the same clean environment and the cache as ``HOME``.
    ``build_user`` is the host account that builds run as when the worker is root.
    ``memory_mb`` and ``max_processes`` apply per build command.
    """

    enabled: bool = True
    network: bool = True
    build_user: str = "slipway-build"
    readonly_paths: tuple[str, ...] = ()
    #: Builds may reach private ranges (10/8, 172.16/12, 192.168/16): a private package
    #: mirror. Off by default: the worker's database and broker often live there.
    private_network: bool = False
    max_processes: int = 1024
    max_open_files: int = 4096
    memory_mb: int | None = 4096


@dataclass(frozen=True)
class HostIdentity:
    """The host uid/gid a sandboxed command runs as (None: the worker's own)."""

    uid: int | None
    gid: int | None


@dataclass
class SandboxedCommand:
    """One command started in the sandbox; ``process`` is bwrap (or /bin/sh when off)."""

    process: subprocess.Popen[bytes]
    #: The sandbox's first process (its PID 1), on the host's side; None with the sandbox off.
    child_pid: int | None = None
    _helpers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _cgroups: list[Path] = field(default_factory=list)
    _stage: Path | None = None

    def kill(self) -> None:
        """Kill everything the command started, and reap it.

        The sandbox's PID 1 first: its death ends every process of the PID namespace, and
        bwrap, its parent, reaps it and exits (killing bwrap first would leave PID 1 to the
        host's init, a zombie where the worker is PID 1 in a container).
        """
        if self.child_pid is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.child_pid, signal.SIGKILL)
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def close(self) -> None:
        """Stop the network helper and remove the command's cgroups (after it has ended)."""
        for helper in self._helpers:
            if helper.poll() is None:
                helper.terminate()
                try:
                    helper.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    helper.kill()
                    helper.wait()
        for group in self._cgroups:
            with contextlib.suppress(OSError):
                group.rmdir()
        if self._stage is not None:
            # Only empty mount points: the mounts lived in the command's own namespace.
            for folder in (self._stage / "src", self._stage / "home", self._stage):
                with contextlib.suppress(OSError):
                    folder.rmdir()


def base_environment(home: str, *, path: str | None = None) -> dict[str, str]:
    """The fixed variables every build command gets, before the project's own.

    Caches of the common package managers point into ``home`` so that they persist between
    builds and never land in the checkout (and so never reach a server).
    """
    return {
        # Not the worker's PATH (which names its own folders); a project sets its own PATH
        # among its build variables when its tools live elsewhere.
        "PATH": path or _DEFAULT_PATH,
        "HOME": home,
        "LANG": "C.UTF-8",
        "TMPDIR": "/tmp",  # noqa: S108 - the sandbox's private tmpfs
        "CI": "true",
        "XDG_CACHE_HOME": f"{home}/.cache",
        "npm_config_cache": f"{home}/.npm",
        "YARN_CACHE_FOLDER": f"{home}/.cache/yarn",
        "PIP_CACHE_DIR": f"{home}/.cache/pip",
        "COMPOSER_HOME": f"{home}/.composer",
        "COMPOSER_CACHE_DIR": f"{home}/.cache/composer",
    }


def host_identity(policy: SandboxPolicy) -> HostIdentity:
    """Which host account runs builds: the build user when the worker is root.

    Raises SandboxUnavailable naming the fix when the worker is root and the account is
    missing (root inside a user namespace would still own every root-only file).
    """
    if os.geteuid() != 0:
        return HostIdentity(None, None)
    try:
        entry = pwd.getpwnam(policy.build_user)
    except KeyError:
        if policy.build_user.isdigit():
            return HostIdentity(int(policy.build_user), int(policy.build_user))
        raise SandboxUnavailable(
            f"The worker runs as root, so builds run as the account '{policy.build_user}', "
            "which does not exist on this worker. Create it with: useradd --system "
            f"--no-create-home --shell /usr/sbin/nologin {policy.build_user} "
            "(or set SLIPWAY_BUILD_USER to another unprivileged account)."
        ) from None
    if entry.pw_uid == 0:
        raise SandboxUnavailable(f"SLIPWAY_BUILD_USER '{policy.build_user}' must not be root.")
    return HostIdentity(entry.pw_uid, entry.pw_gid)


def hand_over(paths: Sequence[Path], identity: HostIdentity, *, recursive: bool = True) -> None:
    """Make ``paths`` (recursively, or only themselves) the build account's, so its commands
    can write there.

    Only needed when the worker is root; symlinks are changed themselves, never followed.
    A recursive walk must only cover a tree no build command is running in (the project's
    checkout, under the workspace lock), so nothing can swap a path under the walk.
    """
    if identity.uid is None or identity.gid is None:
        return
    uid, gid = identity.uid, identity.gid
    for top in paths:
        top.mkdir(parents=True, exist_ok=True)
        if not recursive:
            status = os.lstat(top)
            if status.st_uid != uid or status.st_gid != gid:
                os.lchown(top, uid, gid)
            continue
        for current, folders, files in os.walk(top):
            for name in (current, *(os.path.join(current, n) for n in (*folders, *files))):
                status = os.lstat(name)
                if status.st_uid != uid or status.st_gid != gid:
                    os.lchown(name, uid, gid)


@cache
def _probe(identity: HostIdentity) -> str | None:
    """None when bwrap can make the namespaces here, else what went wrong."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bubblewrap is not installed on this worker (apt-get install bubblewrap)"
    argv = [
        bwrap,
        "--unshare-all",
        "--ro-bind",
        "/usr",
        "/usr",
        *_merged_usr_arguments(),
        "--proc",
        "/proc",
        *_device_arguments(),
        "--",
        "true",
    ]
    try:
        result = subprocess.run(
            argv,
            capture_output=True,
            timeout=_START_TIMEOUT_SECONDS,
            env={"PATH": _DEFAULT_PATH},
            user=identity.uid,
            group=identity.gid,
            extra_groups=[] if identity.uid is not None else None,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"bubblewrap could not start: {error}"
    if result.returncode != 0:
        detail = result.stderr.decode("utf-8", "replace").strip()[:300]
        return (
            f"bubblewrap cannot create user namespaces here ({detail}); allow unprivileged user "
            "namespaces (sysctl kernel.unprivileged_userns_clone=1, or on Ubuntu "
            "kernel.apparmor_restrict_unprivileged_userns=0)"
        )
    return None


def check_available(policy: SandboxPolicy) -> HostIdentity:
    """Raise SandboxUnavailable, naming the fix, unless builds can be sandboxed here.

    Returns the host identity builds run as. With the sandbox off, the worker's own.
    """
    if not policy.enabled:
        return HostIdentity(None, None)
    identity = host_identity(policy)
    problem = _probe(identity)
    if problem is not None:
        raise SandboxUnavailable(
            f"Build commands are refused because they cannot be sandboxed: {problem}. "
            "For an install that serves a single team, the operator may set "
            "SLIPWAY_BUILD_SANDBOX=off (see docs/security.md)."
        )
    if policy.network and shutil.which("slirp4netns") is None:
        raise SandboxUnavailable(
            "Build commands are refused: slirp4netns, which gives sandboxed builds their "
            "network, is not installed on this worker (apt-get install slirp4netns); or turn "
            "the project's build network off."
        )
    return identity


def _merged_usr_arguments() -> list[str]:
    arguments: list[str] = []
    for path in MERGED_USR:
        if os.path.islink(path):
            arguments += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            arguments += ["--ro-bind", path, path]
    return arguments


def _device_arguments() -> list[str]:
    # Not bwrap's --dev: mounting a devpts needs uid 0 in the namespace, for which bwrap nests
    # a second user namespace, and slirp4netns could then not join the build's network.
    arguments = ["--tmpfs", "/dev"]
    for name in ("null", "zero", "full", "random", "urandom", "tty"):
        if os.path.exists(f"/dev/{name}"):
            arguments += ["--dev-bind", f"/dev/{name}", f"/dev/{name}"]
    arguments += [
        "--tmpfs",
        "/dev/shm",  # noqa: S108 - a private tmpfs inside the sandbox
        "--symlink",
        "/proc/self/fd",
        "/dev/fd",
        "--symlink",
        "/proc/self/fd/0",
        "/dev/stdin",
        "--symlink",
        "/proc/self/fd/1",
        "/dev/stdout",
        "--symlink",
        "/proc/self/fd/2",
        "/dev/stderr",
    ]
    return arguments


def _sealed_arguments(arguments: Sequence[str]) -> int:
    """A memfd holding ``arguments`` NUL-separated, positioned at its start, for bwrap --args."""
    descriptor = os.memfd_create("bwrap-arguments", 0)
    data = b"".join(os.fsencode(argument) + b"\0" for argument in arguments)
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view) :]
    os.lseek(descriptor, 0, os.SEEK_SET)
    return descriptor


#: Never reachable from a build, whatever the network setting: link-local (cloud metadata at
#: 169.254.169.254) and the shared address space (Alibaba's metadata at 100.100.100.200).
BLOCKED_NETWORKS = ("169.254.0.0/16", "100.64.0.0/10", "0.0.0.0/8")
#: Refused unless the operator allows private networks (SLIPWAY_BUILD_PRIVATE_NETWORK):
#: RFC 1918. slirp4netns's own 10.0.2.0/24 stays reachable (a more specific route).
PRIVATE_NETWORKS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")


def host_addresses() -> list[str]:
    """The worker host's own IPv4 addresses other than loopback (from ``ip -4 addr``)."""
    try:
        listing = subprocess.run(
            ["ip", "-o", "-4", "addr", "show"],
            capture_output=True,
            text=True,
            timeout=10,
            env={"PATH": _DEFAULT_PATH},
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as error:
        raise SandboxUnavailable(
            f"The build network needs iproute2's `ip` on the worker ({error})"
        ) from None
    found = []
    for line in listing.splitlines():
        fields = line.split()
        if "inet" in fields:
            address = fields[fields.index("inet") + 1].split("/")[0]
            if not address.startswith("127."):
                found.append(address)
    return found


def _close_host_addresses(child_pid: int, identity: HostIdentity, policy: SandboxPolicy) -> None:
    """Routes in the build's network that refuse the worker host's own addresses and the
    blocked networks: slirp4netns would otherwise connect to them from the host's side, so
    services the host listens on with a non-loopback address would be reachable."""
    routes = [*(f"{address}/32" for address in host_addresses()), *BLOCKED_NETWORKS]
    if not policy.private_network:
        routes += PRIVATE_NETWORKS
    script = "".join(f"route add prohibit {route}\n" for route in routes)
    enter = ["nsenter", f"--target={child_pid}", "--net"]
    if identity.uid is None and os.geteuid() != 0:
        # A worker that is not root has capabilities only inside the build's user namespace.
        enter += ["--user", "--preserve-credentials"]
    try:
        subprocess.run(
            [*enter, "--", "ip", "-batch", "-"],
            input=script.encode(),
            capture_output=True,
            timeout=30,
            env={"PATH": _DEFAULT_PATH},
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as error:
        detail = getattr(error, "stderr", b"") or b""
        raise SandboxUnavailable(
            "The build network could not be restricted to the outside world "
            f"({error}; {detail.decode('utf-8', 'replace').strip()[:200]})"
        ) from None


@cache
def pids_cgroup_available() -> bool:
    """Whether this worker can give each build a pids cgroup of its own (tried once)."""
    for parent, _procs, limits in _cgroup_roots():
        if "pids" not in limits:
            continue
        probe = parent / f"slipway-probe-{uuid.uuid4().hex[:8]}"
        try:
            probe.mkdir()
        except OSError:
            continue
        try:
            return (probe / "pids.max").exists()
        finally:
            with contextlib.suppress(OSError):
                probe.rmdir()
    return False


def _data_pipe(content: bytes) -> int:
    """A pipe's read end already holding ``content`` (which must fit in the pipe buffer)."""
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, content)
    finally:
        os.close(write_end)
    return read_end


@dataclass(frozen=True)
class SandboxFds:
    """The descriptors bwrap reads: resolv.conf's content, and the start-up handshake."""

    resolv_conf: int | None
    info: int
    block: int

    def all(self) -> tuple[int, ...]:
        fds = (self.resolv_conf, self.info, self.block)
        return tuple(fd for fd in fds if fd is not None)


def isolation_arguments(environment: Mapping[str, str], *, own_network: bool) -> list[str]:
    """bwrap's namespaces, privileges and environment for a build (the local sandbox's and
    the build host's alike); ``own_network`` False shares the host's network."""
    arguments = [
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        *(["--unshare-net"] if own_network else []),
        "--hostname",
        "build",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--clearenv",
    ]
    for name, value in environment.items():
        arguments += ["--setenv", name, value]
    return arguments


def bwrap_arguments(
    policy: SandboxPolicy,
    *,
    checkout: str,
    home: str,
    workdir: str,
    environment: Mapping[str, str],
    fds: SandboxFds,
) -> list[str]:
    """bubblewrap's command line for one build command (without the command itself).

    ``checkout`` and ``home`` are host paths the build account can reach; ``workdir`` is the
    folder to start in, relative to the checkout ("" for its top).
    """
    arguments = ["bwrap", *isolation_arguments(environment, own_network=True)]
    for path in (*SYSTEM_PATHS, *policy.readonly_paths):
        if os.path.isdir(path):
            arguments += ["--ro-bind", path, path]
    arguments += _merged_usr_arguments()
    if fds.resolv_conf is not None:
        arguments += ["--ro-bind-data", str(fds.resolv_conf), "/etc/resolv.conf"]
    arguments += [
        "--proc",
        "/proc",
        *_device_arguments(),
        "--tmpfs",
        "/tmp",  # noqa: S108 - a private tmpfs inside the sandbox
        "--tmpfs",
        "/build",
        "--bind",
        checkout,
        SANDBOX_SOURCE,
        "--bind",
        home,
        SANDBOX_HOME,
        "--chdir",
        str(Path(SANDBOX_SOURCE) / workdir),
        "--info-fd",
        str(fds.info),
        "--block-fd",
        str(fds.block),
    ]
    return arguments


def _read_child_pid(info_fd: int, process: subprocess.Popen[bytes]) -> int:
    buffer = b""
    while True:
        ready, _, _ = select.select([info_fd], [], [], _START_TIMEOUT_SECONDS)
        if not ready:
            raise SandboxUnavailable("bubblewrap did not start the sandbox within 30 s")
        chunk = os.read(info_fd, 4096)
        if not chunk:
            break
        buffer += chunk
        with contextlib.suppress(ValueError):
            document = json.loads(buffer)
            if isinstance(document, dict) and "child-pid" in document:
                return int(document["child-pid"])
    code = process.wait()
    detail = (
        process.stderr.read().decode("utf-8", "replace").strip()[:300] if process.stderr else ""
    )
    raise SandboxUnavailable(f"bubblewrap failed to set up the sandbox (exit {code}): {detail}")


def _network_helper_command(child_pid: int, ready_fd: int) -> list[str]:
    """slirp4netns's command line giving the sandbox whose first process is ``child_pid`` its
    network; it writes "1" to ``ready_fd`` once the network is up."""
    # slirp4netns runs as the worker (it needs /dev/net/tun, often root-only in containers),
    # confined by its own mount namespace and seccomp filter; the build never runs in it.
    command = [
        "slirp4netns",
        "--configure",
        "--mtu=65520",
        "--disable-host-loopback",
        "--enable-sandbox",
        "--enable-seccomp",
        "--ready-fd",
        str(ready_fd),
        # setns() into the build's network needs capabilities in its user namespace.
        f"--userns-path=/proc/{child_pid}/ns/user",
        str(child_pid),
        "tap0",
    ]
    if os.geteuid() == 0:
        # As root, slirp4netns's --enable-sandbox stays in the worker's user namespace, so its
        # unshare(CLONE_NEWNS) copy keeps the host's shared peer groups; it then makes only "/"
        # private (MS_PRIVATE without MS_REC), pivots into a tmpfs and lazily unmounts the old
        # root, and that unmount propagates to the host: every mount below a shared mount
        # vanished from the host (`ip netns add`'s /run/netns/<name>; on systemd, where "/" is
        # shared, /dev/pts, /dev/shm, /sys/fs/cgroup). A mount namespace of its own, made
        # recursively private first, stops the propagation. Not needed (nor possible) when the
        # worker is not root: slirp4netns then enters the build's user namespace first, where
        # a new mount namespace gets the host's shared mounts as slaves, which send nothing back.
        # Sources: slirp4netns 1.2's sandbox.c and main.c, mount_namespaces(7).
        # unshare(1) execs slirp4netns in place, so the helper's pid is still slirp4netns's.
        command = ["unshare", "--mount", "--propagation", "private", "--", *command]
    return command


def _start_network(child_pid: int) -> subprocess.Popen[bytes]:
    ready_read, ready_write = os.pipe()
    try:
        helper = subprocess.Popen(
            _network_helper_command(child_pid, ready_write),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            pass_fds=(ready_write,),
            env={"PATH": _DEFAULT_PATH},
            start_new_session=True,
        )
        os.close(ready_write)
        ready_write = -1
        ready, _, _ = select.select([ready_read], [], [], _START_TIMEOUT_SECONDS)
        if not ready or os.read(ready_read, 1) != b"1":
            helper.kill()
            _, error = helper.communicate()
            detail = error.decode("utf-8", "replace").strip()[:300]
            raise SandboxUnavailable(f"slirp4netns could not give the build a network: {detail}")
        return helper
    finally:
        os.close(ready_read)
        if ready_write != -1:
            os.close(ready_write)


def _cgroup_roots() -> list[tuple[Path, str, dict[str, str]]]:
    """(parent folder, file taking pids, limit files) for each writable cgroup hierarchy."""
    roots: list[tuple[Path, str, dict[str, str]]] = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return roots
    for line in lines:
        _, controllers, path = line.split(":", 2)
        relative = path.lstrip("/")
        if controllers == "":
            base = Path("/sys/fs/cgroup")
            if not (base / "cgroup.controllers").exists():
                base = base / "unified"
            roots.append(
                (base / relative, "cgroup.procs", {"memory": "memory.max", "pids": "pids.max"})
            )
        elif "memory" in controllers.split(","):
            roots.append(
                (
                    Path("/sys/fs/cgroup/memory") / relative,
                    "cgroup.procs",
                    {"memory": "memory.limit_in_bytes"},
                )
            )
        elif "pids" in controllers.split(","):
            roots.append(
                (Path("/sys/fs/cgroup/pids") / relative, "cgroup.procs", {"pids": "pids.max"})
            )
    return roots


def _enter_cgroups(pids: Sequence[int], policy: SandboxPolicy) -> list[Path]:
    """Put the sandbox in a fresh cgroup per writable hierarchy with the policy's limits.

    Best effort by design ("where the kernel allows"): a hierarchy we may not write to, or
    one without the controller, is skipped.
    """
    made: list[Path] = []
    name = f"slipway-build-{uuid.uuid4().hex[:12]}"
    for parent, procs_file, limit_files in _cgroup_roots():
        limits: dict[str, str] = {}
        if "memory" in limit_files and policy.memory_mb:
            limits[limit_files["memory"]] = str(policy.memory_mb * 1024 * 1024)
        if "pids" in limit_files:
            limits[limit_files["pids"]] = str(policy.max_processes)
        if not limits:
            continue
        group = parent / name
        try:
            group.mkdir()
        except OSError:
            continue
        # A cgroup-v2 hierarchy offers only the controllers its parent enabled.
        limits = {name: value for name, value in limits.items() if (group / name).exists()}
        if not limits:
            with contextlib.suppress(OSError):
                group.rmdir()
            continue
        try:
            for limit_file, value in limits.items():
                (group / limit_file).write_text(value)
            for pid in pids:
                (group / procs_file).write_text(str(pid))
        except OSError:
            with contextlib.suppress(OSError):
                group.rmdir()
            continue
        made.append(group)
    return made


def start(
    command: str,
    *,
    policy: SandboxPolicy,
    identity: HostIdentity,
    checkout: Path,
    workdir: Path,
    home: Path,
    variables: Mapping[str, str],
) -> SandboxedCommand:
    """Start ``/bin/sh -c command`` in the sandbox, stdout and stderr piped.

    ``variables`` are the project's build variables; they win over the fixed set except
    ``HOME`` and ``TMPDIR``. Raises SandboxUnavailable when the sandbox cannot be set up.
    The caller waits for the process, reads its pipes, then calls ``close()``.
    """
    if not policy.enabled:
        environment = {**base_environment(str(home)), **variables, "HOME": str(home)}
        process = subprocess.Popen(
            ["/bin/sh", "-c", command],
            cwd=workdir,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        return SandboxedCommand(process)
    environment = {**base_environment(SANDBOX_HOME), **variables}
    environment.update(HOME=SANDBOX_HOME, TMPDIR="/tmp")  # noqa: S108
    workdir_inside = workdir.relative_to(checkout).as_posix()  # ValueError when outside
    if workdir_inside == ".":
        workdir_inside = ""
    info_read, info_write = os.pipe()
    block_read, block_write = os.pipe()
    fds = SandboxFds(
        resolv_conf=_data_pipe(f"nameserver {_SLIRP_DNS}\n".encode()) if policy.network else None,
        info=info_write,
        block=block_read,
    )
    stage: Path | None = None
    sources = (str(checkout), str(home))
    prefix: list[str] = []
    if identity.uid is not None and identity.gid is not None:
        # A root worker's data directory is 0700, and bwrap resolves its sources as the build
        # account: the checkout and home are bind-mounted, in a private mount namespace of
        # their own, under a folder that account may traverse, and only then is root dropped.
        stage = Path(tempfile.mkdtemp(prefix="slipway-sandbox-"))
        stage.chmod(0o711)
        (stage / "src").mkdir()
        (stage / "home").mkdir()
        sources = (str(stage / "src"), str(stage / "home"))
        prefix = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "/bin/sh",
            "-c",
            'mount --bind -- "$1" "$3/src" && mount --bind -- "$2" "$3/home" && shift 3 && '
            'exec "$@"',
            "sh",
            str(checkout),
            str(home),
            str(stage),
            "setpriv",
            f"--reuid={identity.uid}",
            f"--regid={identity.gid}",
            "--clear-groups",
            "--inh-caps=-all",
            "--",
        ]
    # The arguments (the project's variables among them) reach bwrap through a file
    # descriptor: on its command line they would be readable by every account of the host.
    arguments = _sealed_arguments(
        bwrap_arguments(
            policy,
            checkout=sources[0],
            home=sources[1],
            workdir=workdir_inside,
            environment=environment,
            fds=fds,
        )[1:]
    )
    # A per-build pids cgroup limits the build's processes; without one, prlimit's per-account
    # limit is the fallback (shared by every build running as the same account).
    nproc = [] if pids_cgroup_available() else [f"--nproc={policy.max_processes}"]
    argv = [
        *prefix,
        "prlimit",
        *nproc,
        f"--nofile={policy.max_open_files}",
        "--",
        "bwrap",
        "--args",
        str(arguments),
        "--",
        "/bin/sh",
        "-c",
        command,
    ]
    try:
        process = subprocess.Popen(
            argv,
            cwd="/",
            env={"PATH": _DEFAULT_PATH},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            pass_fds=(*fds.all(), arguments),
            start_new_session=True,  # its own process group: cancel and timeouts kill it all
        )
    finally:
        for fd in (*fds.all(), arguments):
            os.close(fd)
    started = SandboxedCommand(process, _stage=stage)
    try:
        child = _read_child_pid(info_read, process)
        started.child_pid = child
        started._cgroups = _enter_cgroups([process.pid, child], policy)
        if policy.network:
            started._helpers.append(_start_network(child))
            _close_host_addresses(child, identity, policy)
        try:
            os.write(block_write, b"go")
        except BrokenPipeError:
            process.wait()
            assert process.stderr is not None
            detail = process.stderr.read().decode("utf-8", "replace").strip()[:300]
            raise SandboxUnavailable(
                f"bubblewrap stopped while starting the build: {detail}"
            ) from None
    except BaseException:
        started.kill()
        started.close()
        raise
    finally:
        os.close(info_read)
        os.close(block_write)
    return started
