"""Build commands in the bubblewrap sandbox: a hostile build reaches nothing of the worker's.

Everything is real: bubblewrap, slirp4netns, the worker's own Redis and PostgreSQL on
loopback, a web server the test starts on loopback, real Git repositories and an sshd target.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import random
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from builds.engine import pipeline
from builds.engine.build import (
    BuildCommandSpec,
    BuildSpec,
    restore_cache,
    run_local_command,
    save_cache,
)
from builds.engine.errors import Cancelled, CommandFailed, CommandTimedOut, InvalidInput
from builds.engine.sandbox import (
    BLOCKED_NETWORKS,
    PRIVATE_NETWORKS,
    SandboxPolicy,
    SandboxUnavailable,
    _probe,
    check_available,
    hand_over,
    host_addresses,
)
from tests.support.engine import RecordingReporter, after, deploy_spec, server_for
from tests.support.webserve import serve_in_background

SECRET = "worker-secret-6d1f0c"


class Box:
    """One project's checkout and build home, plus a worker-side 'data directory'."""

    def __init__(self, tmp_path: Path, policy: SandboxPolicy) -> None:
        self.policy = policy
        self.data_dir = tmp_path / "data"
        self.data_dir.mkdir(mode=0o700, parents=True)
        (self.data_dir / "encryption.key").write_text(SECRET)
        (self.data_dir / "db.sqlite3").write_text(f"sqlite {SECRET}")
        other = self.data_dir / "builds" / "project-2" / "workspace"
        other.mkdir(parents=True)
        (other / ".env").write_text(f"OTHER_PROJECT_SECRET={SECRET}")
        self.checkout = self.data_dir / "builds" / "project-1" / "workspace"
        self.checkout.mkdir(parents=True)
        (self.checkout / "index.html").write_text("hello\n")
        self.home = self.data_dir / "builds" / "project-1" / "home"
        self.home.mkdir()
        self.identity = check_available(policy)
        hand_over([self.checkout, self.home], self.identity)
        self.lines: list[tuple[str, str]] = []

    def run(self, command: str, *, env: dict[str, str] | None = None, halt: bool = False) -> str:
        self.lines.clear()
        run_local_command(
            BuildCommandSpec(command, halt_on_error=halt),
            cwd=self.checkout,
            env=env or {},
            on_line=lambda stream, text: self.lines.append((stream, text)),
            checkout=self.checkout,
            home=self.home,
            policy=self.policy,
            identity=self.identity,
        )
        return "\n".join(text for _, text in self.lines)


@pytest.fixture
def box(tmp_path, monkeypatch):
    # The worker's environment holds Slipway's own settings and keys.
    monkeypatch.setenv("SLIPWAY_ENCRYPTION_KEYS", SECRET)
    monkeypatch.setenv("SLIPWAY_TEST_WORKER_SECRET", SECRET)
    return Box(tmp_path, SandboxPolicy(network=True))


def test_it_keeps_a_hostile_build_away_from_everything_of_the_workers(box, tmp_path):
    outside = tmp_path / "written-from-the-build"
    attempts = {
        "list the data dir": f"ls -la {box.data_dir}",
        "read the encryption key": f"cat {box.data_dir}/encryption.key",
        "read the database": f"cat {box.data_dir}/db.sqlite3",
        "read another project's checkout": f"cat {box.data_dir}/builds/project-2/workspace/.env",
        "climb out of the checkout": "cat ../../project-2/workspace/.env; ls -la ../..",
        "read every process's environment": "cat /proc/*/environ | tr '\\0' '\\n'",
        "read its own environment": "env; cat /proc/self/environ | tr '\\0' '\\n'",
        "read the worker's process through /proc": f"cat /proc/{os.getpid()}/environ",
        "read root-only files": "cat /etc/shadow",
        "write outside the checkout": f"echo x > {outside}; echo x > /usr/local/pwned; "
        "echo x > ../pwned",
    }
    for attempt, command in attempts.items():
        output = box.run(command)
        assert SECRET not in output, attempt
        assert "SLIPWAY_" not in output, attempt
    assert not outside.exists()
    assert not Path("/usr/local/pwned").exists()
    assert not (box.checkout.parent / "pwned").exists()
    # The command did run, as an unprivileged account with a clean environment.
    environment = dict(line.split("=", 1) for line in box.run("env").splitlines() if "=" in line)
    assert environment["HOME"] == "/build/home"
    assert environment["TMPDIR"] == "/tmp"
    assert {"PATH", "HOME", "LANG", "TMPDIR"} <= set(environment)
    assert "0" not in box.run("id -u").split()


def test_it_gives_the_build_its_own_process_ipc_and_host_name(box):
    listing = box.run("ls /proc | grep -E '^[0-9]+$'").split()
    assert str(os.getpid()) not in listing
    assert len(listing) < 10, listing
    assert box.run("hostname") == "build"
    assert box.run("bash -c 'ulimit -n'") == str(box.policy.max_open_files)


def test_it_passes_the_projects_build_variables_and_nothing_else(box):
    output = box.run('echo "token=$API_TOKEN"', env={"API_TOKEN": "tok-123"})
    assert output == "token=tok-123"


class _Web(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(SECRET.encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def loopback_web():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Web)
    serve_in_background(server)
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _reachable(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(5)
        return probe.connect_ex((host, port)) == 0


def test_it_refuses_connections_to_the_workers_own_services(box, loopback_web):
    # The worker itself reaches its Redis, PostgreSQL and web port on loopback...
    ports = {"redis": 6379, "postgresql": 5432, "web": loopback_web}
    assert all(_reachable("127.0.0.1", port) for port in ports.values())
    # ...the build does not, neither on 127.0.0.1 nor through slirp's host address.
    for name, port in ports.items():
        for host in ("127.0.0.1", "10.0.2.2"):
            output = box.run(
                f"bash -c 'exec 3<>/dev/tcp/{host}/{port} && echo CONNECTED' 2>&1; "
                f"curl -s --max-time 5 http://{host}:{port}/ || true"
            )
            assert "CONNECTED" not in output, (name, host)
            assert SECRET not in output, (name, host)
    # It does have a network of its own (the way to package registries).
    assert "10.0.2.100" in box.run("ip -4 -o addr show tap0 || cat /proc/net/fib_trie")


def test_the_build_network_refuses_the_hosts_own_addresses_and_metadata(box):
    # Checked on the routing table, without sending anything: these destinations must be
    # refused inside the build's namespace before a packet could reach slirp4netns.
    routes = box.run("ip -4 route show table all")
    prohibited = {line.split()[1] for line in routes.splitlines() if line.startswith("prohibit")}
    expected = (
        {f"{address}" for address in host_addresses()}
        | set(BLOCKED_NETWORKS)
        | set(PRIVATE_NETWORKS)
    )
    assert expected <= {route.removesuffix("/32") for route in prohibited} | prohibited


def test_it_cuts_the_network_entirely_when_the_project_says_so(tmp_path, loopback_web):
    box = Box(tmp_path, SandboxPolicy(network=False))
    interfaces = box.run("tail -n +3 /proc/net/dev | cut -d: -f1").split()
    assert interfaces == ["lo"]
    output = box.run(f"bash -c 'exec 3<>/dev/tcp/10.0.2.2/{loopback_web} && echo CONNECTED' 2>&1")
    assert "CONNECTED" not in output


def _mount_points() -> set[str]:
    return {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()}


def _run_or_skip(*command: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        reason = f"cannot make the host mounts this test checks: `{' '.join(command)}`: "
        reason += result.stderr.strip()
        if os.environ.get("CI"):
            pytest.fail(f"CI runs as root and must be able to mount: {reason}")
        pytest.skip(reason)


@dataclass
class HostMounts:
    """Mounts of the host's that no build may touch: their mount points, and files on them."""

    points: set[str]
    files: dict[Path, str]


@pytest.fixture
def shared_host_mounts(tmp_path: Path) -> Iterator[HostMounts]:
    """A shared tmpfs with a bind mount below it (what every mount of a systemd host, whose
    "/" is shared, looks like) and a network namespace made by `ip netns add` (which makes
    /run/netns a shared mount); all removed afterwards."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            pytest.fail("CI runs as root: this test needs to mount")
        pytest.skip("making the host's mounts needs root (CI runs as root)")
    shared = tmp_path / "host-shared"
    below = shared / "below"
    source = tmp_path / "host-source"
    shared.mkdir()
    source.mkdir()
    (source / "data").write_text("bound below a shared mount\n")
    namespace = f"slipway-test-mounts-{uuid.uuid4().hex[:8]}"
    try:
        _run_or_skip("mount", "-t", "tmpfs", "-o", "size=1m", "slipway-test", str(shared))
        _run_or_skip("mount", "--make-shared", str(shared))
        (shared / "data").write_text("on a shared tmpfs\n")
        below.mkdir()
        _run_or_skip("mount", "--bind", str(source), str(below))
        _run_or_skip("ip", "netns", "add", namespace)
        mounts = HostMounts(
            points={str(shared), str(below), f"/run/netns/{namespace}"},
            files={
                shared / "data": "on a shared tmpfs\n",
                below / "data": "bound below a shared mount\n",
            },
        )
        assert mounts.points <= _mount_points()
        yield mounts
    finally:
        for command in (
            ("ip", "netns", "delete", namespace),
            ("umount", "--lazy", str(below)),
            ("umount", "--lazy", str(shared)),
        ):
            subprocess.run(command, capture_output=True, stdin=subprocess.DEVNULL)
        # A namespace whose mount had vanished leaves its file behind.
        with contextlib.suppress(FileNotFoundError):
            (Path("/run/netns") / namespace).unlink()


def test_a_build_with_the_network_leaves_the_hosts_mounts_as_they_were(box, shared_host_mounts):
    # slirp4netns's own sandbox, started as root in the worker's mount namespace, unmounted
    # its copy of the old root, and the kernel propagated that to every mount of the host
    # below a shared one (see _network_helper_command).
    output = box.run("echo built; ip -4 -o addr show tap0 || cat /proc/net/fib_trie")
    assert output.startswith("built")
    assert "10.0.2.100" in output  # the build did have slirp4netns's network
    assert shared_host_mounts.points - _mount_points() == set()
    for path, content in shared_host_mounts.files.items():
        assert path.read_text() == content


def test_it_refuses_to_build_when_the_sandbox_cannot_be_made_and_names_the_fix(
    tmp_path, monkeypatch
):
    # A worker without bubblewrap: builds are refused, never run bare.
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    _probe.cache_clear()
    try:
        with pytest.raises(SandboxUnavailable) as raised:
            check_available(SandboxPolicy())
    finally:
        _probe.cache_clear()
    message = str(raised.value)
    assert "apt-get install bubblewrap" in message
    assert "SLIPWAY_BUILD_SANDBOX=off" in message


@pytest.mark.skipif(os.geteuid() != 0, reason="the build account is used only by a root worker")
def test_a_root_worker_refuses_to_build_without_its_build_account():
    with pytest.raises(SandboxUnavailable, match="useradd --system"):
        check_available(SandboxPolicy(build_user="no-such-build-account"))


def test_with_the_sandbox_off_commands_still_get_a_clean_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIPWAY_TEST_WORKER_SECRET", SECRET)
    box = Box(tmp_path, SandboxPolicy(enabled=False))
    output = box.run("env")
    assert SECRET not in output
    assert f"HOME={box.home}" in output.splitlines()


def test_a_failing_command_in_the_sandbox_reports_its_exit_code(box):
    with pytest.raises(CommandFailed, match="exit code 3"):
        box.run("echo broken >&2; exit 3", halt=True)


def test_an_honest_build_keeps_its_cache_between_builds_and_never_ships_it(
    sshd_target, git_repo_factory, tmp_path
):
    repo = git_repo_factory()
    sha = repo.commit({"package.json": '{"name": "site", "version": "1.0.0"}\n'})
    npm_style = (
        'test "$(npm config get cache)" = "$HOME/.npm" && '
        'mkdir -p "$HOME/.npm/_cacache" && '
        'if [ -f "$HOME/.npm/_cacache/index" ]; then echo cache-hit; '
        'else echo cache-miss; head -c 200000 /dev/urandom > "$HOME/.npm/_cacache/index"; fi && '
        "mkdir -p dist && echo built > dist/app.js"
    )
    server = server_for(sshd_target)
    build = {"build_commands": (BuildCommandSpec(command=npm_style),)}
    reporter = RecordingReporter()
    first = pipeline.deploy(deploy_spec(repo, tmp_path, [server], sha, build=build), reporter)
    assert first.ok, first.servers
    assert "cache-miss" in reporter.text
    current = sshd_target.deploy_path / "current"
    assert (current / "dist" / "app.js").read_text() == "built\n"
    shipped = {p.relative_to(current).as_posix() for p in current.rglob("*")}
    assert not any(path.startswith((".npm", ".cache", "build/home")) for path in shipped)
    assert shipped == {"package.json", "dist", "dist/app.js"}

    reporter = RecordingReporter()
    second_server = after(first, server)
    second = pipeline.deploy(
        deploy_spec(repo, tmp_path, [second_server], sha, build=build, deployment_id=2), reporter
    )
    assert second.ok
    assert "cache-hit" in reporter.text


def test_a_symlinked_folder_in_the_subdirectory_never_moves_the_build_root(
    sshd_target, git_repo_factory, tmp_path
):
    keys = tmp_path / "worker-keys"
    (keys / "var").mkdir(parents=True)
    (keys / "var" / "id_ed25519").write_text(SECRET)
    repo = git_repo_factory()
    sha = repo.commit({"README": "monorepo\n"}, symlinks={"site": str(keys)})
    spec = deploy_spec(
        repo, tmp_path, [server_for(sshd_target)], sha, build={"subdirectory": "site/var"}
    )
    with pytest.raises(InvalidInput) as raised:
        pipeline.deploy(spec, RecordingReporter())
    assert raised.value.field == "subdirectory"
    assert not (sshd_target.deploy_path / "current").exists()


def test_the_workspace_moves_on_to_the_next_revision_after_a_sandboxed_build(
    sshd_target, git_repo_factory, tmp_path
):
    # The build account owns the checkout after a build; the worker's git must still update it.
    repo = git_repo_factory()
    a = repo.commit({"src/app.txt": "A\n", "keep.txt": "k\n"})
    build = {"build_commands": (BuildCommandSpec(command="mkdir -p dist && cp src/app.txt dist/"),)}
    server = server_for(sshd_target)
    first = pipeline.deploy(
        deploy_spec(repo, tmp_path, [server], a, build=build), RecordingReporter()
    )
    assert first.ok
    b = repo.commit({"src/app.txt": "B\n", "keep.txt": None})
    server = after(first, server)
    second = pipeline.deploy(
        deploy_spec(repo, tmp_path, [server], b, build=build, deployment_id=2), RecordingReporter()
    )
    assert second.ok, second.servers
    current = sshd_target.deploy_path / "current"
    assert (current / "dist" / "app.txt").read_text() == "B\n"
    assert not (current / "keep.txt").exists()


def test_the_build_cache_never_follows_a_symlinked_folder_out_of_the_checkout(tmp_path):
    secret_dir = tmp_path / "worker-files"
    (secret_dir / "modules").mkdir(parents=True)
    (secret_dir / "modules" / "key").write_text(SECRET)
    root = tmp_path / "checkout"
    root.mkdir()
    (root / "vendor").symlink_to(secret_dir)
    spec = BuildSpec(
        repository_url="unused",
        mirror_dir=tmp_path / "mirror.git",
        workspace_dir=tmp_path / "workspace",
        cache_dir=tmp_path / "cache",
        revision="main",
        cache_paths=("vendor/modules",),
    )
    with pytest.raises(InvalidInput, match="symlink"):
        save_cache(spec, root, lambda stream, text: None)
    assert not (tmp_path / "cache").exists()
    (tmp_path / "cache" / "vendor" / "modules").mkdir(parents=True)
    (tmp_path / "cache" / "vendor" / "modules" / "planted").write_text("x")
    with pytest.raises(InvalidInput, match="symlink"):
        restore_cache(spec, root, lambda stream, text: None)
    assert not (secret_dir / "modules" / "planted").exists()


def _processes_running(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_cancel_kills_everything_the_build_started(box):
    # An unusual sleep length names this test's processes (other runs may be going on).
    marker = f"{random.randint(100_000, 999_999)}.5"
    started = threading.Event()

    def check_cancelled() -> None:
        if _processes_running(marker):
            started.set()
        if started.is_set():
            raise Cancelled("Cancelled on request")

    with pytest.raises(Cancelled):
        run_local_command(
            BuildCommandSpec(f"(setsid sleep {marker} &) ; sleep {marker} & sleep {marker}"),
            cwd=box.checkout,
            env={},
            on_line=lambda stream, text: None,
            check_cancelled=check_cancelled,
            checkout=box.checkout,
            home=box.home,
            policy=box.policy,
            identity=box.identity,
        )
    deadline = time.monotonic() + 30
    while _processes_running(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_running(marker) == []


def test_a_build_command_that_times_out_is_killed_with_everything_it_started(box):
    marker = "318.5"
    with pytest.raises(CommandTimedOut):
        run_local_command(
            BuildCommandSpec(
                f"(sleep {marker}; touch late-background) & sleep {marker}; touch late",
                timeout_seconds=1,
            ),
            cwd=box.checkout,
            env={},
            on_line=lambda stream, text: None,
            checkout=box.checkout,
            home=box.home,
            policy=box.policy,
            identity=box.identity,
        )
    deadline = time.monotonic() + 30
    while _processes_running(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_running(marker) == []
    assert not (box.checkout / "late").exists()
    assert not (box.checkout / "late-background").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="cgroups are writable only by a root worker here")
def test_a_build_that_outgrows_its_memory_limit_is_stopped(tmp_path):
    box = Box(tmp_path, SandboxPolicy(network=False, memory_mb=64))
    output = box.run(
        'python3 -c \'x = bytearray(400 * 1024 * 1024); x[::4096] = b"1" * len(x[::4096]); '
        'print("allocated")\'; echo exit=$?'
    )
    assert "allocated" not in output
    assert "exit=137" in output  # SIGKILL from the kernel's OOM killer


def test_a_build_that_starts_too_many_processes_is_held_to_its_own_limit(tmp_path):
    policy = SandboxPolicy(network=False, max_processes=40)
    greedy = Box(tmp_path / "greedy", policy)
    other = Box(tmp_path / "other", policy)
    marker = f"{random.randint(100_000, 999_999)}.5"
    threading.Thread(
        target=greedy.run,
        args=(f"for i in $(seq 200); do sleep {marker} & done 2>&1 | tail -1; wait",),
        daemon=True,
    ).start()
    deadline = time.monotonic() + 60
    while len(_processes_running(marker)) < 30 and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        running = len(_processes_running(marker))
        assert 30 <= running <= policy.max_processes
        # Another build (another project's) still starts while the first is at its limit.
        assert other.run("echo still-building") == "still-building"
    finally:
        for pid in _processes_running(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)


def test_a_symlink_a_build_saved_in_the_cache_is_never_followed_later(tmp_path):
    # The attack: a build in a fresh directory leaves `x` as a symlink to the data directory,
    # the cache keeps it, then cache paths under `x` would read or write through it as root.
    data = tmp_path / "data"
    data.mkdir()
    (data / "encryption.key").write_text(SECRET)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "x").symlink_to(data)

    def spec(*paths: str) -> BuildSpec:
        return BuildSpec(
            repository_url="unused",
            mirror_dir=tmp_path / "mirror.git",
            workspace_dir=tmp_path / "workspace",
            cache_dir=tmp_path / "cache",
            revision="main",
            cache_paths=paths,
        )

    save_cache(spec("x"), scratch, lambda stream, text: None)
    assert (tmp_path / "cache" / "x").is_symlink()  # kept as a link, never followed
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with pytest.raises(InvalidInput, match="symlink"):
        restore_cache(spec("x/encryption.key"), fresh, lambda stream, text: None)
    assert not (fresh / "x").exists()
    (fresh / "x" / "pwned").mkdir(parents=True)
    with pytest.raises(InvalidInput, match="symlink"):
        save_cache(spec("x/pwned"), fresh, lambda stream, text: None)
    assert sorted(p.name for p in data.iterdir()) == ["encryption.key"]


def test_the_projects_variables_never_appear_on_a_command_line_of_the_host(box):
    marker = f"{random.randint(100_000, 999_999)}.5"
    thread = threading.Thread(
        target=box.run,
        args=(f"sleep {marker}",),
        kwargs={"env": {"API_TOKEN": SECRET}},
        daemon=True,
    )
    thread.start()
    deadline = time.monotonic() + 60
    try:
        # The command itself running (bwrap's own command line names the marker earlier, while
        # the sandbox is still being set up).
        while not _processes_running(f"sleep\0{marker}") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _processes_running(f"sleep\0{marker}")
        assert _processes_running(SECRET) == []
    finally:
        while _processes_running(marker) and time.monotonic() < deadline + 30:
            for pid in _processes_running(marker):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
            time.sleep(0.1)
        thread.join(timeout=60)
        assert not thread.is_alive()


@pytest.mark.skipif(os.geteuid() != 0, reason="ownership is handed over only by a root worker")
def test_the_build_home_is_never_walked_so_a_swapped_link_cannot_redirect_ownership(
    sshd_target, git_repo_factory, tmp_path
):
    # Builds of one project share its home; a walk there while another build swaps a folder
    # for a symlink would hand any host file to the build account.
    victim = tmp_path / "victim"
    victim.write_text(SECRET)
    victim.chmod(0o600)
    home = tmp_path / "home"
    (home / "d").mkdir(parents=True)
    (home / "d" / "link").symlink_to(victim)
    (home / "d" / "root-file").write_text("x")
    repo = git_repo_factory()
    sha = repo.commit({"a.txt": "a\n"})
    build = {"build_commands": (BuildCommandSpec(command="true"),), "home_dir": home}
    result = pipeline.deploy(
        deploy_spec(repo, tmp_path, [server_for(sshd_target)], sha, build=build),
        RecordingReporter(),
    )
    assert result.ok
    assert victim.stat().st_uid == 0
    assert (home / "d" / "root-file").stat().st_uid == 0
    assert home.stat().st_uid != 0  # the home itself is the build account's


def test_a_redeploy_of_the_same_commit_sends_nothing_though_the_build_compiles_bytecode(
    sshd_target, git_repo_factory, tmp_path
):
    # Bytecode records its source's mtime: the workspace must not rewrite unchanged sources
    # (handing them to the build account changes their ctime, which git's index notices).
    repo = git_repo_factory()
    sha = repo.commit({"app/manage.py": "print('hi')\n", "app/models.py": "X = 1\n"})
    build = {"build_commands": (BuildCommandSpec(command="python3 -m compileall -q app"),)}
    server = server_for(sshd_target)
    result = pipeline.deploy(
        deploy_spec(repo, tmp_path, [server], sha, build=build), RecordingReporter()
    )
    assert result.ok
    for number in (2, 3):
        # Past git's "racily clean" second, where it would compare contents anyway.
        time.sleep(1.1)
        server = after(result, server)
        result = pipeline.deploy(
            deploy_spec(repo, tmp_path, [server], sha, build=build, deployment_id=number),
            RecordingReporter(),
        )
        assert result.ok
        changes = result.servers[0].changes
        assert changes is not None and changes.is_empty, changes
