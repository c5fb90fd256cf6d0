"""`make bench`: Slipway against rsync and tar over ssh, measured in the same run.

Three sshd targets on loopback with deploy directories on tmpfs. Each figure is the median of
REPEAT runs:
  (a) first deploy of a ~5,000-file / ~60 MB tree to 3 servers,
  (b) an incremental deploy of 10 modified, 5 added and 5 deleted files to 3 servers,
  (c) a rollback on 3 servers.
Slipway's figure is the deployment's whole duration as it records it (queued to succeeded),
through the embedded worker, checkout and build included. The baselines are given an already
exported tree and run for the 3 servers at once, as Slipway does.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_USER = "slipway-bench"
REPEAT = 3


def _tmpfs_base() -> Path:
    """A directory on tmpfs: a fresh mount when we may mount, else /dev/shm."""
    base = Path(tempfile.mkdtemp(prefix="slipway-bench-"))
    if os.geteuid() == 0:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=10g", "tmpfs", str(base)], capture_output=True
        )
        if mounted.returncode == 0:
            return base
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        base.rmdir()
        return Path(tempfile.mkdtemp(prefix="slipway-bench-", dir=shm))
    print("warning: no tmpfs available; deploy directories are on disk", file=sys.stderr)
    return base


def _filesystem_of(path: Path) -> str:
    result = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True)
    return result.stdout.strip()


def _bench_user(home: Path) -> str:
    """Log in as a plain deploy user when we can create one (root's rc files here are heavy)."""
    if os.geteuid() != 0:
        import getpass

        return getpass.getuser()
    if subprocess.run(["id", BENCH_USER], capture_output=True).returncode != 0:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--home-dir",
                str(home),
                "--shell",
                "/bin/bash",
                BENCH_USER,
            ],
            check=True,
        )
    # With UsePAM off, sshd refuses even key logins to a locked account ("!" password): "*"
    # means "no password" without the lock.
    subprocess.run(["usermod", "--home", str(home), "--password", "*", BENCH_USER], check=True)
    home.mkdir(parents=True, exist_ok=True)
    shutil.chown(home, BENCH_USER, BENCH_USER)
    return BENCH_USER


def make_repository(path: Path, seed: int = 7) -> None:
    """~5,000 files, ~60 MB: mostly small text files and a few binaries of 1-5 MB."""
    rng = random.Random(seed)
    words = [
        "deploy",
        "release",
        "server",
        "atomic",
        "symlink",
        "rollback",
        "commit",
        "branch",
        "worker",
        "manifest",
        "change",
        "upload",
        "health",
        "check",
        "build",
        "cache",
        "shared",
        "config",
    ]
    path.mkdir(parents=True)
    for n in range(4990):
        folder = path / f"src/module{n % 50:02d}/part{n % 7}"
        folder.mkdir(parents=True, exist_ok=True)
        lines = [
            " ".join(rng.choice(words) for _ in range(12)) for _ in range(rng.randint(20, 160))
        ]
        (folder / f"file{n:04d}.txt").write_text("\n".join(lines) + "\n")
    assets = path / "assets"
    assets.mkdir()
    for n in range(10):
        (assets / f"blob{n}.bin").write_bytes(rng.randbytes(rng.randint(1, 5) * 1024 * 1024))
    _git(path, "init", "-q", "-b", "main")
    _git(path, "add", "-A")
    _git(path, "commit", "-q", "-m", "Initial tree")


def _git(path: Path, *arguments: str) -> str:
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


def change_repository(path: Path, round_number: int) -> None:
    """10 modified, 5 added, 5 deleted files."""
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
    _git(path, "add", "-A")
    _git(path, "commit", "-q", "-m", f"Round {round_number}")


def export(repository: Path, destination: Path) -> None:
    shutil.rmtree(destination, ignore_errors=True)
    destination.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", "HEAD"], cwd=repository, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(destination)], input=archive, check=True)


@dataclass
class Baseline:
    """The baselines' view of one target: plain OpenSSH client, rsync and tar."""

    target: object
    user: str
    key_path: Path
    known_hosts: Path

    def ssh(self) -> list[str]:
        t = self.target
        return [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(self.key_path),
            "-p",
            str(t.port),  # type: ignore[attr-defined]
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            f"{self.user}@127.0.0.1",
        ]

    def root(self, tool: str) -> str:
        return f"{self.target.root}/{tool}"  # type: ignore[attr-defined]

    def switch(self, tool: str, name: str) -> None:
        root = self.root(tool)
        subprocess.run(
            [
                *self.ssh(),
                f"cd {root} && ln -sfn releases/{name} .current.tmp && mv -T .current.tmp current",
            ],
            check=True,
            capture_output=True,
        )

    def rsync(self, tree: Path, name: str, previous: str | None) -> None:
        root = self.root("rsync")
        ssh = " ".join(self.ssh()[:-1])
        command = [
            "rsync",
            "-a",
            "--delete",
            "-e",
            ssh,
            f"--rsync-path=mkdir -p {root}/releases && rsync",
        ]
        if previous:
            command.append(f"--link-dest={root}/releases/{previous}")
        command += [f"{tree}/", f"{self.user}@127.0.0.1:{root}/releases/{name}/"]
        subprocess.run(command, check=True, capture_output=True)
        self.switch("rsync", name)

    def tar(self, tree: Path, name: str) -> None:
        root = self.root("tar")
        remote = (
            f"mkdir -p {root}/releases/{name} && tar -x -C {root}/releases/{name} && "
            f"cd {root} && ln -sfn releases/{name} .current.tmp && mv -T .current.tmp current"
        )
        packer = subprocess.Popen(["tar", "-C", str(tree), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run([*self.ssh(), remote], stdin=packer.stdout, check=True, capture_output=True)
        assert packer.stdout is not None
        packer.stdout.close()
        if packer.wait() != 0:
            raise RuntimeError("tar -c failed")


def parallel(functions: list[Callable[[], None]]) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(functions)) as pool:
        for future in [pool.submit(function) for function in functions]:
            future.result()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=REPEAT)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    options = parser.parse_args()

    base = _tmpfs_base()
    # The deploy user must reach the authorized_keys files and its deploy directories.
    base.chmod(0o755)
    os.environ["SLIPWAY_DATA_DIR"] = str(base / "slipway-data")
    os.environ["SLIPWAY_ALLOW_LOCAL_REPOSITORIES"] = "true"
    for variable in ("DATABASE_URL", "REDIS_URL"):
        os.environ.pop(variable, None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "deployer.settings")
    sys.path.insert(0, str(ROOT))

    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)

    from django.contrib.auth.models import User

    from builds import services
    from builds.models import FINAL, Deployment, Kind
    from deployer.embedded import start_worker
    from projects.services import project_create
    from servers.models import Server
    from tests.support.sshd import (
        PRIVILEGE_SEPARATION_DIR,
        SSHTarget,
        _free_port,
        generate_key_pair,
    )

    user = _bench_user(base / "home")
    repository = base / "repository"
    make_repository(repository)
    tree = base / "export"
    export(repository, tree)
    files = sum(1 for p in tree.rglob("*") if p.is_file())
    size = sum(p.stat().st_size for p in tree.rglob("*") if p.is_file())

    owner = User.objects.create_user("bench")
    project = project_create(
        owner=owner, name="Bench", repository_url=repository.as_uri(), branch="main"
    )
    keys = base / "keys"
    host_key = generate_key_pair(keys, "host")
    client = generate_key_pair(keys, "client")
    if os.geteuid() == 0:
        PRIVILEGE_SEPARATION_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)

    worker = start_worker()
    time.sleep(0.5)

    def run(**arguments: object) -> float:
        deployment = services.deployment_create(project=project, **arguments)  # type: ignore[arg-type]
        while True:
            deployment.refresh_from_db()
            if deployment.status in FINAL:
                break
            time.sleep(0.02)
        if deployment.status != "succeeded":
            raise SystemExit(f"deployment #{deployment.pk} {deployment.status}: {deployment.error}")
        assert deployment.finished_at is not None and deployment.started_at is not None
        steps = ", ".join(
            f"{step.name}{'@' + str(step.server_id) if step.server_id else ''} "
            f"{(step.finished_at - step.started_at).total_seconds():.2f}"
            for step in deployment.steps.all()
            if step.finished_at
        )
        queued = (deployment.started_at - deployment.created_at).total_seconds()
        print(
            f"  #{deployment.pk} {deployment.kind}: queued {queued:.2f}; {steps}", file=sys.stderr
        )
        return (deployment.finished_at - deployment.created_at).total_seconds()

    # Warm the mirror once: fetching from the Git host is the network's cost, and the
    # baselines are handed an exported tree.
    from builds.engine.pipeline import mirror_lock, open_mirror
    from builds.runner import build_spec

    probe = Deployment(project=project)
    spec = build_spec(probe, base / "warm-workspace", "main")
    with mirror_lock(spec):
        open_mirror(spec).fetch()

    results: dict[str, dict[str, list[float]]] = {
        s: {"slipway": [], "rsync": [], "tar": []} for s in "abc"
    }
    for round_number in range(options.repeat):
        targets = []
        for n in range(3):
            root = base / f"round{round_number}" / f"target{n}"
            (root / "deploy").mkdir(parents=True)
            root.parent.chmod(0o755)
            root.chmod(0o755)
            for tool in ("rsync", "tar"):
                (root / tool).mkdir()
            target = SSHTarget(
                port=_free_port(),
                root=root,
                deploy_path=root / "deploy",
                client_private_key=client.private_key,
                client_public_key=client.public_key,
                host_key_fingerprint=host_key.fingerprint,
                host_public_key_path=host_key.public_path,
                host_private_key_path=host_key.private_path,
                username=user,
            )
            target.authorize(client.public_key)
            target.authorize(project.public_key)
            if os.geteuid() == 0:
                subprocess.run(
                    [
                        "chown",
                        "-R",
                        f"{user}:{user}",
                        str(root / "deploy"),
                        str(root / "rsync"),
                        str(root / "tar"),
                    ],
                    check=True,
                )
            target.start_or_raise()
            targets.append(target)
        known_hosts = base / f"known_hosts{round_number}"
        known_hosts.write_text(
            "".join(f"[127.0.0.1]:{t.port} {host_key.public_key}\n" for t in targets)
        )
        baselines = [Baseline(t, user, client.private_path, known_hosts) for t in targets]
        servers = [
            Server.objects.create(
                project=project,
                name=f"r{round_number}-web{n}",
                hostname="127.0.0.1",
                port=t.port,
                username=user,
                deploy_path=str(t.deploy_path),
                host_key_fingerprint=host_key.fingerprint,
            )
            for n, t in enumerate(targets)
        ]
        export(repository, tree)
        first = f"r{round_number}-a"
        results["a"]["slipway"].append(run(servers=servers))
        results["a"]["rsync"].append(
            parallel([partial(b.rsync, tree, first, None) for b in baselines])
        )
        results["a"]["tar"].append(parallel([partial(b.tar, tree, first) for b in baselines]))

        change_repository(repository, round_number)
        export(repository, tree)
        second = f"r{round_number}-b"
        results["b"]["slipway"].append(run(servers=servers))
        results["b"]["rsync"].append(
            parallel([partial(b.rsync, tree, second, first) for b in baselines])
        )
        results["b"]["tar"].append(parallel([partial(b.tar, tree, second) for b in baselines]))

        results["c"]["slipway"].append(run(servers=servers, kind=Kind.ROLLBACK))
        results["c"]["rsync"].append(
            parallel([partial(b.switch, "rsync", first) for b in baselines])
        )
        results["c"]["tar"].append(parallel([partial(b.switch, "tar", first) for b in baselines]))
        for target in targets:
            target.stop()
        # Keep tmpfs small: this round's releases are no longer needed.
        shutil.rmtree(base / f"round{round_number}", ignore_errors=True)

    worker.stop()
    report = render(
        results,
        files=files,
        size=size,
        filesystem=_filesystem_of(base),
        repeat=options.repeat,
        user=user,
    )
    print(report)
    options.output.write_text(report)
    print(f"written to {options.output}")
    if os.geteuid() == 0:
        subprocess.run(["umount", "-l", str(base)], capture_output=True)


SCENARIOS = {
    "a": "(a) first deploy, 3 servers",
    "b": "(b) 10 modified + 5 added + 5 deleted, 3 servers",
    "c": "(c) rollback, 3 servers",
}


def render(
    results: dict[str, dict[str, list[float]]],
    *,
    files: int,
    size: int,
    filesystem: str,
    repeat: int,
    user: str,
) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Produced by `make bench` (bench/run.py); every figure is the median of "
        f"{repeat} runs, all measured in the same run on the same machine.",
        "",
        f"- Tree: {files} files, {size / 1e6:.1f} MB (small text files and 10 binaries of 1-5 MB).",
        f"- Targets: 3 OpenSSH sshd on 127.0.0.1, deploy directories on {filesystem}; login user `{user}`.",
        f"- Machine: {os.cpu_count()} cores, Python {platform.python_version()}, {platform.platform()}.",
        "- Slipway: the deployment's recorded duration, queued to succeeded, through the embedded worker,",
        "  fetch (warm mirror), checkout, manifest, transfer, switch and clean-up included.",
        "- rsync: `rsync -a --delete --link-dest=<previous release>` into a new release directory, then a",
        "  symlink switch; tar: `tar -c | ssh tar -x` into a new release directory, then a symlink switch.",
        "  Both get an already exported tree and run for the 3 servers at once.",
        "",
        "| scenario | Slipway | rsync | tar over ssh | Slipway / rsync | Slipway / tar |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, label in SCENARIOS.items():
        slipway = statistics.median(results[key]["slipway"])
        rsync = statistics.median(results[key]["rsync"])
        tar = statistics.median(results[key]["tar"])
        lines.append(
            f"| {label} | {slipway:.2f} s | {rsync:.2f} s | {tar:.2f} s | {slipway / rsync:.2f}x | {slipway / tar:.2f}x |"
        )
    lines += ["", "Every run (seconds):", ""]
    for key, label in SCENARIOS.items():
        runs = ", ".join(
            f"{tool} {' / '.join(f'{v:.2f}' for v in values)}"
            for tool, values in results[key].items()
        )
        lines.append(f"- {label}: {runs}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
