"""The release layout on a server, driven over one SSH connection.

    <deploy_path>/
      releases/<name>/          one directory per release; <name> sorts by time, ends in the short SHA
      releases/<name>/.slipway-unfinished   present until the release is complete
      shared/                   linked into every release (storage/, .env, ...)
      current -> releases/<name>
      .slipway/lock/            held while a deployment works here (who, which, since when)
      .slipway/manifests/<name>.json   the manifest of each release

Every path that reaches the remote shell is passed through ``shlex.quote``; file lists travel
on stdin, NUL-separated, never on a command line.
"""

from __future__ import annotations

import io
import json
import posixpath
import re
import shlex
import tarfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from builds.engine.errors import (
    CommandFailed,
    CurrentIsDirectory,
    InvalidInput,
    LockHeld,
    ReleaseMissing,
)
from builds.engine.ssh import Connection, LineCallback, classify_command_failure

UNFINISHED_MARKER = ".slipway-unfinished"
META_DIR = ".slipway"
LOCK_DIR = f"{META_DIR}/lock"
MANIFEST_DIR = f"{META_DIR}/manifests"

# Exit codes of our remote scripts, so the caller can tell our refusals from a shell error.
EXIT_LOCK_HELD = 75
EXIT_CURRENT_IS_DIR = 76
EXIT_RELEASE_MISSING = 77

_DEPLOY_PATH_CHARS = re.compile(r"^/[A-Za-z0-9._/@+~ -]*$")
_RELEASE_NAME = re.compile(r"^[0-9]{8}-[0-9]{9}-[0-9a-f]{7,40}$")
_RELATIVE_PATH_CHARS = re.compile(r"^[^\x00-\x1f\x7f]+$")


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


def release_name(revision: str, when: float | None = None) -> str:
    """``YYYYMMDD-HHMMSSmmm-<short sha>``: sorts by time (UTC, to the millisecond)."""
    moment = when if when is not None else time.time()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(moment))
    return f"{stamp}{int(moment * 1000) % 1000:03d}-{revision[:7]}"


def is_release_name(name: str) -> bool:
    return bool(_RELEASE_NAME.match(name))


@dataclass(frozen=True)
class Prepared:
    """The state found on the server when a new release was started."""

    live: str | None
    #: True when the new release began as a copy of the live one (send only the changes).
    copied: bool
    #: Paths of the copy that differ from the live release as Slipway left it (a command or a
    #: person changed them since): they must be sent again or removed.
    drifted: tuple[str, ...] = ()


@dataclass(frozen=True)
class Cleaned:
    removed: list[str]
    kept: list[str]


def _stat_listing(directory: str) -> str:
    """Shell: one sorted line per file and symlink under ``directory``: path, size, mtime, mode."""
    return (
        f"(cd -- {directory} && find . -path ./{UNFINISHED_MARKER} -prune -o \\( -type f -o -type l \\) "
        "-printf '%P\\t%s\\t%T@\\t%m\\n' | LC_ALL=C sort)"
    )


def _quoted(*parts: str) -> str:
    return " ".join(shlex.quote(part) for part in parts)


class RemoteLayout:
    """Operations on one server's deploy path, over an open connection."""

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

    @property
    def shared_path(self) -> str:
        return posixpath.join(self.deploy_path, "shared")

    @property
    def current_path(self) -> str:
        return posixpath.join(self.deploy_path, "current")

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
        if result.exit_code == EXIT_LOCK_HELD:
            described = result.stdout.strip()
            owner = ""
            if described.startswith("owner="):
                owner, _, described = described.partition(" ")
                owner = owner.removeprefix("owner=")
            error = LockHeld(
                f"{self.deploy_path} on {self.connection.endpoint.address} is locked by another "
                f"deployment: {described or 'holder unknown'}. If nothing is deploying, "
                f"remove {posixpath.join(self.deploy_path, LOCK_DIR)}."
            )
            error.owner = owner
            raise error
        if result.exit_code == EXIT_CURRENT_IS_DIR:
            raise CurrentIsDirectory(
                f"{self.current_path} on {self.connection.endpoint.address} is a real directory, not a "
                "symlink. Slipway will not replace it: move it aside (for example into releases/) first."
            )
        if result.exit_code == EXIT_RELEASE_MISSING:
            raise ReleaseMissing(result.stdout.strip() or "The release is no longer on the server")
        if check and result.exit_code != 0:
            raise classify_command_failure(
                CommandFailed("(Slipway's release script)", result.exit_code, list(result.tail)),
                result.stderr.splitlines(),
                self.connection.endpoint.address,
            )
        return result.stdout

    # -- lock

    def lock(
        self, *, holder: str, owner_id: str, stale_after: int, take_over_from: str = ""
    ) -> None:
        """Take the deploy path's lock (mkdir is atomic), or say who holds it.

        A lock older than ``stale_after`` seconds is taken over; a lock held by the same owner
        (the same deployment retried) is kept.
        """
        info = f"owner={owner_id}\nholder={holder}\nsince={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n"
        lock = shlex.quote(LOCK_DIR)
        self._script(
            f"""mkdir -p -- {self.q}
cd -- {self.q}
mkdir -p {shlex.quote(META_DIR)}
take() {{ printf '%s' {shlex.quote(info)} > {lock}/info; }}
if mkdir {lock} 2>/dev/null; then take; exit 0; fi
if grep -qx {shlex.quote("owner=" + owner_id)} {lock}/info 2>/dev/null; then take; exit 0; fi
if [ -n {shlex.quote(take_over_from)} ] && grep -qx {shlex.quote("owner=" + take_over_from)} {lock}/info 2>/dev/null; then
  take; echo "took over the lock of {take_over_from}, which has finished"; exit 0; fi
age=$(( $(date +%s) - $(stat -c %Y {lock} 2>/dev/null || date +%s) ))
if [ "$age" -gt {int(stale_after)} ]; then rm -rf {lock}; mkdir {lock}; take; echo "took over a stale lock"; exit 0; fi
sed -n 's/^owner=/owner=/p; s/^holder=//p; s/^since=/since /p' {lock}/info 2>/dev/null | tr '\\n' ' '
exit {EXIT_LOCK_HELD}
"""
        )

    def unlock(self, *, owner_id: str) -> None:
        lock = shlex.quote(LOCK_DIR)
        self._script(
            f"""cd -- {self.q} 2>/dev/null || exit 0
if grep -qx {shlex.quote("owner=" + owner_id)} {lock}/info 2>/dev/null; then rm -rf {lock}; fi
"""
        )

    # -- a new release

    def prepare(self, name: str, *, expected_live: str | None, incremental: bool) -> Prepared:
        """Create ``releases/<name>`` marked unfinished.

        When the live release is the one the caller's change set was computed against, the
        new release starts as a full copy of it (a copy, not hard links: a command that writes
        into the new release must not change an old one); otherwise it starts empty and the
        caller sends everything.
        """
        if not is_release_name(name):
            raise InvalidInput("release", f"{name!r} is not a release name")
        new = shlex.quote(f"releases/{name}")
        expected = shlex.quote(expected_live or "")
        out = self._script(
            f"""cd -- {self.q}
mkdir -p releases shared {shlex.quote(MANIFEST_DIR)}
live=""
if [ -L current ]; then live=$(basename "$(readlink current)");
elif [ -e current ]; then exit {EXIT_CURRENT_IS_DIR}; fi
echo "live=$live"
if [ -n "$live" ] && [ "$live" = {shlex.quote(name)} ]; then echo "release {name} is live" >&2; exit 1; fi
if [ -d {new} ] && [ ! -e {new}/{UNFINISHED_MARKER} ]; then echo "release {name} exists already" >&2; exit 1; fi
rm -rf -- {new} {new}.tmp
if [ {int(incremental)} = 1 ] && [ -n "$live" ] && [ "$live" = {expected} ] && [ -d "releases/$live" ] \
   && [ ! -e "releases/$live/{UNFINISHED_MARKER}" ]; then
  cp -a --reflink=auto -- "releases/$live" {new}.tmp
  mv -- {new}.tmp {new}
  echo copied=1
  # What changed in the live release after Slipway finished writing it (commands, people):
  # compare the copy with the listing taken when the live release was made.
  if [ -f "{MANIFEST_DIR}/$live.stat" ]; then
    {_stat_listing(new)} | LC_ALL=C comm -3 "{MANIFEST_DIR}/$live.stat" - | sed 's/^\t//' | cut -f1 | LC_ALL=C sort -u | sed 's/^/drift=/'
  else
    echo nostat=1
  fi
else
  mkdir -- {new}
  echo copied=0
fi
: > {new}/{UNFINISHED_MARKER}
"""
        )
        values: dict[str, str] = {}
        drifted: list[str] = []
        for line in out.splitlines():
            key, _, value = line.partition("=")
            if key == "drift":
                drifted.append(value)
            else:
                values[key] = value
        if values.get("nostat") == "1":
            # Without the listing the copy cannot be trusted to equal the live manifest.
            self._script(
                f"cd -- {self.q}\nrm -rf -- {new}\nmkdir -- {new}\n: > {new}/{UNFINISHED_MARKER}\n"
            )
            values["copied"] = "0"
        return Prepared(
            live=values.get("live") or None,
            copied=values.get("copied") == "1",
            drifted=tuple(drifted),
        )

    def snapshot(self, name: str) -> None:
        """Record the release's files as Slipway leaves them, before any command runs."""
        release = shlex.quote(f"releases/{name}")
        listing = shlex.quote(f"{MANIFEST_DIR}/{name}.stat")
        self._script(
            f"cd -- {self.q}\n{_stat_listing(release)} > {listing}.tmp\nmv -- {listing}.tmp {listing}\n"
        )

    def remove_paths(self, name: str, paths: Iterable[str]) -> None:
        """Delete paths inside a release (NUL-separated on stdin, never as arguments)."""
        payload = b"".join(b"./" + path.encode() + b"\0" for path in paths)
        if not payload:
            return
        self._script(
            f"cd -- {shlex.quote(self.release_path(name))}\nxargs -0 rm -rf --\n",
            stdin=payload,
        )

    def upload(
        self, name: str, chunks: Iterable[bytes], *, on_line: LineCallback | None = None
    ) -> None:
        """Unpack a gzipped tar stream into the release over one channel."""
        target = shlex.quote(self.release_path(name))
        self.connection.run_streaming_stdin(
            f"tar -xzpf - --no-same-owner -C {target}", chunks, on_line=on_line or self.on_line
        )

    def write_files(self, name: str, files: dict[str, bytes], manifest_json: bytes | None) -> None:
        """Write config files into the release and its manifest beside it, in one round trip."""
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as archive:
            for path, body in files.items():
                _add_bytes(archive, f"releases/{name}/{path}", body, 0o644)
            if manifest_json is not None:
                _add_bytes(archive, f"{MANIFEST_DIR}/{name}.json", manifest_json, 0o600)
        self._script(f"cd -- {self.q}\ntar -xzpf - --no-same-owner\n", stdin=buffer.getvalue())

    def link_shared(self, name: str, shared_paths: Sequence[str]) -> None:
        """Link each shared path from shared/ into the release, seeding shared/ on first use."""
        lines = [f"cd -- {self.q}"]
        for raw in shared_paths:
            is_dir = raw.strip().endswith("/")
            path = validate_relative_path(raw, "shared_paths")
            in_release = shlex.quote(f"releases/{name}/{path}")
            in_shared = shlex.quote(f"shared/{path}")
            depth = 2 + path.count("/")
            target = shlex.quote("../" * depth + f"shared/{path}")
            seed = (
                f"mkdir -p -- {in_shared}"
                if is_dir
                else f'mkdir -p -- "$(dirname {in_shared})"; : > {in_shared}'
            )
            lines.append(
                f"""if [ ! -e {in_shared} ] && [ ! -L {in_shared} ]; then
  mkdir -p -- "$(dirname {in_shared})"
  if [ -e {in_release} ] && [ ! -L {in_release} ]; then cp -a -- {in_release} {in_shared}; else {seed}; fi
fi
mkdir -p -- "$(dirname {in_release})"
rm -rf -- {in_release}
ln -s -- {target} {in_release}"""
            )
        if len(lines) > 1:
            self._script("\n".join(lines) + "\n")

    def apply_permissions(self, name: str, *, file_mode: str, directory_mode: str) -> None:
        release = shlex.quote(self.release_path(name))
        lines = []
        if file_mode:
            mode = _mode(file_mode, "file_mode")
            lines.append(
                f"find {release} -type f ! -name {UNFINISHED_MARKER} ! -perm {mode} -exec chmod {mode} {{}} +"
            )
        if directory_mode:
            mode = _mode(directory_mode, "directory_mode")
            lines.append(f"find {release} -type d ! -perm {mode} -exec chmod {mode} {{}} +")
        if lines:
            self._script("\n".join(lines) + "\n")

    # -- switching

    def switch(self, name: str) -> None:
        """Point ``current`` at the release: a new link under a temporary name, renamed over
        ``current``, so that at no instant is ``current`` missing or dangling."""
        release = shlex.quote(f"releases/{name}")
        self._script(
            f"""cd -- {self.q}
if [ ! -d {release} ]; then echo {shlex.quote(f"Release {name} is no longer on the server")}; exit {EXIT_RELEASE_MISSING}; fi
if [ -e current ] && [ ! -L current ]; then exit {EXIT_CURRENT_IS_DIR}; fi
rm -f -- {release}/{UNFINISHED_MARKER}
tmp=".current.$$.tmp"
rm -f -- "$tmp"
ln -s -- {release} "$tmp"
if mv -T -- "$tmp" current 2>/dev/null; then :
elif command -v python3 >/dev/null 2>&1; then python3 -c 'import os, sys; os.replace(sys.argv[1], sys.argv[2])' "$tmp" current
else perl -e 'rename($ARGV[0], $ARGV[1]) or die "rename: $!\\n"' "$tmp" current; fi
"""
        )

    def check_release(self, name: str) -> None:
        """Refuse, with a clear error, a release that is gone or was never finished."""
        release = shlex.quote(f"releases/{name}")
        self._script(
            f"""cd -- {self.q}
if [ ! -d {release} ]; then echo {shlex.quote(f"Release {name} is no longer on the server")}; exit {EXIT_RELEASE_MISSING}; fi
if [ -e {release}/{UNFINISHED_MARKER} ]; then echo {shlex.quote(f"Release {name} was never finished")}; exit {EXIT_RELEASE_MISSING}; fi
"""
        )

    def live_release(self) -> str | None:
        out = self._script(
            f"cd -- {self.q} 2>/dev/null || exit 0\n"
            'if [ -L current ]; then basename "$(readlink current)"; fi\n'
        )
        return out.strip() or None

    def read_manifest(self, name: str) -> bytes | None:
        path = shlex.quote(f"{MANIFEST_DIR}/{name}.json")
        result = self.connection.run(f"cat -- {self.q}/{path}", check=False)
        if result.exit_code != 0:
            return None
        return result.stdout.encode()

    def releases(self) -> list[tuple[str, bool]]:
        """(name, finished) of each release directory, oldest first."""
        out = self._script(
            f"""cd -- {self.q}/releases 2>/dev/null || exit 0
for d in */; do d=${{d%/}}; [ -d "$d" ] || continue
  if [ -e "$d/{UNFINISHED_MARKER}" ]; then echo "$d 0"; else echo "$d 1"; fi; done
"""
        )
        found = []
        for line in out.splitlines():
            name, _, finished = line.rpartition(" ")
            if is_release_name(name):
                found.append((name, finished == "1"))
        return sorted(found)

    def clean_up(
        self, *, keep: int, live: str, protect: Sequence[str] = (), remove_unfinished: bool = True
    ) -> Cleaned:
        """Keep the newest ``keep`` finished releases; never remove the live one or those in
        ``protect`` (the one a rollback would go back to); drop unfinished leftovers."""
        keep = max(keep, 1)
        releases = self.releases()
        protected = {live, *protect}
        finished = [name for name, done in releases if done]
        newest = set(finished[-keep:])
        doomed = [
            name
            for name, done in releases
            if name not in protected
            and ((not done and remove_unfinished) or (done and name not in newest))
        ]
        if doomed:
            quoted = " ".join(
                _quoted(
                    f"releases/{name}", f"{MANIFEST_DIR}/{name}.json", f"{MANIFEST_DIR}/{name}.stat"
                )
                for name in doomed
            )
            self._script(f"cd -- {self.q}\nrm -rf -- {quoted}\n")
        kept = [name for name, _ in releases if name not in doomed]
        return Cleaned(removed=doomed, kept=kept)


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


def manifest_json_for_server(data: dict[str, object]) -> bytes:
    return json.dumps(data, separators=(",", ":"), sort_keys=True).encode()
