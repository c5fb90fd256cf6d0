"""What the bench deploys and where: Git trees, sshd targets on loopback, and the baselines.

Nothing here imports Django: the growth curves' child processes and the comparison share it.
"""

from __future__ import annotations

import getpass
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tests.support.sshd import (
    PRIVILEGE_SEPARATION_DIR,
    KeyPair,
    SSHDDidNotStart,
    SSHTarget,
    _free_port,
    generate_key_pair,
)

BENCH_USER = "slipway-bench"
#: The baselines' own directories beside Slipway's deploy directory on each target.
BASELINE_TOOLS = ("rsync-tree", "rsync-export", "tar", "linked")
WORDS = [
    *("deploy", "release", "server", "atomic", "symlink", "rollback", "commit", "branch"),
    *("worker", "manifest", "change", "upload", "health", "check", "build", "cache", "config"),
]


def tmpfs_base() -> Path:
    """A directory on tmpfs: a fresh mount when we may mount, else /dev/shm, else /tmp."""
    base = Path(tempfile.mkdtemp(prefix="slipway-bench-"))
    if os.geteuid() == 0:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=10g", "tmpfs", str(base)], capture_output=True
        )
        if mounted.returncode == 0:
            base.chmod(0o755)
            return base
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        base.rmdir()
        base = Path(tempfile.mkdtemp(prefix="slipway-bench-", dir=shm))
    else:
        print("warning: no tmpfs available; deploy directories are on disk", file=sys.stderr)
    # The deploy user must reach the authorized_keys files and its deploy directories.
    base.chmod(0o755)
    return base


def release_base(base: Path) -> None:
    """Unmount what tmpfs_base mounted (lazily: a straggling sshd child may hold it)."""
    if os.geteuid() == 0:
        subprocess.run(["umount", "-l", str(base)], capture_output=True)
    shutil.rmtree(base, ignore_errors=True)


def filesystem_of(path: Path) -> str:
    result = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True)
    return result.stdout.strip()


def bench_user(home: Path) -> str:
    """Log in as a plain deploy user when we can create one (root's rc files here are heavy)."""
    if os.geteuid() != 0:
        return getpass.getuser()
    if subprocess.run(["id", BENCH_USER], capture_output=True).returncode != 0:
        subprocess.run(
            [
                *("useradd", "--system", "--no-create-home", "--home-dir", str(home)),
                *("--shell", "/bin/bash", BENCH_USER),
            ],
            check=True,
        )
    # With UsePAM off, sshd refuses even key logins to a locked account ("!" password): "*"
    # means "no password" without the lock.
    subprocess.run(["usermod", "--home", str(home), "--password", "*", BENCH_USER], check=True)
    home.mkdir(parents=True, exist_ok=True)
    shutil.chown(home, BENCH_USER, BENCH_USER)
    return BENCH_USER


# --------------------------------------------------------------------------- trees


def git(path: Path, *arguments: str) -> str:
    """Run git in ``path`` with a fixed identity and no user or system configuration."""
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Bench",
        "GIT_AUTHOR_EMAIL": "bench@example.com",
        "GIT_COMMITTER_NAME": "Bench",
        "GIT_COMMITTER_EMAIL": "bench@example.com",
        "GIT_CONFIG_NOSYSTEM": "1",
        "HOME": str(path),
    }
    return subprocess.run(
        ["git", *arguments], cwd=path, env=env, check=True, capture_output=True, text=True
    ).stdout


def make_repository(path: Path, *, text_files: int, binaries: int = 0, seed: int = 7) -> None:
    """A one-commit repository on ``main``: ``text_files`` small text files (0.3-2 KB, 50
    modules of 7 folders) and ``binaries`` random files of 1-5 MB under assets/."""
    rng = random.Random(seed)
    path.mkdir(parents=True)
    for n in range(text_files):
        folder = path / f"src/module{n % 50:02d}/part{n % 7}"
        folder.mkdir(parents=True, exist_ok=True)
        lines = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(rng.randint(3, 25))]
        (folder / f"file{n:06d}.txt").write_text("\n".join(lines) + "\n")
    if binaries:
        assets = path / "assets"
        assets.mkdir()
        for n in range(binaries):
            (assets / f"blob{n}.bin").write_bytes(rng.randbytes(rng.randint(1, 5) * 1024 * 1024))
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "Initial tree")


def change_repository(path: Path, round_number: int) -> str:
    """Commit 10 modified, 5 added and 5 deleted text files; returns the new commit's SHA."""
    texts = sorted(path.glob("src/*/*/*.txt"))
    rng = random.Random(round_number)
    chosen = rng.sample(texts, 15)
    for file in chosen[:10]:
        with file.open("a") as handle:
            handle.write(f"changed in round {round_number}\n")
    for file in chosen[10:]:
        file.unlink()
    for n in range(5):
        (path / "src" / f"added-{round_number}-{n}.txt").write_text(
            f"added {n} in round {round_number}\n" * 50
        )
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", f"Round {round_number}")
    return head(path)


def head(repository: Path) -> str:
    return git(repository, "rev-parse", "HEAD").strip()


def tree_size(repository: Path, revision: str = "HEAD") -> tuple[int, int]:
    """(files, bytes) of a revision's tree."""
    files = size = 0
    for line in git(repository, "ls-tree", "-r", "-l", revision).splitlines():
        files += 1
        size += int(line.split()[3])
    return files, size


def export(repository: Path, destination: Path) -> None:
    """A fresh `git archive` of HEAD: every file's mtime is the commit's time."""
    shutil.rmtree(destination, ignore_errors=True)
    destination.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", "HEAD"], cwd=repository, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(destination)], input=archive, check=True)


class WorkTree:
    """A user's persistent checkout, updated in place: unchanged files keep their mtimes."""

    def __init__(self, repository: Path, path: Path) -> None:
        self.repository = repository
        self.path = path
        subprocess.run(
            ["git", "clone", "-q", "--no-checkout", str(repository), str(path)],
            check=True,
            capture_output=True,
        )

    def checkout(self, revision: str) -> None:
        git(self.path, "fetch", "-q", "origin")
        git(self.path, "checkout", "-q", "--detach", revision)


# --------------------------------------------------------------------------- targets


@dataclass
class Keys:
    host: KeyPair
    client: KeyPair


def make_keys(folder: Path) -> Keys:
    return Keys(host=generate_key_pair(folder, "host"), client=generate_key_pair(folder, "client"))


def start_targets(folder: Path, count: int, *, user: str, keys: Keys) -> list[SSHTarget]:
    """``count`` sshd processes on 127.0.0.1, each with an empty deploy directory (and one per
    baseline tool), accepting the client key; the caller stops them."""
    if os.geteuid() == 0:
        PRIVILEGE_SEPARATION_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    targets = []
    try:
        for n in range(count):
            root = folder / f"target{n}"
            root.mkdir(mode=0o755)
            owned = [root / "deploy", *(root / tool for tool in BASELINE_TOOLS)]
            for directory in owned:
                directory.mkdir()
                if os.geteuid() == 0:
                    shutil.chown(directory, user, user)
            target = SSHTarget(
                port=_free_port(),
                root=root,
                deploy_path=root / "deploy",
                client_private_key=keys.client.private_key,
                client_public_key=keys.client.public_key,
                host_key_fingerprint=keys.host.fingerprint,
                host_public_key_path=keys.host.public_path,
                host_private_key_path=keys.host.private_path,
                username=user,
            )
            target.authorize(keys.client.public_key)
            targets.append(target)
            _start(target)
    except BaseException:
        stop_targets(targets)
        raise
    return targets


def _start(target: SSHTarget, attempts: int = 3) -> None:
    """Start sshd; another process may take the free port before sshd binds it: pick another."""
    while True:
        try:
            target.start_or_raise()
            return
        except SSHDDidNotStart as error:
            attempts -= 1
            if not error.port_taken or attempts == 0:
                raise
            target.port = _free_port()


def stop_targets(targets: list[SSHTarget]) -> None:
    for target in targets:
        target.stop()


# --------------------------------------------------------------------------- baselines


@dataclass
class Baseline:
    """What a user without Slipway runs against one target: OpenSSH's client, rsync, tar."""

    target: SSHTarget
    key_path: Path
    known_hosts: Path

    def ssh(self) -> list[str]:
        return [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(self.key_path),
            "-p",
            str(self.target.port),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            f"{self.target.username}@127.0.0.1",
        ]

    def root(self, tool: str) -> str:
        return f"{self.target.root}/{tool}"

    def switch(self, tool: str, name: str) -> None:
        """The bare symlink switch: a new link renamed over ``current``, one ssh round trip."""
        root = self.root(tool)
        subprocess.run(
            [
                *self.ssh(),
                f"cd {root} && ln -sfn releases/{name} .current.tmp && mv -T .current.tmp current",
            ],
            check=True,
            capture_output=True,
        )

    def rsync(self, tool: str, tree: Path, name: str, previous: str | None) -> None:
        """`rsync -a --delete --link-dest=<previous>` into a new release, then the switch."""
        root = self.root(tool)
        ssh = " ".join(self.ssh()[:-1])
        # A work tree's Git metadata is no part of a release.
        command = ["rsync", "-a", "--delete", "--exclude=/.git", "-e", ssh]
        command.append(f"--rsync-path=mkdir -p {root}/releases && rsync")
        if previous:
            command.append(f"--link-dest={root}/releases/{previous}")
        command += [f"{tree}/", f"{self.target.username}@127.0.0.1:{root}/releases/{name}/"]
        subprocess.run(command, check=True, capture_output=True)
        self.switch(tool, name)

    def tar(self, tree: Path, name: str) -> None:
        """`tar -c | ssh tar -x` into a new release and the switch, in one ssh session."""
        root = self.root("tar")
        remote = (
            f"mkdir -p {root}/releases/{name} && tar -x -C {root}/releases/{name} && "
            f"cd {root} && ln -sfn releases/{name} .current.tmp && mv -T .current.tmp current"
        )
        # Git's metadata is no part of a release.
        self._send_tar(tree, ["--exclude=./.git", "."], remote)

    def linked(
        self, tree: Path, name: str, previous: str, changed: list[str], deleted: list[str]
    ) -> None:
        """The floor of an incremental deploy into a new release directory: one ssh that
        makes the release of hard links to ``previous`` (``cp -al``, what
        ``rsync --link-dest`` builds), removes ``deleted`` and ``changed``, unpacks
        ``changed`` from a ``tar -c`` of the work tree, and switches. The change comes from
        ``git diff`` for free: nothing on either side is compared."""
        root = self.root("linked")
        release = f"{root}/releases/{name}"
        removed = " ".join(shlex.quote(path) for path in [*changed, *deleted])
        remote = (
            f"mkdir -p {root}/releases && rm -rf {release} && "
            f"cp -al {root}/releases/{previous} {release} && "
            f"cd {release} && rm -f -- {removed} && tar -x && "
            f"cd {root} && ln -sfn releases/{name} .current.tmp && mv -T .current.tmp current"
        )
        self._send_tar(tree, ["--", *changed], remote)

    def _send_tar(self, tree: Path, members: list[str], remote: str) -> None:
        """``tar -c <members>`` of ``tree`` piped into ``ssh <remote>``."""
        packer = subprocess.Popen(["tar", "-C", str(tree), "-c", *members], stdout=subprocess.PIPE)
        assert packer.stdout is not None
        try:
            subprocess.run(
                [*self.ssh(), remote], stdin=packer.stdout, check=True, capture_output=True
            )
        finally:
            packer.stdout.close()
        if packer.wait() != 0:
            raise RuntimeError("tar -c failed")

    def seed_linked(self, tree: Path, name: str) -> None:
        """The release the ``linked`` floor starts from: the whole tree, by tar."""
        root = self.root("linked")
        remote = f"mkdir -p {root}/releases/{name} && tar -x -C {root}/releases/{name}"
        self._send_tar(tree, ["--exclude=./.git", "."], remote)


def last_change(repository: Path) -> tuple[list[str], list[str]]:
    """(added or modified paths, deleted paths) of the repository's last commit."""
    changed: list[str] = []
    deleted: list[str] = []
    for line in git(
        repository, "diff", "--name-status", "--no-renames", "HEAD~1", "HEAD"
    ).splitlines():
        status, _, path = line.partition("\t")
        (deleted if status == "D" else changed).append(path)
    return changed, deleted


def baselines_for(targets: list[SSHTarget], keys: Keys, known_hosts: Path) -> list[Baseline]:
    """A Baseline per target, with a known_hosts file pinning the host key."""
    known_hosts.write_text(
        "".join(f"[127.0.0.1]:{t.port} {keys.host.public_key}\n" for t in targets)
    )
    return [Baseline(t, keys.client.private_path, known_hosts) for t in targets]


def parallel(functions: list[Callable[[], None]]) -> float:
    """Run the functions at once (one thread each); the wall-clock seconds until all end."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(functions)) as pool:
        for future in [pool.submit(function) for function in functions]:
            future.result()
    return time.perf_counter() - started
