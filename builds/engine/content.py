"""What a checkout holds beyond the revision's own tree: submodules and Git LFS objects.

A checkout (the workspace's ``read-tree`` or a mirror's export) writes a submodule as an
empty folder and an LFS-tracked file as its pointer (~130 bytes of text). ``complete`` then
fills each submodule folder with the submodule's tree at the recorded commit (recursively),
and writes each LFS object over its pointer; anything that cannot be had fails the
deployment naming the path, never leaving an empty folder or a pointer in a release.

Each submodule URL gets its own bare mirror under ``submodules/`` beside the project's
mirror (git.Mirror.for_submodule: a relative URL resolved against the repository's, the
project's SSH key, its token and trusted host key only toward the same host), checked by
the same outbound rules as the repository before it is fetched. LFS objects are downloaded
by Debian's ``git-lfs`` (``git lfs fetch``) into the mirror of the repository holding them.
Everything here runs on the worker, never inside the build sandbox.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from builds.engine.errors import (
    Cancelled,
    InvalidInput,
    LfsUnavailable,
    RepositoryError,
    SubmoduleUnavailable,
    UserError,
)
from builds.engine.git import Mirror, redact_url
from builds.engine.manifest import display_path

LineSink = Callable[[str, str], None]
#: A submodule of a submodule of ... this deep is refused (a cycle, or a mistake).
MAX_SUBMODULE_DEPTH = 5
_MISSING_SHOWN = 5


@dataclass(frozen=True)
class ContentPolicy:
    """How a checkout is completed (BuildSpec carries one)."""

    #: Check out submodules; off: their folders stay empty, as in a plain ``git clone``.
    submodules: bool = True
    #: Raises InvalidInput for a URL Slipway must not fetch from (the outbound policy,
    #: builds/outbound.py repository_check); called with each submodule URL before its fetch.
    check_url: Callable[[str], None] | None = field(default=None, repr=False, compare=False)


def complete(
    mirror: Mirror,
    sha: str,
    root: Path,
    policy: ContentPolicy,
    log: LineSink,
    *,
    subdirectory: str = "",
    depth: int = 0,
) -> None:
    """Fill the submodule folders and LFS files of a checkout of ``sha`` found at ``root``.

    ``root`` holds the revision's tree, or only its folder ``subdirectory`` (then only what
    lies in it is completed). Raises SubmoduleUnavailable or LfsUnavailable naming the path
    (as in the repository) and saying why; RepositoryError when git fails otherwise.
    """
    prefix = f"{subdirectory}/" if subdirectory else ""
    gitlinks = {
        path[len(prefix) :]: commit
        for path, commit in mirror.gitlinks(sha).items()
        if path.startswith(prefix)
    }
    if gitlinks and not policy.submodules:
        log(
            "system",
            "Submodules are off for this project; left empty: "
            + ", ".join(display_path(path) for path in sorted(gitlinks)),
        )
        for path in gitlinks:
            # What an earlier checkout put there (git never cleans a submodule's folder).
            _replace_folder(root / path, display_path(path))
            (root / path).mkdir(parents=True)
    elif gitlinks:
        urls = mirror.submodule_urls(sha)
        for path, commit in sorted(gitlinks.items()):
            _check_out_submodule(
                mirror, prefix + path, commit, urls, root / path, policy, log, depth
            )
    _smudge_lfs(mirror, sha, root, prefix, log)


def _check_out_submodule(
    mirror: Mirror,
    path: str,
    commit: str,
    urls: dict[str, str],
    dest: Path,
    policy: ContentPolicy,
    log: LineSink,
    depth: int,
) -> None:
    shown = display_path(path)
    if depth >= MAX_SUBMODULE_DEPTH:
        raise SubmoduleUnavailable(
            f"Submodule {shown}: submodules nest deeper than {MAX_SUBMODULE_DEPTH} levels."
        )
    url = urls.get(path)
    if not url:
        raise SubmoduleUnavailable(
            f"Submodule {shown} (commit {commit[:12]}) has no URL in the revision's .gitmodules."
        )
    try:
        resolved, submodule = mirror.for_submodule(url)
        if policy.check_url is not None:
            policy.check_url(resolved)
    except InvalidInput as exc:
        reason = str(exc).partition(": ")[2] or str(exc)
        raise SubmoduleUnavailable(
            f"Submodule {shown} ({redact_url(url)}) is refused: {reason}"
        ) from None
    log("system", f"Submodule {shown}: {submodule.display_url} at {commit[:12]}")
    try:
        with _locked(submodule.path):
            if not submodule.has_commit(commit):
                submodule.fetch(lambda line: log("system", line))
            if not submodule.has_commit(commit):
                submodule.fetch_commit(commit, lambda line: log("system", line))
            if not submodule.has_commit(commit):
                raise SubmoduleUnavailable(
                    f"Submodule {shown}: commit {commit[:12]} is not in {submodule.display_url}."
                )
            _replace_folder(dest, shown)
            submodule.export(commit, dest)
            complete(submodule, commit, dest, policy, log, depth=depth + 1)
    except (SubmoduleUnavailable, Cancelled):
        raise
    except LfsUnavailable as exc:
        raise LfsUnavailable(f"In submodule {shown}: {exc}") from None
    except UserError as exc:  # fetch refused, host key, deadline...
        raise SubmoduleUnavailable(f"Submodule {shown}: {exc}") from None


def _replace_folder(dest: Path, shown: str) -> None:
    # The checkout made the folder; a symlink there (or above) would send the export
    # elsewhere on the worker.
    for folder in (dest, *dest.parents):
        if folder.is_symlink():
            raise SubmoduleUnavailable(f"Submodule {shown}: {folder.name} is a symlink.")
    if dest.exists():
        shutil.rmtree(dest)


def _smudge_lfs(mirror: Mirror, sha: str, root: Path, prefix: str, log: LineSink) -> None:
    pointers = {
        path[len(prefix) :]: oid
        for path, oid in mirror.lfs_pointers(sha).items()
        if path.startswith(prefix)
    }
    if not pointers:
        return
    log("system", f"Git LFS: {len(pointers)} files, from {mirror.display_url}")
    failure = ""
    with _locked(mirror.path.with_name(mirror.path.name + "-lfs")):
        if any(not mirror.lfs_object(oid).is_file() for oid in pointers.values()):
            try:
                mirror.fetch_lfs(sha, lambda line: log("system", line))
            except LfsUnavailable as exc:
                failure = str(exc)
            except RepositoryError as exc:
                failure = str(exc)
    missing = sorted(path for path, oid in pointers.items() if not mirror.lfs_object(oid).is_file())
    if missing:
        shown = ", ".join(display_path(path) for path in missing[:_MISSING_SHOWN])
        more = f" and {len(missing) - _MISSING_SHOWN} more" if len(missing) > _MISSING_SHOWN else ""
        raise LfsUnavailable(
            f"Git LFS file{'s' if len(missing) > 1 else ''} {shown}{more} could not be had"
            + (f": {failure}" if failure else ".")
        )
    for path, oid in sorted(pointers.items()):
        _write_over(root, path, mirror.lfs_object(oid))


def _write_over(root: Path, path: str, source: Path) -> None:
    """Replace the pointer at ``root/path`` with ``source``'s bytes, keeping its mode."""
    target = root / path
    for folder in target.parents:
        if folder == root:
            break
        if folder.is_symlink():
            raise LfsUnavailable(f"Git LFS file {display_path(path)} lies under a symlink.")
    if target.is_symlink() or not target.is_file():
        raise LfsUnavailable(f"Git LFS file {display_path(path)} is not a file in the checkout.")
    mode = target.stat().st_mode & 0o777
    staging = target.with_name(f".{target.name}.slipway-lfs")
    shutil.copyfile(source, staging)
    os.chmod(staging, mode)
    os.replace(staging, target)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One fetch at a time per mirror on this worker (git's ref locks refuse two)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


__all__ = ["MAX_SUBMODULE_DEPTH", "ContentPolicy", "complete"]
