"""The release layout on a server, driven over one SSH connection.

    <deploy_path>/
      releases/<name>/          one directory per release; <name> sorts by time, ends in the short SHA
      releases/<name>/.slipway-unfinished   present until the release is complete
      shared/                   linked into every release (storage/, .env, ...)
      current -> releases/<name>
      .slipway/lock/            held while a deployment works here (who, which, since when)
      .slipway/manifests/<name>.json   the manifest of each release
      .slipway/manifests/<name>.written  its listing when Slipway finished writing it
      .slipway/manifests/<name>.stat   its listing as the deployment left it, after the
                                       deployment's own commands ran: what the next one
                                       compares against to notice changes made since (drift)
      .slipway/manifests/<name>.rewritten  the paths those commands changed (the two listings
                                       differ): the next deployment sends the build's own
                                       files among them again, and keeps the others
      .slipway/manifests/<name>.managed  the paths Slipway wrote into it (config files and
                                       shared links), one a line, then the folders it made for
                                       them (ending in /): the next release, a copy of this
                                       one, drops them before writing today's

Before Slipway writes anything there, the deploy path must be owned by the login user (or
root) and not writable by group or others, and ``releases/``, ``shared/``, ``.slipway/`` (and
its ``lock/``, ``manifests/``) must not be symbolic links, and ``current`` must be a symbolic
link to ``releases/<name>``: otherwise another account could swap what Slipway writes to, or
Slipway would write outside the deploy path. The check is part of the first round trip.

Every path that reaches the remote shell is passed through ``shlex.quote``; lists of paths
travel NUL-separated (base64-encoded or on stdin), never as words of a command line.
"""

from __future__ import annotations

import base64
import io
import os
import posixpath
import re
import shlex
import tarfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from builds.engine.archive import GZIP, TAR_FLAGS, ZSTD
from builds.engine.errors import (
    CommandFailed,
    CurrentIsDirectory,
    DiskFull,
    EngineError,
    InvalidInput,
    LockHeld,
    ReleaseMissing,
    StorageFailed,
    UnsafeDeployPath,
)
from builds.engine.manifest import Manifest, ReuseSource
from builds.engine.ssh import Connection, LineCallback, classify_command_failure

UNFINISHED_MARKER = ".slipway-unfinished"
META_DIR = ".slipway"
LOCK_DIR = f"{META_DIR}/lock"
MANIFEST_DIR = f"{META_DIR}/manifests"

# Exit codes of our remote scripts, so the caller can tell our refusals from a shell error.
EXIT_LOCK_HELD = 75
EXIT_CURRENT_IS_DIR = 76
EXIT_RELEASE_MISSING = 77
EXIT_SYMLINKED_PARENT = 78
EXIT_UNSAFE_PATH = 79

_DEPLOY_PATH_CHARS = re.compile(r"^/[A-Za-z0-9._/@+~ -]*$")
_RELEASE_NAME = re.compile(r"^[0-9]{8}-[0-9]{9}-[0-9a-f]{7,40}$")
_RELATIVE_PATH_CHARS = re.compile(r"^[^\x00-\x1f\x7f]+$")
# A group as chgrp takes it: a POSIX-portable name (useradd's rule) or a number.
_GROUP = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_.-]{0,31}|[0-9]{1,10})$")
# Every file Slipway keeps per release in .slipway/manifests/.
_META_SUFFIXES = (".json", ".stat", ".written", ".rewritten", ".managed", ".made")
# Takers of the lock decide one at a time where the server has flock(1): fd 9 on the
# .slipway folder (opening it creates nothing, so it works on a full disk too), closed again
# after the decision so that nothing the rest of the script starts inherits it.
_LOCK_MUTEX = f"if command -v flock >/dev/null 2>&1; then exec 9<{META_DIR}; flock -w 30 9 || :; fi"
# Shell: the process groups recorded in the lock by its holder's commands
# (ssh._GROUP_WRAPPER) are killed, and must be gone, before the lock is taken from another
# owner or broken. A group whose leader started at another time than recorded is another,
# with a reused id. Prints the first group that would not go (another user's, after sudo).
_STOP_GROUPS = f"""stop_groups() (
  LC_ALL=C; export LC_ALL
  while read -r group started; do
    case "$group" in ''|*[!0-9]*) continue ;; esac
    now=$(cut -d' ' -f22 /proc/"$group"/stat 2>/dev/null || :)
    if [ -n "$now" ] && [ -n "$started" ] && [ "$now" != "$started" ]; then continue; fi
    kill -s KILL -- -"$group" 2>/dev/null || :
    n=0
    until kill -s 0 -- -"$group" 2>&1 | grep -q 'o such process'; do
      n=$((n + 1))
      if [ "$n" -gt 200 ]; then echo "$group"; exit 0; fi
      sleep 0.05 2>/dev/null || sleep 1
    done
  done < {LOCK_DIR}/groups
)
"""
# What a failed write says on a full or failing file system (dash's printf says only
# "I/O error"; GNU tar reports a short write without naming ENOSPC).
_STORAGE_SIGNS = (
    "No space left on device",
    "Disk quota exceeded",
    "Wrote only",
    "I/O error",
    "Input/output error",
    "Read-only file system",
    "write error",
)
_SPACE_SIGNS = ("No space left on device", "Disk quota exceeded", "Wrote only")
# Below this many KiB free (and below 1 % of the file system), a failed write is taken for a
# full disk whatever it said.
_NEARLY_FULL_KIB = 1024
_DF_TIMEOUT_SECONDS = 30
# Linux limits one argument to 128 KiB (MAX_ARG_STRLEN); stay well below it.
_MAX_INLINE_ARGUMENT = 96 * 1024
# The line a listing walk prints when a name holds a control character (see _stat_listing).
_CNTRL_FOUND = "slipway-control-character"


def validate_deploy_path(path: str) -> str:
    """An absolute path of ordinary characters; quoted anyway, but refused when hostile."""
    if not path.startswith("/"):
        raise InvalidInput("deploy_path", f"{path!r} must be an absolute path")
    if not _DEPLOY_PATH_CHARS.match(path):
        raise InvalidInput(
            "deploy_path",
            f"{path!r} may hold only letters, digits, spaces and . _ / @ + ~ -",
        )
    parts = path.split("/")
    if ".." in parts:
        raise InvalidInput("deploy_path", f"{path!r} must not contain '..'")
    if path.rstrip("/") == "":
        raise InvalidInput("deploy_path", "must not be the root directory")
    return path.rstrip("/")


def validate_relative_path(path: str, field: str) -> str:
    """A path inside the release: relative, no '..', no control characters."""
    cleaned = path.strip().strip("/") if path.strip().endswith("/") else path.strip().lstrip("/")
    if not cleaned or not _RELATIVE_PATH_CHARS.match(cleaned):
        raise InvalidInput(field, f"{path!r} is not a usable relative path")
    parts = cleaned.split("/")
    if any(part in {"", ".", ".."} for part in parts):
        raise InvalidInput(field, f"{path!r} must be a plain relative path without '.' or '..'")
    if parts[0] in {META_DIR, UNFINISHED_MARKER}:
        raise InvalidInput(field, f"{path!r} is reserved for Slipway")
    return cleaned


def validate_mode(value: str, field: str) -> str:
    """An octal permission mode such as "600" or "0640"; InvalidInput naming ``field``."""
    return _mode(value, field)


def validate_group(value: str, field: str) -> str:
    """A group name (letters, digits, ``_ . -``, not starting with a digit or ``-``) or a
    group number; InvalidInput naming ``field``."""
    if not _GROUP.match(value):
        raise InvalidInput(
            field, f"{value!r} is not a group name (letters, digits, _ . -) or number"
        )
    return value


def _plain_relative(path: str) -> bool:
    """A path Slipway may remove or replace inside a release (a listing's line, checked again)."""
    try:
        validate_relative_path(path, "path")
    except InvalidInput:
        return False
    return not path.startswith((META_DIR, UNFINISHED_MARKER))


def _drifted(hex_lines: Sequence[str]) -> list[str]:
    """The paths of the drift listing, sent as ``od -tx1`` lines of newline-ended names."""
    raw = bytes.fromhex("".join(hex_lines))
    return [os.fsdecode(name) for name in raw.split(b"\n") if name]


def release_name(revision: str, when: float | None = None) -> str:
    """``YYYYMMDD-HHMMSSmmm-<short sha>``: sorts by time (UTC, to the millisecond)."""
    moment = when if when is not None else time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(moment))
    return f"{stamp}{int(moment * 1000) % 1000:03d}-{revision[:7]}"


def is_release_name(name: str) -> bool:
    return bool(_RELEASE_NAME.match(name))


def release_prefix(when: float) -> str:
    """What every release a deployment started at ``when`` (epoch seconds) is named with:
    ``YYYYMMDD-HHMMSSmmm-`` (release_name without the SHA). A server's ``current`` whose
    name starts with it points at that deployment's release."""
    return release_name("", when)


@dataclass(frozen=True)
class LiveState:
    """Where a server's ``current`` points, read without changing anything."""

    #: The release name ``current`` points at; None when there is no ``current`` link.
    current: str | None
    #: That release is on the server and finished (no unfinished marker).
    complete: bool


@dataclass(frozen=True)
class Prepared:
    """The state found on the server when a new release was started."""

    live: str | None
    #: True when the new release began as a copy of the live one (send only the changes).
    copied: bool
    #: True when that copy is made of hard links to the live release's files (see
    #: ``RemoteLayout.lock_and_prepare``): every file to change must be replaced, never
    #: written in place.
    linked: bool = False
    #: Paths of the copy that differ from the live release as its deployment left it (after
    #: its commands ran: a person or the application changed them since): they must be sent
    #: again or removed.
    drifted: tuple[str, ...] = ()
    #: Paths of the copy that the live release's own commands changed after Slipway wrote it
    #: (see ``<name>.rewritten``): not drift; the build's files among them are sent again.
    rewritten: tuple[str, ...] = ()
    #: The shared paths (as given) that ``shared/`` does not hold yet: to be seeded.
    unseeded: tuple[str, ...] = ()
    #: What the lock step had to say (a stale lock taken over...), for the log.
    notes: tuple[str, ...] = ()
    #: The archive codec the server can unpack ("zstd" when it has zstd, else "gzip").
    codec: str = GZIP


@dataclass(frozen=True)
class FreeSpace:
    """A file system's size and free space, in KiB, and where it is mounted."""

    size_kib: int
    available_kib: int
    mount: str


@dataclass(frozen=True)
class LockInfo:
    """What a deploy path's lock says about its holder (see ``RemoteLayout.read_lock``)."""

    #: The owner id ("deployment-12"); "" when the lock names none (empty or unreadable).
    owner: str
    #: Who, in words ("Slipway deployment #12 by alice").
    holder: str
    #: When it was taken, as written (UTC, ISO 8601).
    since: str
    #: Seconds since it was last taken, by the server's clock.
    age_seconds: int


@dataclass(frozen=True)
class Cleaned:
    removed: list[str]


@dataclass(frozen=True)
class FileToWrite:
    """A config file for ``finish``: its bytes, octal mode ("600") and group ("" for none)."""

    body: bytes = field(repr=False)
    mode: str = "600"
    group: str = ""


def _meta_files(name: str) -> str:
    """The quoted paths of ``name``'s files in .slipway/manifests/, space-separated."""
    return _quoted(*(f"{MANIFEST_DIR}/{name}{suffix}" for suffix in _META_SUFFIXES))


def _stat_listing(directory: str, *, cntrl: bool = False) -> str:
    """Shell: one sorted line per file and symlink under ``directory``: path, size, mtime, mode.
    With ``cntrl``, the walk stops at the first name (of anything) holding a control
    character and prints a line ``_CNTRL_FOUND`` (no listing line can be: they hold tabs)."""
    found = f"-name '*[[:cntrl:]]*' -printf '{_CNTRL_FOUND}\\n' -quit -o " if cntrl else ""
    return (
        f"(cd -- {directory} && find . -path ./{UNFINISHED_MARKER} -prune -o {found}"
        "\\( -type f -o -type l \\) -printf '%P\\t%s\\t%T@\\t%m\\n' | LC_ALL=C sort)"
    )


def _kib(amount: int) -> str:
    """A size in KiB for people: "512 KiB", "3.4 MiB", "1.2 GiB"."""
    if amount < 1024:
        return f"{amount} KiB"
    if amount < 1024 * 1024:
        return f"{amount / 1024:.1f} MiB"
    return f"{amount / (1024 * 1024):.1f} GiB"


def _quoted(*parts: str) -> str:
    return " ".join(shlex.quote(part) for part in parts)


class RemoteLayout:
    """Operations on one server's deploy path, over an open connection.

    Each public method is one round trip (one exec channel): on a real network, and on hosts
    whose login shell reads a heavy rc file, every exec costs far more than the work it does.
    A deployment takes four: lock and prepare, upload, finish, switch and clean up (five when
    files are copied from kept releases: ``reuse``); three when nothing runs in the release
    before it goes live and it goes live as soon as it is ready (``finish(then_switch=True)``).
    """

    def __init__(
        self, connection: Connection, deploy_path: str, *, on_line: LineCallback | None = None
    ) -> None:
        self.connection = connection
        self.deploy_path = validate_deploy_path(deploy_path)
        self.on_line = on_line
        self.q = shlex.quote(self.deploy_path)

    # -- paths

    def release_path(self, name: str) -> str:
        return posixpath.join(self.deploy_path, "releases", name)

    def shared_path(self) -> str:
        return posixpath.join(self.deploy_path, "shared")

    @property
    def current_path(self) -> str:
        return posixpath.join(self.deploy_path, "current")

    @property
    def groups_file(self) -> str:
        """Where the process groups of the commands run under the lock are recorded: a lock
        taken over from a deployment whose worker died stops them first (``_lock_script``)."""
        return posixpath.join(self.deploy_path, LOCK_DIR, "groups")

    # -- running scripts

    def _script(
        self,
        body: str,
        *,
        stdin: bytes | None = None,
        check: bool = True,
        timeout: float | None = 600,
    ) -> str:
        # `set -eu`: any failing step stops the script with its own exit code.
        script = "set -eu\n" + body
        result = self.connection.run(
            "sh -c " + shlex.quote(script), stdin=stdin, check=False, timeout=timeout
        )
        self._raise_for(result.exit_code, result.stdout, result.stderr, result.tail, check=check)
        return result.stdout

    def _raise_for(
        self, exit_code: int, stdout: str, stderr: str, tail: Sequence[str], *, check: bool
    ) -> None:
        address = self.connection.endpoint.address
        if exit_code == EXIT_LOCK_HELD:
            described = stdout.strip().splitlines()[-1] if stdout.strip() else ""
            owner = ""
            if described.startswith("owner="):
                owner, _, described = described.partition(" ")
                owner = owner.removeprefix("owner=")
            error = LockHeld(
                f"{self.deploy_path} on {address} is locked by another "
                f"deployment: {described or 'holder unknown'}. If nothing is deploying, "
                "an admin can break the lock on the server's page (or remove "
                f"{posixpath.join(self.deploy_path, LOCK_DIR)} on the server)."
            )
            error.owner = owner
            raise error
        if exit_code == EXIT_CURRENT_IS_DIR:
            raise CurrentIsDirectory(
                f"{self.current_path} on {address} is a real directory, not a "
                "symlink. Slipway will not replace it: move it aside (for example into releases/) first."
            )
        if exit_code == EXIT_UNSAFE_PATH:
            found = dict(line.partition("=")[::2] for line in stdout.splitlines() if "=" in line)
            raise UnsafeDeployPath(
                f"The deploy path {self.deploy_path} on {address} is unsafe: "
                f"{found.get('unsafe', 'it failed the safety check')}. "
                f"Fix it on the server, for example with `{found.get('fix', '')}`, then deploy again."
            )
        if exit_code == EXIT_SYMLINKED_PARENT:
            raise InvalidInput(
                "shared_paths",
                stderr.strip().splitlines()[-1] if stderr.strip() else "a symlinked folder",
            )
        if exit_code == EXIT_RELEASE_MISSING:
            lines = [line for line in stdout.splitlines() if line.startswith("Release ")]
            raise ReleaseMissing(lines[-1] if lines else "The release is no longer on the server")
        if check and exit_code != 0:
            failure = classify_command_failure(
                CommandFailed("(Slipway's release script)", exit_code, list(tail)),
                stderr.splitlines(),
                address,
                username=self.connection.endpoint.username,
                deploy_path=self.deploy_path,
            )
            raise self._storage_failure(stderr, failure) or failure

    def _storage_failure(self, stderr: str, failure: EngineError) -> StorageFailed | None:
        """When a script failed writing (its stderr says so: a full disk, an I/O error, a
        read-only file system), an error naming the server, the path, the line that said it
        and the free space on the deploy path's file system (``df -Pk``, read after the
        failure), and what to do; None for any other failure."""
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        said = next((line for line in lines if any(s in line for s in _STORAGE_SIGNS)), "")
        if not said:
            return None
        address = self.connection.endpoint.address
        space = self.free_space()
        full = any(sign in said for sign in _SPACE_SIGNS) or (
            space is not None
            and space.available_kib < min(_NEARLY_FULL_KIB, space.size_kib // 100 + 1)
        )
        if space is None:
            found = "Its free space could not be read."
        else:
            found = (
                f"The file system of {self.deploy_path} (mounted on {space.mount}) has "
                f"{_kib(space.available_kib)} free of {_kib(space.size_kib)} (df -Pk, "
                "read after the failure)."
            )
        if full:
            return DiskFull(
                f"The disk is full on {address}: writing to {self.deploy_path} failed "
                f"({said}). {found} Free space there (old files, logs, caches; "
                f"`df -h {self.deploy_path}` shows it), then deploy again."
            )
        return StorageFailed(
            f"Writing to {self.deploy_path} on {address} failed ({said}). {found} Check that "
            "file system on the server (a disk error, or mounted read-only: `dmesg`, "
            "`mount`), then deploy again."
        )

    def free_space(self) -> FreeSpace | None:
        """The deploy path's file system as ``df -Pk`` reports it (or of the nearest folder
        above it that exists); None when that cannot be read."""
        probe = (
            f'p={self.q}; while [ ! -e "$p" ] && [ "$p" != / ]; do p=$(dirname -- "$p"); done\n'
            'df -Pk -- "$p" | tail -n 1\n'
        )
        try:
            result = self.connection.run(
                "sh -c " + shlex.quote(probe), check=False, timeout=_DF_TIMEOUT_SECONDS
            )
        except EngineError:
            return None
        fields = result.stdout.strip().split()
        # Filesystem 1024-blocks Used Available Capacity Mounted-on (POSIX output).
        if result.exit_code != 0 or len(fields) < 6 or not fields[1].isdigit():
            return None
        if not fields[3].isdigit():
            return None
        return FreeSpace(
            size_kib=int(fields[1]), available_kib=int(fields[3]), mount=" ".join(fields[5:])
        )

    # -- script pieces (each a block of POSIX sh, run from the deploy path)

    def _enter_script(self) -> str:
        """Make the deploy path if missing (not writable by others), enter it, and stop with
        ``unsafe=``/``fix=`` lines and exit 79 when it is unsafe (see the module docstring)."""
        q = self.q
        # Inside the echo's double quotes: close them, add the path as the server's shell would
        # spell it in a command, reopen.
        path = '"' + shlex.quote(q) + '"'

        def refuse(what: str, fix: str) -> str:
            return f'{{ echo "unsafe={what}"; echo "fix={fix}"; exit {EXIT_UNSAFE_PATH}; }}'

        not_owned = refuse(
            "it is owned by $(stat -c %U .), not by the login user $(id -un) or root",
            f"sudo chown $(id -un) {path}",
        )
        writable = refuse(
            "it is writable by group or others (mode $(stat -c %a .))", f"chmod go-w {path}"
        )
        linked = refuse(
            '$name is a symbolic link (to $(readlink -- "$name")), not a folder',
            f"rm {path}/$name && mkdir {path}/$name",
        )
        elsewhere = refuse(
            "current points to $target, not to a release in releases/", f"rm {path}/current"
        )
        links = " ".join(
            shlex.quote(name) for name in ("releases", "shared", META_DIR, LOCK_DIR, MANIFEST_DIR)
        )
        inside = shlex.quote(self.deploy_path + "/releases/")
        return f"""if [ ! -e {q} ] && [ ! -L {q} ]; then (umask 022 && mkdir -p -- {q}); fi
cd -- {q}
owner=$(stat -c %u .)
if [ "$owner" != "$(id -u)" ] && [ "$owner" != 0 ]; then {not_owned}; fi
if [ -n "$(find . -maxdepth 0 -perm /022)" ]; then {writable}; fi
for name in {links}; do
  if [ -L "$name" ]; then {linked}; fi
done
if [ -L current ]; then
  target=$(readlink -- current)
  case "$target" in
    releases/*/*|releases/.|releases/..|{inside}*/*|{inside}.|{inside}..) bad=1 ;;
    releases/?*|{inside}?*) bad=0 ;;
    *) bad=1 ;;
  esac
  if [ "$bad" = 1 ]; then {elsewhere}; fi
fi
"""

    def _lock_script(
        self,
        *,
        holder: str,
        owner_id: str,
        stale_after: int,
        take_over_from: str,
        stop_groups: bool = True,
    ) -> str:
        """Take the lock, so that it is never seen without its owner.

        The info file is written into a fresh folder first, which is then renamed into place:
        rename(2) fails on a lock folder that holds anything (another taker came first) and
        replaces an empty one (left by an older Slipway that made the folder, then wrote the
        file). Taking a lock over (it is this owner's, a finished deployment's, stale, or
        without an owner) renames the new info file over the old one: the lock never
        disappears meanwhile. Where the server has ``flock``, takers decide one at a time
        (the flock goes when the shell ends, however it ends), so two takers of one stale
        lock cannot both believe they hold it. A lock whose owner cannot be read (empty,
        missing or unreadable info) is broken, with a ``note=`` saying so. Writing the info
        may fail (a full disk): then nothing is left behind and the script fails.

        Taking a lock from another owner first kills the process groups its commands left
        (``groups_file``: a worker that died leaves its commands running); a group that
        will not go keeps the lock where it is (LockHeld naming the group). Not with
        ``stop_groups=False``: a deployment handing its own lock on (``take_over_from``)
        for a command it could not stop.
        """
        # One line each: a line break in the holder must not start a line of its own.
        holder = " ".join(holder.split())
        info = f"owner={owner_id}\nholder={holder}\nsince={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n"
        meta = shlex.quote(META_DIR)
        lock = shlex.quote(LOCK_DIR)
        took_over = shlex.quote(f"note=took over the lock of {take_over_from}, which has finished")
        return f"""mkdir -p {meta}
{_LOCK_MUTEX}
find {meta} -maxdepth 1 -name 'lock.*.new' -mmin +10 -exec rm -rf -- {{}} + 2>/dev/null || :
held() {{
  sed -n 's/^owner=/owner=/p; s/^holder=//p; s/^since=/since /p' {lock}/info 2>/dev/null | tr '\\n' ' '
  exit {EXIT_LOCK_HELD}
}}
{_STOP_GROUPS}
how=place; note=""
if [ -d {lock} ]; then
  owner=$(sed -n 's/^owner=//p' {lock}/info 2>/dev/null | head -n 1)
  # The info file is replaced whenever the lock is taken (again): its age is the lock's.
  age=$(( $(date +%s) - $(stat -c %Y {lock}/info 2>/dev/null || stat -c %Y {lock} 2>/dev/null || date +%s) ))
  if [ -z "$(ls -A {lock} 2>/dev/null)" ]; then
    note="note=broke a lock without an owner (an empty folder, left $age s ago by an older Slipway or a full disk)"
  elif [ "$owner" = {shlex.quote(owner_id)} ]; then how=retake
  elif [ -n {shlex.quote(take_over_from)} ] && [ "$owner" = {shlex.quote(take_over_from)} ]; then
    how=retake; note={took_over}
  elif [ -z "$owner" ]; then
    how=retake; note="note=broke a lock without an owner (left $age s ago by an older Slipway or a full disk)"
  elif [ "$age" -gt {int(stale_after)} ]; then
    how=retake; note="note=took over a stale lock of $owner ($age s old)"
  else held
  fi
fi
if [ "$how" = retake ] && [ "$owner" != {shlex.quote(owner_id)} ] && [ {int(stop_groups)} = 1 ] \
   && [ -f {lock}/groups ]; then
  left=$(stop_groups)
  if [ -n "$left" ]; then
    echo "owner=$owner a command of $owner is still running on the server (process group $left)"
    exit {EXIT_LOCK_HELD}
  fi
  rm -f -- {lock}/groups
fi
new={meta}/lock.$$.new
rm -rf -- "$new"
mkdir -- "$new"
if ! printf '%s' {shlex.quote(info)} > "$new/info"; then
  rm -rf -- "$new"
  echo "Slipway could not write the lock's owner into {META_DIR}/" >&2; exit 1
fi
if [ "$how" = retake ]; then
  mv -f -- "$new/info" {lock}/info || {{ rm -rf -- "$new"; exit 1; }}
elif mv -T -- "$new" {lock} 2>/dev/null; then :
elif [ -d {lock} ] && [ -n "$(ls -A {lock} 2>/dev/null)" ]; then
  # Another taker placed its lock first (a server without flock).
  rm -rf -- "$new"; held
# mv without -T (not GNU): rename(2) itself.
elif command -v python3 >/dev/null 2>&1; then python3 -c 'import os, sys; os.rename(sys.argv[1], sys.argv[2])' "$new" {lock} || {{ rm -rf -- "$new"; held; }}
else perl -e 'rename($ARGV[0], $ARGV[1]) or exit 1' "$new" {lock} || {{ rm -rf -- "$new"; held; }}
fi
rm -rf -- "$new"
exec 9<&-
if [ -n "$note" ]; then echo "$note"; fi
"""

    def _unlock_script(self, owner_id: str) -> str:
        # The lock is renamed away before it is removed: ``rm -rf`` empties the folder first,
        # and a taker must never find it empty and take it while it is being removed.
        lock = shlex.quote(LOCK_DIR)
        return f"""if [ -d {shlex.quote(META_DIR)} ]; then
{_LOCK_MUTEX}
  if grep -qx {shlex.quote("owner=" + owner_id)} {lock}/info 2>/dev/null; then
    gone={shlex.quote(META_DIR)}/lock.$$.gone; rm -rf -- "$gone"; mv -- {lock} "$gone"; rm -rf -- "$gone"
  fi
  exec 9<&-
fi
"""

    def _break_lock_script(self, owner_id: str) -> str:
        """Remove the lock if its owner is still ``owner_id`` ("" for a lock without an
        owner), once the process groups its commands recorded are gone (else exit 75, naming
        the one left); prints ``broken=1`` when it did."""
        lock = shlex.quote(LOCK_DIR)
        return f"""if [ -d {shlex.quote(META_DIR)} ]; then
{_LOCK_MUTEX}
  if [ -d {lock} ] && [ "$(sed -n 's/^owner=//p' {lock}/info 2>/dev/null | head -n 1)" = {shlex.quote(owner_id)} ]; then
{_STOP_GROUPS}
    left=""
    if [ -f {lock}/groups ]; then left=$(stop_groups); fi
    if [ -n "$left" ]; then
      echo "a command of {owner_id or "its holder"} is still running on the server (process group $left)"
      exit {EXIT_LOCK_HELD}
    fi
    gone={shlex.quote(META_DIR)}/lock.$$.gone; rm -rf -- "$gone"; mv -- {lock} "$gone"; rm -rf -- "$gone"
    echo broken=1
  fi
  exec 9<&-
fi
"""

    def _prepare_script(
        self,
        name: str,
        *,
        expected_live: str | None,
        incremental: bool,
        shared_paths: Sequence[str] = (),
        hard_links: bool = False,
    ) -> str:
        if not is_release_name(name):
            raise InvalidInput("release", f"{name!r} is not a release name")
        new = shlex.quote(f"releases/{name}")
        expected = shlex.quote(expected_live or "")
        # Shared paths shared/ lacks, by their index (the names never travel back).
        unseeded = "".join(
            f"if [ ! -e {shlex.quote(f'shared/{path}')} ] && [ ! -L {shlex.quote(f'shared/{path}')} ]; "
            f"then echo unseeded={index}; fi\n"
            for index, path in enumerate(
                validate_relative_path(raw, "shared_paths") for raw in shared_paths
            )
        )
        return f"""mkdir -p releases shared {shlex.quote(MANIFEST_DIR)}
{unseeded}
if command -v zstd >/dev/null 2>&1; then echo codec={ZSTD}; fi
live=""
if [ -L current ]; then live=$(readlink current); live=${{live##*/}};
elif [ -e current ]; then exit {EXIT_CURRENT_IS_DIR}; fi
echo "live=$live"
if [ -n "$live" ] && [ "$live" = {shlex.quote(name)} ]; then echo "release {name} is live" >&2; exit 1; fi
if [ -d {new} ] && [ ! -e {new}/{UNFINISHED_MARKER} ]; then echo "release {name} exists already" >&2; exit 1; fi
rm -rf -- {new} {new}.tmp
copied=0
if [ {int(incremental)} = 1 ] && [ -n "$live" ] && [ "$live" = {expected} ] && [ -d "releases/$live" ] \\
   && [ ! -e "releases/$live/{UNFINISHED_MARKER}" ] && [ -f "{MANIFEST_DIR}/$live.stat" ]; then
  if [ {int(hard_links)} = 1 ] && cp -al -- "releases/$live" {new}.tmp 2>/dev/null; then linked=1
  else
    # No hard links wanted, or refused (another account's files under protected_hardlinks,
    # a file system without them): a real copy.
    rm -rf -- {new}.tmp; linked=0
    cp -a --reflink=auto -- "releases/$live" {new}.tmp
  fi
  # One walk of the copy both lists it and looks for names holding a control character (a
  # newline, a tab): the listing is one line per file, so such a name could not be told
  # apart from its neighbours, and such a release is never copied from (the copy goes).
  listing={shlex.quote(META_DIR)}/listing.$$
  trap 'rm -f -- "$listing"' EXIT
  {_stat_listing(new + ".tmp", cntrl=True)} > "$listing"
  if grep -qx {_CNTRL_FOUND} "$listing"; then
    rm -rf -- {new}.tmp "$listing"
  else
    copied=1
  fi
fi
if [ "$copied" = 1 ]; then
  mv -- {new}.tmp {new}
  echo copied=1
  echo "linked=$linked"
  # What changed in the live release after its deployment finished (people, the application):
  # compare the copy with the listing taken after that deployment's commands ran.
  # Names are bytes (not always UTF-8), so the lists travel as hex: lines of od.
  # (Nothing changed, the usual case: one cmp instead of the six programs that find what.)
  if ! cmp -s "{MANIFEST_DIR}/$live.stat" "$listing"; then
    LC_ALL=C comm -3 "{MANIFEST_DIR}/$live.stat" "$listing" | sed 's/^\t//' | cut -f1 | LC_ALL=C sort -u | od -An -v -tx1 | sed 's/^/drift=/'
  fi
  # What the live release's own commands changed after Slipway wrote it: not drift.
  if [ -s "{MANIFEST_DIR}/$live.rewritten" ]; then od -An -v -tx1 "{MANIFEST_DIR}/$live.rewritten" | sed 's/^/rewritten=/'; fi
  # Config files and shared links of the live release: gone from the copy, so that one no
  # longer configured is not carried on (today's are written again when the release finishes).
  if [ -s "{MANIFEST_DIR}/$live.managed" ]; then
    while IFS= read -r path; do
      case "/$path" in //|*/../*|*/./*|*/..|*/.) continue ;; esac
      parent=$(dirname -- "${{path%/}}"); through_link=0
      while [ "$parent" != . ]; do
        if [ -L {new}/"$parent" ]; then through_link=1; fi
        parent=$(dirname -- "$parent")
      done
      if [ "$through_link" = 1 ]; then continue; fi
      # A line ending in / is a folder Slipway made for them: removed once empty.
      case "$path" in */) rmdir -- {new}/"${{path%/}}" 2>/dev/null || : ;; *) rm -rf -- {new}/"$path" ;; esac
    done < "{MANIFEST_DIR}/$live.managed"
  fi
else
  mkdir -- {new}
  echo copied=0
fi
: > {new}/{UNFINISHED_MARKER}
"""

    def _switch_script(self, name: str) -> str:
        release = shlex.quote(f"releases/{name}")
        missing = shlex.quote(f"Release {name} is no longer on the server")
        return f"""if [ ! -d {release} ]; then echo {missing}; exit {EXIT_RELEASE_MISSING}; fi
if [ -e current ] && [ ! -L current ]; then exit {EXIT_CURRENT_IS_DIR}; fi
rm -f -- {release}/{UNFINISHED_MARKER}
tmp=".current.$$.tmp"
rm -f -- "$tmp"
ln -s -- {release} "$tmp"
if mv -T -- "$tmp" current 2>/dev/null; then :
elif command -v python3 >/dev/null 2>&1; then python3 -c 'import os, sys; os.replace(sys.argv[1], sys.argv[2])' "$tmp" current
else perl -e 'rename($ARGV[0], $ARGV[1]) or die "rename: $!\\n"' "$tmp" current; fi
"""

    def _clean_up_script(self, *, keep: int, protect: Sequence[str]) -> str:
        # ``keep`` counts every release left on disk, the protected ones (the live release,
        # the one a rollback returns to) first; the newest others fill what room is left.
        # Release names sort by time, so the newest finished ones are the last of `sort`.
        protected = " ".join(dict.fromkeys(name for name in protect if is_release_name(name)))
        return f"""protect=" {protected} "
room={max(int(keep), 1)}
for p in $protect; do if [ -d "releases/$p" ]; then room=$((room - 1)); fi; done
if [ "$room" -lt 0 ]; then room=0; fi
finished=$(cd releases && for d in */; do d=${{d%/}}; [ -d "$d" ] && [ ! -e "$d/{UNFINISHED_MARKER}" ] && case "$protect" in *" $d "*) ;; *) echo "$d" ;; esac; done | LC_ALL=C sort | tail -n "$room")
nl='
'
for d in releases/*/; do
  d=${{d%/}}; d=${{d#releases/}}
  case "$d" in [0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]-[0-9]*-[0-9a-f]*) ;; *) continue ;; esac
  case "$protect" in *" $d "*) continue ;; esac
  # One of the finished lines? (The shell's own matching: no program per release.)
  case "$nl$finished$nl" in *"$nl$d$nl"*) listed=1 ;; *) listed=0 ;; esac
  if [ -e "releases/$d/{UNFINISHED_MARKER}" ] || [ "$listed" = 0 ]; then
    rm -rf -- "releases/$d" {" ".join(f'"{MANIFEST_DIR}/$d{suffix}"' for suffix in _META_SUFFIXES)}
    echo "removed=$d"
  fi
done
"""

    def _check_release_script(self, name: str) -> str:
        release = shlex.quote(f"releases/{name}")
        gone = shlex.quote(f"Release {name} is no longer on the server")
        unfinished = shlex.quote(f"Release {name} was never finished")
        return f"""if [ ! -d {release} ]; then echo {gone}; exit {EXIT_RELEASE_MISSING}; fi
if [ -e {release}/{UNFINISHED_MARKER} ]; then echo {unfinished}; exit {EXIT_RELEASE_MISSING}; fi
"""

    def _finish_script(
        self,
        name: str,
        *,
        shared_paths: Sequence[str],
        file_mode: str,
        directory_mode: str,
        config_paths: Sequence[str] = (),
        config_files: Mapping[str, FileToWrite] | None = None,
    ) -> str:
        release = shlex.quote(f"releases/{name}")
        # No folder above a path Slipway writes (config files, shared links) may be a symlink
        # from the repository: writing through it would land outside the release.
        lines = [
            _no_symlinked_parents(
                name, [*config_paths, *(p.strip().rstrip("/") for p in shared_paths)]
            )
        ]
        # The folders this step makes for config files and shared links, deepest first (the
        # next release removes them when they are left empty).
        managed = [
            *config_paths,
            *(validate_relative_path(p, "shared_paths") for p in shared_paths),
        ]
        made = shlex.quote(f"{MANIFEST_DIR}/{name}.made")
        folders = _parents(managed)
        if folders:
            lines.append(f": > {made}")
        for folder in folders:
            in_release = shlex.quote(f"releases/{name}/{folder}")
            lines.append(
                f"if [ ! -e {in_release} ]; then printf '%s/\\n' {shlex.quote(folder)} >> {made}; fi"
            )
        # A config file is written as a new file, never into the one at its path: in a
        # release of hard links, that file is an older release's too.
        for path in config_paths:
            lines.append(f"rm -f -- {shlex.quote(f'releases/{name}/{path}')}")
        lines.append("tar -xzpf - --no-same-owner")
        managed_list = shlex.quote(f"{MANIFEST_DIR}/{name}.managed")
        if folders:
            lines.append(f"cat {made} >> {managed_list}\nrm -f -- {made}")
        for raw in shared_paths:
            is_dir = raw.strip().endswith("/")
            path = validate_relative_path(raw, "shared_paths")
            in_release = shlex.quote(f"releases/{name}/{path}")
            in_shared = shlex.quote(f"shared/{path}")
            target = shlex.quote("../" * (2 + path.count("/")) + f"shared/{path}")
            seed = f"mkdir -p -- {in_shared}" if is_dir else f": > {in_shared}"
            # Seed shared/ from the first release that has the path, else create it empty.
            lines.append(
                f"""if [ ! -e {in_shared} ] && [ ! -L {in_shared} ]; then
  mkdir -p -- "$(dirname {in_shared})"
  if [ -e {in_release} ] && [ ! -L {in_release} ]; then cp -a -- {in_release} {in_shared}; else {seed}; fi
fi
mkdir -p -- "$(dirname {in_release})"
rm -rf -- {in_release}
ln -s -- {target} {in_release}"""
            )
        if file_mode:
            mode = _mode(file_mode, "file_mode")
            # A file with other links (a release made of hard links) is replaced by a copy of
            # itself first: chmod on it would change the older releases' file too.
            lines.append(
                f"find {release} -type f ! -name {UNFINISHED_MARKER} ! -perm {mode} -links +1 "
                '-exec sh -c \'for f; do cp -p -- "$f" "$f.slipway-copy" && '
                'mv -f -- "$f.slipway-copy" "$f"; done\' sh {} +\n'
                f"find {release} -type f ! -name {UNFINISHED_MARKER} ! -perm {mode} -exec chmod {mode} {{}} +"
            )
        if directory_mode:
            mode = _mode(directory_mode, "directory_mode")
            lines.append(f"find {release} -type d ! -perm {mode} -exec chmod {mode} {{}} +")
        # Config files keep their own mode (private by default), whatever the server's.
        for path, config in (config_files or {}).items():
            in_release = shlex.quote(f"releases/{name}/{path}")
            if config.group:
                lines.append(
                    f"chgrp -- {shlex.quote(validate_group(config.group, 'group'))} {in_release}"
                )
            lines.append(f"chmod -- {_mode(config.mode, 'mode')} {in_release}")
        written = shlex.quote(f"{MANIFEST_DIR}/{name}.written")
        lines.append(f"{_stat_listing(release)} > {written}")
        # Settled at once: nothing has run in the release since that listing, so it is also
        # the listing as the deployment leaves it, and nothing was rewritten (what
        # _settle_script would find, without walking the release twice more).
        listing = shlex.quote(f"{MANIFEST_DIR}/{name}.stat")
        rewritten = shlex.quote(f"{MANIFEST_DIR}/{name}.rewritten")
        lines.append(
            f"cp -- {written} {listing}.tmp && mv -- {listing}.tmp {listing}\n"
            f": > {rewritten}.tmp && mv -- {rewritten}.tmp {rewritten}"
        )
        return "\n".join(lines) + "\n"

    def _settle_script(self, name: str) -> str:
        """Record the release as the deployment leaves it (``<name>.stat``, the baseline for
        drift) and what its commands changed since Slipway wrote it (``<name>.rewritten``)."""
        if not is_release_name(name):
            raise InvalidInput("release", f"{name!r} is not a release name")
        release = shlex.quote(f"releases/{name}")
        listing = shlex.quote(f"{MANIFEST_DIR}/{name}.stat")
        written = shlex.quote(f"{MANIFEST_DIR}/{name}.written")
        rewritten = shlex.quote(f"{MANIFEST_DIR}/{name}.rewritten")
        return f"""if [ -d {release} ] && [ -f {written} ]; then
  {_stat_listing(release)} > {listing}.tmp
  mv -- {listing}.tmp {listing}
  LC_ALL=C comm -3 {written} {listing} | sed 's/^\t//' | cut -f1 | LC_ALL=C sort -u > {rewritten}.tmp
  mv -- {rewritten}.tmp {rewritten}
fi
"""

    def _run(self, *pieces: str, stdin: bytes | None = None) -> dict[str, list[str]]:
        out = self._script(f"cd -- {self.q}\n" + "".join(pieces), stdin=stdin)
        values: dict[str, list[str]] = {}
        for line in out.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values.setdefault(key, []).append(value)
        return values

    # -- the four round trips of a deployment

    def lock_and_prepare(
        self,
        name: str,
        *,
        holder: str,
        owner_id: str,
        stale_after: int,
        take_over_from: str = "",
        expected_live: str | None,
        incremental: bool,
        shared_paths: Sequence[str] = (),
        hard_links: bool = False,
    ) -> Prepared:
        """Take the deploy path's lock and create ``releases/<name>`` marked unfinished.

        When the live release is the one the caller's change set was computed against (and
        Slipway's listing of it is there), the new release starts as a copy of it; otherwise
        it starts empty and the caller sends everything.

        The copy is a real one (``cp -a --reflink=auto``: a command writing into the new
        release cannot change an old one), or with ``hard_links`` new folders holding hard
        links to the live release's files (``cp -al``, as ``rsync --link-dest`` does: it
        costs a directory entry per file instead of the file's bytes). Slipway itself then
        never writes into a linked file: what the upload changes is removed first and
        unpacked as a new file, config files are removed before they are written, and a
        file whose permissions ``finish`` changes is copied first (``Prepared.linked`` says
        which copy was made; ``cp -al`` refused, for example by ``protected_hardlinks`` on
        another account's files, falls back to the real copy). What writes into a file in
        place afterwards (a command, the application) writes into every release sharing it.

        The answer also names the paths of the copy changed since (``drifted``: by hand, to
        be restored) or changed by the live release's own commands (``rewritten``), and
        which of ``shared_paths`` ``shared/`` does not hold yet (``unseeded``).
        """
        lock = self._lock_script(
            holder=holder, owner_id=owner_id, stale_after=stale_after, take_over_from=take_over_from
        )
        prepare = self._prepare_script(
            name,
            expected_live=expected_live,
            incremental=incremental,
            shared_paths=shared_paths,
            hard_links=hard_links,
        )
        out = self._script(self._enter_script() + lock + prepare)
        values: dict[str, list[str]] = {}
        for line in out.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values.setdefault(key, []).append(value)
        return Prepared(
            live=(values.get("live") or [""])[-1] or None,
            copied=(values.get("copied") or ["0"])[-1] == "1",
            linked=(values.get("linked") or ["0"])[-1] == "1",
            drifted=tuple(
                path for path in _drifted(values.get("drift", [])) if _plain_relative(path)
            ),
            rewritten=tuple(
                path for path in _drifted(values.get("rewritten", [])) if _plain_relative(path)
            ),
            unseeded=tuple(
                shared_paths[int(index)]
                for index in values.get("unseeded", [])
                if index.isdigit() and int(index) < len(shared_paths)
            ),
            notes=tuple(values.get("note", [])),
            codec=(values.get("codec") or [GZIP])[-1],
        )

    def reuse(
        self,
        name: str,
        copies: Mapping[str, ReuseSource],
        manifest: Manifest,
        *,
        remove: Sequence[str] = (),
    ) -> list[str]:
        """Remove ``remove`` from release ``name``, then copy each file of ``copies`` into it
        from the kept release and path given, on the server: one round trip. Answers the
        paths that could not be used (to be sent instead).

        A copy is ``cp --reflink=auto`` (shared blocks where the file system can, copied on
        write), never a hard link: a later write into one release must not change another.
        Only a finished release other than ``name`` is a source. Each copy then gets the
        manifest's mode and is kept only when it is a regular file with the manifest's
        SHA-256 (``sha256sum`` on the server): a source changed since Slipway wrote it (by
        the release's own commands, a person, the application) or gone is not trusted, and
        its path is answered, to be removed and sent.
        """
        if not is_release_name(name):
            raise InvalidInput("release", f"{name!r} is not a release name")
        sources = sorted({source.release for source in copies.values()})
        if any(not is_release_name(source) or source == name for source in sources):
            raise InvalidInput("release", "a reuse source is not another release's name")
        lists: dict[str, bytes] = {
            "remove": b"".join(b"./" + os.fsencode(path) + b"\0" for path in remove)
        }
        same: dict[str, list[bytes]] = {release: [] for release in sources}
        moved: dict[str, list[bytes]] = {release: [] for release in sources}
        modes: dict[int, list[bytes]] = {}
        for path, source in sorted(copies.items()):
            file = manifest[path]
            if file.kind != "file":
                raise InvalidInput("path", f"{path!r} is not a file of the manifest")
            encoded = b"./" + os.fsencode(path) + b"\0"
            if source.path == path:
                same[source.release].append(encoded)
            else:
                moved[source.release].append(
                    os.fsencode(f"releases/{source.release}/{source.path}\0releases/{name}/{path}")
                    + b"\0"
                )
            modes.setdefault(file.mode & 0o7777, []).append(encoded)
        lists["copied"] = b"".join(b"./" + os.fsencode(path) + b"\0" for path in sorted(copies))
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as archive:
            for list_name, body in lists.items():
                _add_bytes(archive, list_name, body, 0o600)
            for index, release in enumerate(sources):
                _add_bytes(archive, f"from.{index}", b"".join(same[release]), 0o600)
                _add_bytes(archive, f"moved.{index}", b"".join(moved[release]), 0o600)
            for mode, paths in modes.items():
                _add_bytes(archive, f"mode.{mode:o}", b"".join(paths), 0o600)
        new = shlex.quote(f"releases/{name}")
        cp = "cp --reflink=auto -P -p --remove-destination"
        lines = [
            f"lists={shlex.quote(META_DIR)}/reuse.$$",
            'rm -rf -- "$lists"; mkdir -- "$lists"',
            "trap 'rm -rf -- \"$lists\"' EXIT",
            'tar -xzf - -C "$lists"',
            f'(cd -- {new} && xargs -0 -r rm -rf -- < "../../$lists/remove")',
        ]
        for index, release in enumerate(sources):
            quoted = shlex.quote(f"releases/{release}")
            # Same path: one cp for many files. Moved: their folders made as tar would, then
            # one pair at a time.
            lines.append(
                f"if [ -d {quoted} ] && [ ! -L {quoted} ] && [ ! -e {quoted}/{UNFINISHED_MARKER} ]; then\n"
                f"  (cd -- {quoted} && xargs -0 -r {cp} --parents -t ../{shlex.quote(name)} -- "
                f'< "../../$lists/from.{index}" 2>/dev/null) || :\n'
                f'  xargs -0 -r -n 2 sh -c \'mkdir -p -- "$(dirname -- "$2")" && {cp} -- "$1" "$2" '
                f'2>/dev/null || :\' sh < "$lists/moved.{index}"\n'
                "fi"
            )
        # Only regular files are changed and hashed (find -P does not follow a link, and
        # chmod would): what is missing or not a file is left out of the answer, so it is sent.
        for mode in modes:
            lines.append(
                f'(cd -- {new} && xargs -0 -r sh -c \'find "$@" -maxdepth 0 -type f -exec '
                f'chmod {mode:o} -- {{}} +\' sh < "../../$lists/mode.{mode:o}" 2>/dev/null) || :'
            )
        lines.append(
            f'(cd -- {new} && xargs -0 -r sh -c \'find "$@" -maxdepth 0 -type f -exec '
            "sha256sum -- {} +' sh < \"../../$lists/copied\" 2>/dev/null) | sed 's/^/sum=/' || :"
        )
        out = self._script(f"cd -- {self.q}\n" + "\n".join(lines) + "\n", stdin=buffer.getvalue())
        verified: set[str] = set()
        for line in out.splitlines():
            if not line.startswith("sum="):
                continue
            digest, _, shown = line.removeprefix("sum=").partition("  ")
            path = shown.removeprefix("./")
            expected = manifest.get(path)
            if expected is not None and path in copies and expected.digest == digest:
                verified.add(path)
        return sorted(set(copies) - verified)

    def upload(
        self,
        name: str,
        chunks: Iterable[bytes] | None,
        *,
        remove: Sequence[str] = (),
        on_line: LineCallback | None = None,
        codec: str = GZIP,
    ) -> None:
        """Remove ``remove`` from the release, then unpack a gzipped tar stream into it.

        The removal list travels base64-encoded inside the command (NUL-separated paths can
        hold any character); a list too long for one argument is removed in its own trip.
        """
        target = shlex.quote(self.release_path(name))
        payload = b"".join(b"./" + os.fsencode(path) + b"\0" for path in remove)
        encoded = base64.b64encode(payload).decode()
        removal = ""
        if payload and len(encoded) < _MAX_INLINE_ARGUMENT:
            removal = f"printf %s {shlex.quote(encoded)} | base64 -d | xargs -0 -r rm -rf -- && "
        elif payload:
            self._script(f"cd -- {target}\nxargs -0 -r rm -rf --\n", stdin=payload)
        if chunks is None:
            if removal:
                self._script(f"cd -- {target}\n{removal}:\n")
            return
        script = f"cd -- {target} && {removal}tar {TAR_FLAGS[codec]} --no-same-owner"
        result = self.connection.run_streaming_stdin(
            "sh -c " + shlex.quote(script), chunks, on_line=on_line or self.on_line, check=False
        )
        self._raise_for(result.exit_code, "", result.stderr, result.tail, check=True)

    def finish(
        self,
        name: str,
        *,
        files: Mapping[str, FileToWrite],
        manifest_json: bytes,
        shared_paths: Sequence[str] = (),
        file_mode: str = "",
        directory_mode: str = "",
        then_switch: bool = False,
        keep: int | None = None,
        protect: Sequence[str] = (),
        unlock_owner: str = "",
    ) -> Cleaned:
        """Write config files (each with its own mode and group: the server's ``file_mode``
        does not apply to them) and the manifest, link shared paths (seeding ``shared/``
        from the release where it lacks one), apply permissions and record the listing that
        the next deployment compares against, and the paths written here (config files,
        shared links) that the next one drops: one round trip.

        With ``then_switch`` (nothing is to run in the release before it goes live), the
        same trip then does what ``switch_and_clean_up`` does (``keep``, ``protect``,
        ``unlock_owner`` as there): a failure of the finishing stops the script before
        ``current`` is touched."""
        managed = [*files, *(validate_relative_path(p, "shared_paths") for p in shared_paths)]
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as archive:
            for path, config in files.items():
                mode = int(_mode(config.mode, "mode"), 8) & 0o7777
                _add_bytes(archive, f"releases/{name}/{path}", config.body, mode)
            _add_bytes(archive, f"{MANIFEST_DIR}/{name}.json", manifest_json, 0o600)
            _add_bytes(
                archive,
                f"{MANIFEST_DIR}/{name}.managed",
                "".join(f"{path}\n" for path in managed).encode(),
                0o600,
            )
        script = self._finish_script(
            name,
            shared_paths=shared_paths,
            file_mode=file_mode,
            directory_mode=directory_mode,
            config_paths=list(files),
            config_files=files,
        )
        pieces = [script]
        if then_switch:
            pieces.append(self._switch_script(name))
            if keep is not None:
                pieces.append(self._clean_up_script(keep=keep, protect=[name, *protect]))
            if unlock_owner:
                pieces.append(self._unlock_script(unlock_owner))
        values = self._run(*pieces, stdin=buffer.getvalue())
        return Cleaned(removed=values.get("removed", []))

    def switch_and_clean_up(
        self,
        name: str,
        *,
        keep: int | None = None,
        protect: Sequence[str] = (),
        unlock_owner: str = "",
        settle: bool = True,
    ) -> Cleaned:
        """Record the release as the before-switch commands left it (the baseline for drift,
        see the module docstring), point ``current`` at it (a new link under a temporary
        name, renamed over ``current``: at no instant is it missing or dangling), then
        optionally remove old releases and release the lock. ``settle=False`` when nothing
        ran in the release since ``finish`` recorded it (no before-switch commands or
        checks): recording it again would only walk it once more."""
        pieces = [self._settle_script(name)] if settle else []
        pieces.append(self._switch_script(name))
        if keep is not None:
            pieces.append(self._clean_up_script(keep=keep, protect=[name, *protect]))
        if unlock_owner:
            pieces.append(self._unlock_script(unlock_owner))
        values = self._run(*pieces)
        return Cleaned(removed=values.get("removed", []))

    # -- single steps

    def discard(self, name: str, *, unlock_owner: str = "") -> None:
        """Remove an unfinished release (never a finished one) and release the lock."""
        release = shlex.quote(f"releases/{name}")
        pieces = [
            f"if [ -e {release}/{UNFINISHED_MARKER} ]; then rm -rf -- {release} "
            f"{_meta_files(name)}; fi\n"
            # A copy of the live release cut short (a full disk) takes room: gone too.
            f"rm -rf -- {release}.tmp\n"
        ]
        if unlock_owner:
            pieces.append(self._unlock_script(unlock_owner))
        self._run(*pieces)

    def lock(
        self,
        *,
        holder: str,
        owner_id: str,
        stale_after: int,
        take_over_from: str = "",
        stop_groups: bool = True,
    ) -> tuple[str, ...]:
        """Take the lock (see ``_lock_script``); the notes say what was taken over or broken.
        Raises LockHeld (its ``owner`` set when the lock names one)."""
        out = self._script(
            self._enter_script()
            + self._lock_script(
                holder=holder,
                owner_id=owner_id,
                stale_after=stale_after,
                take_over_from=take_over_from,
                stop_groups=stop_groups,
            )
        )
        return tuple(
            line.removeprefix("note=") for line in out.splitlines() if line.startswith("note=")
        )

    def lock_for_rollback(
        self,
        name: str,
        *,
        holder: str,
        owner_id: str,
        stale_after: int,
        take_over_from: str = "",
    ) -> tuple[tuple[str, ...], str | None]:
        """Take the lock (see ``lock``), then check that release ``name`` is on the server and
        finished, and read which release is live: one round trip. Answers the lock's notes
        and the live release (None without a ``current``).

        Raises LockHeld (the lock is not taken), or ReleaseMissing once the lock is taken
        (the caller releases it)."""
        if not is_release_name(name):
            raise InvalidInput("release", f"{name!r} is not a release name")
        out = self._script(
            self._enter_script()
            + self._lock_script(
                holder=holder,
                owner_id=owner_id,
                stale_after=stale_after,
                take_over_from=take_over_from,
            )
            + self._check_release_script(name)
            + 'if [ -L current ]; then echo "live=$(basename "$(readlink current)")"; fi\n'
        )
        lines = out.splitlines()
        notes = tuple(line.removeprefix("note=") for line in lines if line.startswith("note="))
        live = next((line.removeprefix("live=") for line in lines if line.startswith("live=")), "")
        return notes, live or None

    def read_lock(self) -> LockInfo | None:
        """Who holds the deploy path's lock; None when it is not locked."""
        lock = shlex.quote(LOCK_DIR)
        out = self._script(
            f"cd -- {self.q} 2>/dev/null || exit 0\n"
            f"if [ -d {lock} ]; then\n"
            "  echo locked=1\n"
            f"  sed -n 's/^owner=/owner=/p; s/^holder=/holder=/p; s/^since=/since=/p' {lock}/info 2>/dev/null || :\n"
            f"  echo age=$(( $(date +%s) - $(stat -c %Y {lock}/info 2>/dev/null || stat -c %Y {lock}) ))\n"
            "fi\n",
            timeout=_DF_TIMEOUT_SECONDS,
        )
        values: dict[str, str] = {}
        for line in out.splitlines():
            key, sep, value = line.partition("=")
            if sep and key not in values:
                values[key] = value
        if values.get("locked") != "1":
            return None
        age = values.get("age", "0").lstrip("-")
        return LockInfo(
            owner=values.get("owner", ""),
            holder=values.get("holder", ""),
            since=values.get("since", ""),
            age_seconds=int(age) if age.isdigit() else 0,
        )

    def break_lock(self, *, owner_id: str) -> bool:
        """Remove the lock if its owner is still ``owner_id`` ("" for a lock that names
        none): a lock taken again since it was read is left alone. What its commands left
        running is killed first; LockHeld (naming the process group) when that will not go.
        True when removed."""
        out = self._script(
            f"cd -- {self.q} 2>/dev/null || exit 0\n" + self._break_lock_script(owner_id),
            timeout=_DF_TIMEOUT_SECONDS,
        )
        return "broken=1" in out.splitlines()

    def check_deploy_path(self, *, timeout: float = 600) -> None:
        """Make the deploy path if it is missing, then refuse it (UnsafeDeployPath, naming the
        host, the path, what is wrong and the command that fixes it) when it is unsafe, or
        (CommandFailed / PermissionDenied) when the login user cannot write to it."""
        self._script(
            self._enter_script() + "test -w . || { echo 'not writable' >&2; exit 1; }\n",
            timeout=timeout,
        )

    def unlock(self, *, owner_id: str) -> None:
        self._script(f"cd -- {self.q} 2>/dev/null || exit 0\n" + self._unlock_script(owner_id))

    def settle(self, name: str) -> None:
        """Record release ``name`` as the commands that just ran left it: the baseline for
        drift (a rollback's after-switch commands change the release it puts live)."""
        self._run(self._settle_script(name))

    def switch(self, name: str) -> None:
        self._run(self._switch_script(name))

    def check_release(self, name: str) -> None:
        """Refuse, with a clear error, a release that is gone or was never finished."""
        self._run(self._check_release_script(name))

    def clean_up(
        self,
        *,
        keep: int,
        protect: Sequence[str] = (),
        unlock_owner: str = "",
        settle: str = "",
    ) -> Cleaned:
        """Leave ``keep`` finished releases on disk in all: those in ``protect`` (the live one,
        and the one a rollback would go back to), never removed, then the newest others;
        drop unfinished leftovers. ``keep`` below the number protected keeps the protected.
        With ``settle`` (a release name), first record that release as its after-switch
        commands left it (the baseline for drift)."""
        pieces = [self._settle_script(settle)] if settle else []
        pieces.append(self._clean_up_script(keep=keep, protect=protect))
        if unlock_owner:
            pieces.append(self._unlock_script(unlock_owner))
        return Cleaned(removed=self._run(*pieces).get("removed", []))

    def inspect(self) -> LiveState:
        """Read where ``current`` points and whether that release is complete: one round
        trip that writes nothing (it may run while another deployment holds the lock)."""
        out = self._script(
            f"cd -- {self.q} 2>/dev/null || exit 0\n"
            "if [ -L current ]; then\n"
            '  name=$(basename "$(readlink current)"); echo "current=$name"\n'
            f'  if [ -d "releases/$name" ] && [ ! -e "releases/$name/{UNFINISHED_MARKER}" ]; then '
            "echo complete=1; fi\n"
            "fi\n"
        )
        values = dict(line.partition("=")[::2] for line in out.splitlines() if "=" in line)
        return LiveState(current=values.get("current") or None, complete="complete" in values)

    def live_release(self) -> str | None:
        out = self._script(
            f"cd -- {self.q} 2>/dev/null || exit 0\n"
            'if [ -L current ]; then basename "$(readlink current)"; fi\n'
        )
        return out.strip() or None


def _parents(paths: Sequence[str]) -> list[str]:
    """The folders above ``paths`` (relative, checked), deepest first."""
    found: set[str] = set()
    for path in paths:
        parts = path.split("/")
        found.update("/".join(parts[:end]) for end in range(1, len(parts)))
    return sorted(found, key=lambda folder: (-folder.count("/"), folder))


def _no_symlinked_parents(name: str, paths: Sequence[str]) -> str:
    """Shell: stop (exit 78) when a folder above one of ``paths`` in the release is a symlink."""
    parents: set[str] = set()
    for path in paths:
        parts = validate_relative_path(path, "path").split("/")
        parents.update("/".join(parts[:end]) for end in range(1, len(parts)))
    checks = []
    for parent in sorted(parents):
        quoted = shlex.quote(f"releases/{name}/{parent}")
        message = shlex.quote(
            f"{parent} is a symbolic link in the release: Slipway will not write a config file "
            "or a shared link through it"
        )
        checks.append(
            f"if [ -L {quoted} ]; then echo {message} >&2; exit {EXIT_SYMLINKED_PARENT}; fi"
        )
    return "\n".join(checks)


def _mode(value: str, field: str) -> str:
    if not re.fullmatch(r"[0-7]{3,4}", value):
        raise InvalidInput(field, f"{value!r} is not an octal mode such as 644 or 755")
    return value


def _add_bytes(archive: tarfile.TarFile, path: str, body: bytes, mode: int) -> None:
    info = tarfile.TarInfo(path)
    info.size = len(body)
    info.mode = mode
    info.mtime = int(time.time())
    archive.addfile(info, io.BytesIO(body))
