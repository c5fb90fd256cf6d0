"""Drift: what differs between a server's live release and the manifest Slipway deployed.

``check_release`` reads the release ``current`` points at over one SSH command and compares
every file and symlink in it with the release's manifest (``manifest.Manifest``: SHA-256 of
each file's content, of each symlink's target). The server hashes the files itself
(``sha256sum``, GNU coreutils, the same digest the manifest holds) and sends back a stream
of NUL-separated records, base64-encoded in lines of 76 characters (each line decodes on its
own: 57 bytes), read and compared as it arrives: the worker never holds the whole answer.

What Slipway itself writes beside the build is not drift: config files and shared links
(``.slipway/manifests/<name>.managed``), and paths the deployment's own commands changed
after Slipway wrote the release (``<name>.rewritten``): those are compared with the listing
taken when the deployment left the release (``<name>.stat``: size, mtime, mode), which is how
a deployment tells drift today (``release.RemoteLayout.lock_and_prepare``). Generated paths
(``BuildSpec.generated_paths``) are never drift. Folders are not compared (empty ones
included): only files and symlinks, as the deployment's listing does.

``s3.drift`` does the same for a bucket, from its listing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from builds.engine.errors import CommandFailed, DriftFound, InternalError, ReleaseMissing
from builds.engine.excludes import ExcludeRules
from builds.engine.manifest import Manifest, display_path, is_generated
from builds.engine.release import (
    MANIFEST_DIR,
    UNFINISHED_MARKER,
    _stat_listing,
    validate_deploy_path,
)
from builds.engine.specs import ON_DRIFT_REFUSE
from builds.engine.ssh import TAIL_LINES, Connection, classify_command_failure

ADDED = "added"
CHANGED = "changed"
REMOVED = "removed"

# Markers between the sections of the answer: a relative path never starts with "/".
_MANAGED, _REWRITTEN, _RESTATED, _STATS, _HASHES, _END = (
    b"/M",
    b"/R",
    b"/D",
    b"/S",
    b"/H",
    b"/E",
)
_MARKERS = frozenset({_MANAGED, _REWRITTEN, _RESTATED, _STATS, _HASHES, _END})
#: How many drifted paths a refusal's message names (the rest are counted).
REFUSAL_PATHS_SHOWN = 20
_STAT_FIELDS = 5  # kind, size, mtime, path, link target
_DIGEST_CHARS = 64
#: The longest record (a path, a link target, a digest line) the reader waits for the end of.
_MAX_TOKEN_BYTES = 64 * 1024
DEFAULT_TIMEOUT_SECONDS = 1800.0


@dataclass(frozen=True)
class DriftedFile:
    """One path that differs: ``size`` in bytes and ``mtime`` in epoch seconds as found on
    the server (for a removed path: the manifest's size, and no time)."""

    path: str
    change: str  # ADDED | CHANGED | REMOVED
    size: int
    mtime: float | None = None


@dataclass(frozen=True)
class DriftReport:
    """What a check found on one server: the live release it read and the drifted paths."""

    release: str
    files: tuple[DriftedFile, ...] = ()
    #: Files and symlinks compared (the release's, less what Slipway wrote beside the build).
    checked: int = 0

    @property
    def clean(self) -> bool:
        return not self.files

    def of(self, change: str) -> list[DriftedFile]:
        return [item for item in self.files if item.change == change]

    @property
    def paths(self) -> list[str]:
        return [item.path for item in self.files]

    def summary(self) -> str:
        """ "2 files changed, 1 added, 0 removed" (or "no drift")."""
        if self.clean:
            return "no drift"
        return (
            f"{len(self.of(CHANGED))} files changed, {len(self.of(ADDED))} added, "
            f"{len(self.of(REMOVED))} removed"
        )


@dataclass
class _Found:
    managed: set[str] = field(default_factory=set)
    rewritten: set[str] = field(default_factory=set)
    restated: set[str] = field(default_factory=set)
    #: path -> (kind "f"/"l", size, mtime, symlink target)
    stats: dict[str, tuple[str, int, float, bytes]] = field(default_factory=dict)
    #: path -> whether its content is the manifest's
    same_content: dict[str, bool] = field(default_factory=dict)
    ended: bool = False


class _Reader:
    """Base64 lines in, NUL-terminated tokens out, sorted into ``_Found`` as they come."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.found = _Found()
        self._rest = b""
        self._section = b""
        self._fields: list[bytes] = []
        self.release = ""
        #: ``current`` points outside the deploy path's releases/ (by hand, or an attacker).
        self.outside = False

    def line(self, stream: str, text: str) -> None:
        if stream != "stdout":
            return
        if text.startswith("live="):
            self.release = text.removeprefix("live=")
            return
        if text == "outside=1":
            self.outside = True
            return
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as error:
            raise InternalError(f"Unreadable drift listing line: {error}") from error
        tokens = (self._rest + data).split(b"\0")
        self._rest = tokens.pop()
        if len(self._rest) > _MAX_TOKEN_BYTES:
            # No name or link target is this long (PATH_MAX is 4096): a server answering
            # garbage, which must not grow the worker's memory for the check's whole time.
            raise InternalError("The drift listing holds a record longer than any path")
        for token in tokens:
            self._token(token)

    def _token(self, token: bytes) -> None:
        if token in _MARKERS and not self._fields:
            self._section = token
            self.found.ended = token == _END
            return
        found = self.found
        if self._section in (_MANAGED, _REWRITTEN, _RESTATED):
            if token:
                {_MANAGED: found.managed, _REWRITTEN: found.rewritten, _RESTATED: found.restated}[
                    self._section
                ].add(os.fsdecode(token))
        elif self._section == _STATS:
            self._fields.append(token)
            if len(self._fields) == _STAT_FIELDS:
                kind, size, mtime, raw_path, target = self._fields
                self._fields = []
                found.stats[os.fsdecode(raw_path)] = (
                    kind.decode("ascii", "replace"),
                    int(size),
                    float(mtime),
                    target,
                )
        elif self._section == _HASHES:
            digest = token[:_DIGEST_CHARS].decode("ascii", "replace")
            hashed = os.fsdecode(token[_DIGEST_CHARS + 2 :].removeprefix(b"./"))
            entry = self.manifest.get(hashed)
            found.same_content[hashed] = (
                entry is not None and entry.kind == "file" and entry.digest == digest
            )


def check_release(
    connection: Connection,
    deploy_path: str,
    manifest: Manifest,
    *,
    release: str,
    generated: ExcludeRules | None = None,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    check_cancelled: Callable[[], None] | None = None,
) -> DriftReport:
    """Compare the release ``current`` points at under ``deploy_path`` with ``manifest``
    (the manifest of ``release``, as Slipway recorded it): one command on the server.

    Answers a DriftReport (paths relative to the release, sorted; files of the release that
    cannot be read are reported changed). Raises ReleaseMissing when the server has no live
    release or ``current`` points at another release than ``release`` (the check compares
    one release with its own manifest), InvalidInput for a bad ``deploy_path``, the errors
    of ``Connection.run`` (HostUnreachable, CommandTimedOut after ``timeout`` seconds...),
    CommandFailed (or PermissionDenied / DiskFull) naming the last lines of stderr when the
    listing fails (a folder of the release the login user cannot read), and InternalError
    for an answer cut short.
    """
    root = validate_deploy_path(deploy_path)
    reader = _Reader(manifest)
    display = "Slipway's drift check"
    result = connection.run(
        "sh -c " + shlex.quote(_script(root)),
        on_line=reader.line,
        timeout=timeout,
        check=False,
        check_cancelled=check_cancelled,
        display=display,
    )
    address = connection.endpoint.address
    # The listing runs in a pipeline into base64, whose status is the script's: a listing
    # stopped by an error (`set -e`) shows as a missing end marker, and stderr says why.
    # Only stderr is quoted: stdout is the listing, base64 lines no one can read.
    said = result.stderr.splitlines()[-TAIL_LINES:]
    if result.exit_code != 0 or (reader.release and not reader.found.ended and said):
        raise classify_command_failure(
            CommandFailed(display, result.exit_code or 1, said),
            said,
            address,
            username=connection.endpoint.username,
        )
    if reader.outside:
        raise ReleaseMissing(
            f"`current` on {address} points outside {root}/releases/, not at {release}, the "
            "release Slipway recorded live there: deploy again (or roll back) before checking "
            "for drift"
        )
    live = reader.release
    if not live:
        raise ReleaseMissing(f"{root} on {address} has no live release (no `current` link)")
    if live != release:
        raise ReleaseMissing(
            f"`current` on {address} points at {live}, not at {release}, the release Slipway "
            "recorded live there: deploy again (or roll back) before checking for drift"
        )
    if not reader.found.ended:
        raise InternalError(
            f"The drift listing from {address} was cut short (exit {result.exit_code})"
        )
    return compare(reader.found, manifest, release=live, generated=generated)


def _script(root: str) -> str:
    q = shlex.quote(root)
    inside = shlex.quote(root.rstrip("/") + "/releases/")
    meta = f"../../{MANIFEST_DIR}/$live"
    stat_listing = _stat_listing(".")
    # LC_ALL=C: find's times with a "." whatever the server's locale, names as bytes.
    return f"""set -eu
LC_ALL=C; export LC_ALL
cd -- {q} 2>/dev/null || exit 0
if [ ! -L current ]; then exit 0; fi
target=$(readlink current)
# Only a link into releases/ is a release Slipway made live (as a deployment checks).
case "$target" in
  releases/*/*|releases/.|releases/..|{inside}*/*|{inside}.|{inside}..) echo "outside=1"; exit 0 ;;
  releases/?*|{inside}?*) ;;
  *) echo "outside=1"; exit 0 ;;
esac
live=${{target##*/}}
echo "live=$live"
case "$live" in ''|*[!0-9a-f-]*) exit 0 ;; esac
cd -- "releases/$live" || exit 0
{{
  printf '/M\\0'; if [ -f "{meta}.managed" ]; then tr '\\n' '\\0' < "{meta}.managed"; fi
  printf '/R\\0'; if [ -f "{meta}.rewritten" ]; then tr '\\n' '\\0' < "{meta}.rewritten"; fi
  printf '/D\\0'
  if [ -s "{meta}.rewritten" ] && [ -f "{meta}.stat" ]; then
    {stat_listing} | LC_ALL=C comm -3 "{meta}.stat" - | sed 's/^\\t//' | cut -f1 | LC_ALL=C sort -u | tr '\\n' '\\0'
  fi
  printf '/S\\0'
  find . -path ./{UNFINISHED_MARKER} -prune -o \\( -type f -o -type l \\) -printf '%y\\0%s\\0%T@\\0%P\\0%l\\0'
  printf '/H\\0'
  # An unreadable file is left without a digest (reported changed), not the end of the check.
  find . -path ./{UNFINISHED_MARKER} -prune -o -type f -print0 | xargs -0 -r sha256sum -z -- 2>/dev/null || :
  printf '/E\\0'
}} | base64
"""


def compare(
    found: _Found, manifest: Manifest, *, release: str, generated: ExcludeRules | None
) -> DriftReport:
    """Sort what the server listed into added, changed and removed (see the module docstring)."""
    managed = {path.rstrip("/") for path in found.managed if not path.endswith("/")}

    def ignored(path: str) -> bool:
        if path == UNFINISHED_MARKER or is_generated(path, generated):
            return True
        return any(path == m or path.startswith(m + "/") for m in managed)

    def expected(path: str) -> bool:
        """Changed by the deployment's own commands, and not since it left the release."""
        return path in found.rewritten and path not in found.restated

    files: list[DriftedFile] = []
    checked = 0
    for path, (kind, size, mtime, target) in found.stats.items():
        if ignored(path) or expected(path):
            continue
        checked += 1
        entry = manifest.get(path)
        if entry is None or entry.kind == "dir":
            files.append(DriftedFile(path, ADDED, size, mtime))
        elif path in found.rewritten:  # restated since: changed by hand after its commands
            files.append(DriftedFile(path, CHANGED, size, mtime))
        elif kind == "l":
            same = entry.kind == "symlink" and entry.digest == hashlib.sha256(target).hexdigest()
            if not same:
                files.append(DriftedFile(path, CHANGED, size, mtime))
        elif not (entry.kind == "file" and found.same_content.get(path, False)):
            files.append(DriftedFile(path, CHANGED, size, mtime))
    for path, entry in manifest.items():
        if entry.kind == "dir" or path in found.stats or ignored(path):
            continue
        if path in found.rewritten and path not in found.restated:
            continue  # the deployment's own commands removed it
        files.append(DriftedFile(path, REMOVED, entry.size))
    files.sort(key=lambda item: item.path)
    return DriftReport(release=release, files=tuple(files), checked=checked)


def report_from_listings(
    *,
    release: str,
    now: Iterable[tuple[str, int, str, float | None]],
    recorded: dict[str, tuple[int, str]] | None,
    manifest: Manifest | None,
    ignore: Callable[[str], bool] = lambda path: False,
) -> DriftReport:
    """Drift of a store without a shell (an S3 bucket), from its listing ``now``
    (path, size, ETag, mtime) and the listing recorded when the deployment finished
    (path -> (size, ETag)). Without a recorded listing, the manifest's paths and sizes are
    compared (content cannot be: ETags are not SHA-256)."""
    files: list[DriftedFile] = []
    seen: set[str] = set()
    checked = 0
    for path, size, etag, mtime in now:
        if ignore(path):
            continue
        seen.add(path)
        checked += 1
        if recorded is not None:
            before = recorded.get(path)
            if before is None:
                files.append(DriftedFile(path, ADDED, size, mtime))
            elif before != (size, etag):
                files.append(DriftedFile(path, CHANGED, size, mtime))
        elif manifest is not None:
            entry = manifest.get(path)
            if entry is None or entry.kind != "file":
                files.append(DriftedFile(path, ADDED, size, mtime))
            elif entry.size != size:
                files.append(DriftedFile(path, CHANGED, size, mtime))
    if recorded is not None:
        gone = {path: facts[0] for path, facts in recorded.items() if path not in seen}
    elif manifest is not None:
        gone = {
            path: entry.size
            for path, entry in manifest.items()
            if entry.kind == "file" and path not in seen
        }
    else:
        gone = {}
    files += [DriftedFile(path, REMOVED, size) for path, size in gone.items() if not ignore(path)]
    files.sort(key=lambda item: item.path)
    return DriftReport(release=release, files=tuple(files), checked=checked)


def refuse_drift(on_drift: str, paths: Iterable[str], *, server: str, where: str) -> None:
    """Raise DriftFound naming ``paths`` (the first ``REFUSAL_PATHS_SHOWN``, then a count)
    when ``on_drift`` is ON_DRIFT_REFUSE and there are any; ``where`` says what was changed
    ("the live release", "the bucket"). Called by a deployment before it writes anything
    that replaces the drifted files (rollout.ServerRun.prepare, ftp.deliver, s3.deliver)."""
    found = sorted(paths)
    if on_drift != ON_DRIFT_REFUSE or not found:
        return
    shown = ", ".join(display_path(p) for p in found[:REFUSAL_PATHS_SHOWN])
    more = (
        f" and {len(found) - REFUSAL_PATHS_SHOWN} more" if len(found) > REFUSAL_PATHS_SHOWN else ""
    )
    raise DriftFound(
        f"{server}: {len(found)} paths of {where} were changed on the server since the last "
        f"deployment, and this project refuses to deploy over drift: {shown}{more}. Nothing "
        "was switched. Copy what should be kept into the repository (or shared paths), or "
        "set the project's drift setting to restore, then deploy again."
    )
