"""A persistent checkout per project, brought to one revision by rewriting only what differs.

Exporting a revision from scratch creates every file again, and creating files is what costs
most on a worker (seconds for a few thousand files). A workspace keeps the previous build's
tree and lets git update it in place: only the files that differ between the index and the
new revision (or that a build command touched) are written; the rest keep their inode and
mtime, which also lets the manifest's hash cache skip reading them.

Beside ``root`` (``<parent>/<name>``) live:

- ``<name>.git/``: a git directory of our own whose objects come from the mirror through
  ``objects/info/alternates``. It owns the index, so no two workspaces ever share one, and
  neither the mirror's config nor its hooks are read by the commands run here;
- ``<name>.lock``: the flock that keeps two deployments out of one workspace;
- ``<name>.hashes``: where the caller keeps the manifest's ``HashCache``.

The tree written is the revision exactly as committed: no end-of-line conversion, ``$Id$``
expansion, smudge filter or re-encoding, whatever ``.gitattributes`` in the repository or
the worker's git config says, and ``export-ignore`` / ``export-subst`` do not apply here
(``export-ignore`` leaves paths out of the manifest instead: build.exclude_rules). Submodule
folders are left empty and LFS files as pointers; content.complete fills them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

from builds.engine.errors import InternalError, InvalidInput
from builds.engine.git import (
    NEUTRAL_ATTRIBUTES,
    Mirror,
    _base_environment,
    _put_config_in_environment,
)

# Highest-precedence attributes ($GIT_DIR/info/attributes beats every .gitattributes of the
# tree). "!" makes an attribute unspecified: "-working-tree-encoding" would make git die.
NEUTRAL_CHECKOUT_ATTRIBUTES = NEUTRAL_ATTRIBUTES

# Creating files, not CPU, bounds a first checkout: on 2 cores, 5,000 files took 1.8 s with
# one worker and 1.5 s with four. Fewer than 100 files to write are always written in-process.
_CHECKOUT_WORKERS = 8

# Set on the command line level, which beats the repository's config; the system and global
# (~/.gitconfig, XDG) files are not read at all.
_CONFIG: tuple[tuple[str, str], ...] = (
    ("core.autocrlf", "false"),
    ("core.safecrlf", "false"),
    ("core.fileMode", "true"),
    ("core.symlinks", "true"),
    ("core.ignoreCase", "false"),
    # The index's stat data decides which files are rewritten: a build that edits a file and
    # puts its mtime back still changes its ctime (and git re-reads "racily clean" entries).
    ("core.trustctime", "true"),
    ("core.checkStat", "default"),
    ("core.hooksPath", os.devnull),
    ("core.fsmonitor", "false"),
    ("core.untrackedCache", "false"),
    ("core.splitIndex", "false"),
    ("core.sparseCheckout", "false"),
    ("core.attributesFile", os.devnull),
    ("core.excludesFile", os.devnull),
    ("submodule.recurse", "false"),
    ("gc.auto", "0"),
    ("checkout.workers", str(_CHECKOUT_WORKERS)),
)

# Git creates files 0666 and folders 0777 less the umask; Mirror.export writes 0644 / 0755
# whatever the worker's umask is, so git runs with this one.
_UMASK = 0o022
_FILE_MODES = (0o644, 0o755)
_FOLDER_MODE = 0o755

# A gitlink's mode (0o160000) as the index stores it: a big-endian 32-bit number.
_GITLINK_MODE = (0o160000).to_bytes(4, "big")
_FULL_SHA = re.compile(r"[0-9a-f]{40}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_WILDCARD = re.compile(r"([\\*?\[])")
_STDERR_TAIL_CHARACTERS = 2000


class Workspace:
    """One project's build folder, updated in place from revision to revision.

    Use it under its lock, held for as long as anything reads ``root`` (build commands,
    manifest, upload)::

        with workspace.try_lock() as locked:
            if not locked:
                ...  # another deployment is using it: export into a temporary folder
            root = workspace.checkout(sha, keep=["node_modules"])
    """

    def __init__(self, root: Path, mirror: Mirror) -> None:
        self.root = root.absolute()
        self._mirror = mirror
        self._locked = False

    @property
    def git_dir(self) -> Path:
        return self.root.with_name(f"{self.root.name}.git")

    @property
    def lock_path(self) -> Path:
        return self.root.with_name(f"{self.root.name}.lock")

    @property
    def hash_cache_path(self) -> Path:
        """Where the caller keeps the manifest's HashCache for this workspace."""
        return self.root.with_name(f"{self.root.name}.hashes")

    @property
    def index_path(self) -> Path:
        return self.git_dir / "index"

    @contextlib.contextmanager
    def try_lock(self) -> Iterator[bool]:
        """Hold the workspace's lock if no one else does; yield whether we got it.

        An flock is released by the kernel when its holder dies, so a killed worker never
        leaves the workspace locked. The lock file itself stays (removing it would let two
        processes lock two different files of the same name).
        """
        self.root.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                acquired = False
            else:
                acquired = True
            self._locked = self._locked or acquired
            try:
                yield acquired
            finally:
                if acquired:
                    self._locked = False
        finally:
            os.close(descriptor)

    def checkout(self, sha: str, *, keep: Sequence[str] = ()) -> Path:
        """Make ``root`` hold exactly the tree of ``sha`` and return ``root``.

        Tracked files that differ from the revision (content, executable bit, symlink, or
        changed by a build command) are written again, files of the previous revision that
        the new one lacks are removed, and so is everything untracked (the previous build's
        output), except the paths in ``keep`` ("node_modules", "app/vendor"; relative to
        ``root``, not to a subdirectory build root): a build cache left in place. A kept path
        the revision tracks is replaced by the revision's version.

        Git re-reads files written in the same second as its index ("racily clean"), so the
        checkout after a first one may hash every file once.
        """
        if not self._locked:
            raise InternalError("Workspace.checkout() needs the workspace lock (try_lock).")
        full_sha = self._mirror.resolve(sha)
        if not _FULL_SHA.fullmatch(full_sha):
            raise InternalError(f"The mirror resolved {sha!r} to {full_sha!r}.")
        kept = [_validate_keep_path(path) for path in keep]
        exclude_options = [f"--exclude={_keep_pattern(path)}" for path in kept]
        self._prepare()
        _tidy(self.root, frozenset(kept))
        try:
            self._update(full_sha, exclude_options)
        except _GitFailed:
            # A damaged index (a crash while it was written, a git upgrade) must not wedge
            # the workspace: without an index, everything but the kept paths is rewritten.
            self.index_path.unlink(missing_ok=True)
            self._update(full_sha, exclude_options)
        return self.root

    def refresh(self) -> None:
        """Record the files' current stat data in the index where their content still matches
        it (``git update-index --refresh``): after their owner changed (the build account),
        or after the whole tree was unpacked again, the next checkout would otherwise take
        every file for changed and write it anew, with a new mtime (and a build's bytecode,
        which records its source's mtime, would differ every time). A failed refresh only
        costs that rewrite, so it is not an error."""
        with contextlib.suppress(_GitFailed):
            self._git_in_tree("update-index", "-q", "--unmerged", "--refresh")

    def _prepare(self) -> None:
        if self.root.is_symlink():
            raise InternalError(f"The workspace {self.root} is a symlink.")
        self.root.mkdir(parents=True, exist_ok=True)
        if not (self.git_dir / "HEAD").is_file():
            self._git("init", "--bare", "--quiet", "--template=", str(self.git_dir))
        _write_if_different(
            self.git_dir / "objects" / "info" / "alternates", f"{self._mirror.path / 'objects'}\n"
        )
        _write_if_different(self.git_dir / "info" / "attributes", NEUTRAL_CHECKOUT_ATTRIBUTES)
        # We hold the workspace lock, so an index.lock can only be a killed git's leftover.
        self.git_dir.joinpath("index.lock").unlink(missing_ok=True)

    def _update(self, sha: str, exclude_options: list[str]) -> None:
        had_submodules = self._index_may_hold_submodules()
        # Cleaning first, while the index still describes the previous revision, removes the
        # previous build's output before the new revision could collide with it.
        self._git_in_tree("clean", "-ffdqx", *exclude_options, "--")
        # One-way merge: an entry that matches the revision keeps its stat data and its file
        # unless that file's stat no longer matches; everything else is written or removed.
        self._git_in_tree("read-tree", "--reset", "-u", sha)
        # Git never cleans inside a submodule's folder while the index holds the submodule;
        # one the revision no longer has is untracked now, and goes with the rest (content.py
        # fills the folders of those it has).
        if had_submodules:
            self._git_in_tree("clean", "-ffdqx", *exclude_options, "--")

    def _index_may_hold_submodules(self) -> bool:
        """False only when the index holds no submodule (gitlink) entry: each entry stores
        its mode as four bytes, a gitlink's being 0000e000 (0o160000), and they appear
        nowhere in the file. A match elsewhere only costs a clean that finds nothing."""
        try:
            return _GITLINK_MODE in self.index_path.read_bytes()
        except FileNotFoundError:
            return False

    def _git_in_tree(self, *arguments: str) -> None:
        self._git(f"--git-dir={self.git_dir}", f"--work-tree={self.root}", *arguments)

    def _git(self, *arguments: str) -> None:
        result = subprocess.run(
            ["git", *arguments],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=_environment(),
            umask=_UMASK,
            check=False,
        )
        if result.returncode != 0:
            command = next(argument for argument in arguments if not argument.startswith("-"))
            stderr = result.stderr.decode("utf-8", errors="replace").strip()
            raise _GitFailed(
                f"git {command} failed in the workspace {self.root}: "
                f"{stderr[-_STDERR_TAIL_CHARACTERS:]}"
            )


class _GitFailed(InternalError):
    pass


def _environment() -> dict[str, str]:
    environment = _base_environment()
    environment["GIT_CONFIG_NOSYSTEM"] = "1"
    environment["GIT_CONFIG_GLOBAL"] = os.devnull
    _put_config_in_environment(environment, list(_CONFIG))
    return environment


def _validate_keep_path(path: str) -> str:
    cleaned = path.strip("/")
    if (
        not cleaned
        or _CONTROL.search(cleaned)
        or any(part in ("", ".", "..", ".git") for part in cleaned.split("/"))
    ):
        raise InvalidInput("cache_paths", f"{path!r} must be a plain relative path.")
    return cleaned


def _keep_pattern(path: str) -> str:
    """An exclude pattern matching exactly ``path`` from the top of the work tree."""
    return "/" + _WILDCARD.sub(r"\\\1", path)


def _tidy(root: Path, kept: Collection[str]) -> None:
    """Undo what a build did that git would not notice or could not undo.

    - permission bits other than the executable bit: git compares only that one, and a
      chmod in the same second as the checkout leaves even the ctime unchanged. Such a file
      is removed, so git writes it again (it is the previous build's output otherwise);
    - ".git" folders and files: git never cleans them, not even below a tracked folder;
    - folders without write permission (Go's module cache): clean could not empty them.
    """
    pending: list[tuple[str, str]] = [(os.fspath(root), "")]
    while pending:
        directory, prefix = pending.pop()
        with os.scandir(directory) as scanner:
            children = list(scanner)
        for child in children:
            relative = prefix + child.name
            if relative in kept:
                continue
            if child.name == ".git":
                _remove(child)
            elif child.is_dir(follow_symlinks=False):
                if stat.S_IMODE(child.stat(follow_symlinks=False).st_mode) != _FOLDER_MODE:
                    os.chmod(child.path, _FOLDER_MODE)
                pending.append((child.path, relative + "/"))
            elif (
                child.is_file(follow_symlinks=False)
                and stat.S_IMODE(child.stat(follow_symlinks=False).st_mode) not in _FILE_MODES
            ):
                os.unlink(child.path)


def _remove(child: os.DirEntry[str]) -> None:
    if child.is_dir(follow_symlinks=False):
        shutil.rmtree(child.path)
    else:
        os.unlink(child.path)


def _write_if_different(path: Path, text: str) -> None:
    if path.is_file() and path.read_text() == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


__all__ = ["NEUTRAL_CHECKOUT_ATTRIBUTES", "Workspace"]
