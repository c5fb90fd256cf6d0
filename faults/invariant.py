"""The invariant `make faults` checks after every fault (docs/reliability.md).

On every server, once no deployment is active: ``current`` is the only live link, a symbolic
link to ``releases/<name>``, a complete release (no ``.slipway-unfinished``); the database's
live release of that server (``servers.Release``, ``live=True``) has that name, and the files
of the release are byte for byte the files of its revision (the commit's tree plus what the
build command made from it); no lock (``.slipway/lock``) is left; no release ran twice.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from builds.engine.release import LOCK_DIR, UNFINISHED_MARKER
from tests.support.gitrepos import hermetic_git_environment

#: The build command the campaign's project runs, and that the check runs again to know
#: what the release must hold besides the commit's tree.
BUILD_SCRIPT = "build.sh"


@dataclass
class Findings:
    """What one check found, sorted into the campaign's columns."""

    lost: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    divergent: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def extend(self, other: Findings) -> None:
        self.lost += other.lost
        self.stuck += other.stuck
        self.divergent += other.divergent
        self.notes += other.notes

    @property
    def clean(self) -> bool:
        return not (self.lost or self.stuck or self.divergent)


class ExpectedTrees:
    """The files a release of each revision must hold, made once per revision."""

    def __init__(self, repository: Path, scratch: Path) -> None:
        self.repository = repository
        self.scratch = scratch
        self._trees: dict[str, dict[str, bytes]] = {}

    def files(self, revision: str) -> dict[str, bytes]:
        """{relative path: bytes} of the revision's tree after the build command ran."""
        if revision not in self._trees:
            self._trees[revision] = self._make(revision)
        return self._trees[revision]

    def _make(self, revision: str) -> dict[str, bytes]:
        directory = Path(tempfile.mkdtemp(prefix=f"expected-{revision[:7]}-", dir=self.scratch))
        try:
            archive = subprocess.run(
                ["git", "archive", "--format=tar", revision],
                cwd=self.repository,
                env=hermetic_git_environment(),
                check=True,
                capture_output=True,
            ).stdout
            archive_path = directory.with_suffix(".tar")
            archive_path.write_bytes(archive)
            with tarfile.open(archive_path) as tar:
                tar.extractall(directory, filter="data")
            archive_path.unlink()
            subprocess.run(
                ["sh", BUILD_SCRIPT], cwd=directory, check=True, capture_output=True, timeout=60
            )
            return _read_tree(directory)
        finally:
            shutil.rmtree(directory, ignore_errors=True)


def _read_tree(directory: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for path in directory.rglob("*"):
        if path.is_file() and not path.is_symlink():
            files[path.relative_to(directory).as_posix()] = path.read_bytes()
    return files


@dataclass(frozen=True)
class LiveRelease:
    """What the database says is live on a server."""

    name: str
    revision: str


def check_server(
    *,
    server_name: str,
    deploy_path: Path,
    live: LiveRelease | None,
    expected: ExpectedTrees,
    lock_owner_finished: bool | None,
) -> Findings:
    """Check one server's deploy path against the database's live release.

    ``lock_owner_finished``: whether the deployment named in a lock left on the server has
    finished (None when the lock names none, or there is no lock).
    """
    found = Findings()
    current = deploy_path / "current"
    if not current.is_symlink():
        if live is not None:
            state = "a real directory" if current.exists() else "missing"
            found.divergent.append(f"{server_name}: current is {state}")
    else:
        link = os.readlink(current)
        name = link.removeprefix("releases/")
        release = deploy_path / "releases" / name
        if not link.startswith("releases/") or "/" in name:
            found.divergent.append(f"{server_name}: current points at {link!r}")
        elif not release.is_dir():
            found.divergent.append(f"{server_name}: current dangles ({link})")
        elif (release / UNFINISHED_MARKER).exists():
            found.divergent.append(f"{server_name}: current is the unfinished release {name}")
        elif live is None:
            found.divergent.append(
                f"{server_name}: current is {name} but the database has no live release"
            )
        elif live.name != name:
            found.divergent.append(
                f"{server_name}: current is {name}, the database's live release is {live.name}"
            )
        else:
            found.divergent += _compare(server_name, name, release, expected.files(live.revision))
    for stray in sorted(deploy_path.glob(".current*")):
        found.notes.append(f"{server_name}: {stray.name} left beside current")
    lock = deploy_path / LOCK_DIR
    if lock.exists():
        info = _read(lock / "info")
        owner = next((line for line in info.splitlines() if line.startswith("owner=")), "")
        if not owner:
            found.stuck.append(f"{server_name}: lock left with no owner (info {info!r})")
        elif lock_owner_finished:
            found.notes.append(
                f"{server_name}: lock left by the finished {owner.removeprefix('owner=')}"
                " (the next deployment takes it over)"
            )
        else:
            found.stuck.append(f"{server_name}: lock left, held by {owner.removeprefix('owner=')}")
    found.lost += _twice(server_name, deploy_path)
    return found


def lock_owner(deploy_path: Path) -> str:
    """The ``owner=`` of a lock left in ``deploy_path`` ("" when none or unreadable)."""
    info = _read(deploy_path / LOCK_DIR / "info")
    for line in info.splitlines():
        if line.startswith("owner="):
            return line.removeprefix("owner=")
    return ""


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _compare(server: str, name: str, release: Path, expected: dict[str, bytes]) -> list[str]:
    actual = _read_tree(release)
    problems = []
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    changed = sorted(p for p in set(expected) & set(actual) if expected[p] != actual[p])
    if missing:
        problems.append(f"{server}: release {name} lacks {', '.join(missing[:5])}")
    if extra:
        problems.append(f"{server}: release {name} has extra {', '.join(extra[:5])}")
    if changed:
        problems.append(f"{server}: release {name} differs in {', '.join(changed[:5])}")
    return problems


def _twice(server: str, deploy_path: Path) -> list[str]:
    """Two release directories of one commit: each deployment deploys a commit of its own."""
    by_revision: dict[str, list[str]] = {}
    releases = deploy_path / "releases"
    if releases.is_dir():
        for entry in releases.iterdir():
            by_revision.setdefault(entry.name.rsplit("-", 1)[-1], []).append(entry.name)
    return [
        f"{server}: {len(names)} releases of one commit ({', '.join(sorted(names))})"
        for names in by_revision.values()
        if len(names) > 1
    ]
