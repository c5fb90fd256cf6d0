"""What a build contains, what changed since the last deploy, and the archive that carries it.

A manifest lists every deployable file and symlink of a build with its size, permission bits
and SHA-256, plus the empty folders (so they are created too); other folders are implied by
the paths under them. Comparing the manifest of the release on a server with the new one
gives the change set, and only the added and modified entries travel, as a gzipped tar.

A ``HashCache`` kept beside a persistent workspace lets the next manifest reuse the digest of
every file whose stat data has not changed, instead of reading it again.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import re
import stat
import tarfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from builds.engine.errors import InternalError
from builds.engine.excludes import ExcludeRules, Exclusions

EntryKind = Literal["file", "symlink", "dir"]
ENTRY_KINDS: tuple[EntryKind, ...] = ("file", "symlink", "dir")
MANIFEST_FORMAT_VERSION = 1
HASH_CACHE_FORMAT_VERSION = 1
# A file changed this shortly before a scan may change again within the same timestamp tick
# (a jiffy on most Linux filesystems, up to 2 s on some) without its stat data showing it:
# like git's "racily clean" index entries, its digest is not kept and it is hashed next time.
RACY_WINDOW_NS = 2_000_000_000

_HASH_CHUNK_BYTES = 1024 * 1024
_READ_CHUNK_BYTES = 256 * 1024
TAR_CHUNK_BYTES = 256 * 1024
# Measured on 5,000 files / 53 MB of mixed source, bytecode and shared libraries: level 1
# streams at ~44 MB/s (ratio 0.345), level 3 at ~32 MB/s (0.327), level 6 at ~16 MB/s (0.302).
# zlib itself tops out at ~53 MB/s at level 1 on that machine, so the compressor, not the
# network, is the bottleneck on a LAN or loopback and the cheapest level wins.
DEFAULT_COMPRESSLEVEL = 1
# How to_json writes a path that is not valid UTF-8: {"b64": "<base64 of its bytes>"}.
_BYTES_KEY = "b64"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TAR_BLOCK = tarfile.BLOCKSIZE
_TAR_RECORD = tarfile.RECORDSIZE


@dataclass(frozen=True, slots=True)
class Entry:
    """One path of a build. ``digest`` hashes the content (files) or the link target."""

    path: str
    kind: EntryKind
    size: int
    mode: int
    digest: str

    @property
    def is_dir(self) -> bool:
        return self.kind == "dir"


class Manifest(Mapping[str, Entry]):
    """Path -> Entry for one build, paths relative to the build root with ``/``."""

    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        self._entries: dict[str, Entry] = {
            entry.path: entry for entry in sorted(entries, key=lambda entry: entry.path)
        }
        # to_json's answer, made once: every server of a deployment writes the same manifest
        # beside its release, and the database records it once per server.
        self._json: bytes | None = None

    def __getitem__(self, path: str) -> Entry:
        return self._entries[path]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"<Manifest {len(self)} entries, {self.total_bytes} bytes>"

    @property
    def total_bytes(self) -> int:
        """Bytes of file content in the build."""
        return sum(entry.size for entry in self._entries.values() if entry.kind == "file")

    def implied_dirs(self) -> set[str]:
        """Every folder that holds an entry (the parents of each path)."""
        return _parents_of(self._entries)

    @classmethod
    def build(
        cls,
        root: Path,
        rules: ExcludeRules | None = None,
        *,
        cache: HashCache | None = None,
        exclusions: Exclusions | None = None,
    ) -> Manifest:
        """Walk ``root`` (never following symlinks) and hash what the rules let through.

        With ``rules=None`` nothing is excluded, not even ``.deployignore``. With a ``cache``,
        a file whose size, mtime, ctime and inode are those recorded reuses its recorded
        digest; the cache is then left holding exactly the files of this manifest. With
        ``exclusions``, each path a rule left out is recorded there under that rule (the
        topmost one only: what lies in an excluded folder is not counted again).
        """
        return cls(_walk(root, rules, cache, exclusions))

    def to_json(self) -> bytes:
        """Compact, sorted, stable JSON, valid Unicode whatever the file names are.

        A path that is not UTF-8 (``caf\\xe9.txt`` in Latin-1; in Python a str holding
        surrogate escapes) is written ``{"b64": <base64 of its bytes>}`` instead of a string:
        PostgreSQL's jsonb, where releases keep their manifest, refuses lone surrogates.
        Made once per manifest (a manifest does not change).
        """
        if self._json is not None:
            return self._json
        document = {
            "version": MANIFEST_FORMAT_VERSION,
            "fields": ["path", "kind", "size", "mode", "digest"],
            "entries": [
                [_path_to_json(entry.path), entry.kind, entry.size, entry.mode, entry.digest]
                for entry in self._entries.values()
            ],
        }
        self._json = json.dumps(document, separators=(",", ":"), ensure_ascii=True).encode("ascii")
        return self._json

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        try:
            document = json.loads(data)
        except ValueError as error:
            raise InternalError(f"Unreadable manifest: {error}") from error
        return cls.from_document(document)

    @classmethod
    def from_document(cls, document: object) -> Manifest:
        """The manifest ``to_json`` wrote, already parsed (a database's JSON column);
        InternalError when it is not one."""
        if not isinstance(document, dict):
            raise InternalError("Unsupported manifest format (version None).")
        version = document.get("version")
        entries = document.get("entries")
        if version != MANIFEST_FORMAT_VERSION or not isinstance(entries, list):
            raise InternalError(f"Unsupported manifest format (version {version!r}).")
        return cls(_entry_from_row(row) for row in entries)


def display_path(path: str) -> str:
    """``path`` as text any page, log line or database column can hold.

    File names are bytes; the engine keeps them as str with surrogate escapes
    (``os.fsdecode``). A byte that is not part of valid UTF-8 is shown as ``\\xe9``, a
    control character as its ``\\n`` / ``\\t`` / ``\\x1b`` escape; everything else,
    backslashes included, is kept. For display only: two names may look alike here.
    """
    try:
        raw = os.fsencode(path)
    except UnicodeEncodeError:
        raw = path.encode("utf-8", "backslashreplace")
    text = raw.decode("utf-8", "backslashreplace")
    if not _CONTROL.search(text):
        return text
    return _CONTROL.sub(lambda match: _escape_control(match.group()), text)


def _escape_control(character: str) -> str:
    named = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}
    return named.get(character, f"\\x{ord(character):02x}")


def _path_to_json(path: str) -> str | dict[str, str]:
    raw = os.fsencode(path)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return {_BYTES_KEY: base64.b64encode(raw).decode("ascii")}
    return path


def _path_from_json(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and set(value) == {_BYTES_KEY}:
        try:
            return os.fsdecode(base64.b64decode(value[_BYTES_KEY], validate=True))
        except (TypeError, ValueError):
            return None
    return None


def _entry_from_row(row: object) -> Entry:
    if not isinstance(row, list) or len(row) != 5:
        raise InternalError(f"Malformed manifest entry: {row!r}")
    raw_path, kind, size, mode, digest = row
    path = _path_from_json(raw_path)
    if (
        not isinstance(path, str)
        or kind not in ENTRY_KINDS
        or not isinstance(size, int)
        or not isinstance(mode, int)
        or not isinstance(digest, str)
    ):
        raise InternalError(f"Malformed manifest entry: {row!r}")
    return Entry(path=path, kind=kind, size=size, mode=mode, digest=digest)


# --------------------------------------------------------------------------- building


def _walk(
    root: Path,
    rules: ExcludeRules | None,
    cache: HashCache | None,
    exclusions: Exclusions | None = None,
) -> list[Entry]:
    # Folders excluded as a whole are skipped without being read, unless a "!rule" could
    # bring something inside them back.
    prune_excluded_folders = rules is not None and not rules.has_negations
    hasher = _Hasher(cache)
    entries: list[Entry] = []
    kept_folders: list[Entry] = []
    # (folder, its path prefix, whether a folder above it was excluded: reported already)
    pending: list[tuple[str, str, bool]] = [(os.fspath(root), "", False)]
    while pending:
        directory, prefix, inside_excluded = pending.pop()
        with os.scandir(directory) as scanner:
            children = list(scanner)
        for child in children:
            relative = prefix + child.name
            if child.is_dir(follow_symlinks=False):
                excluded = rules is not None and rules.excludes(relative, is_dir=True)
                if not excluded:
                    kept_folders.append(_folder_entry(child, relative))
                elif exclusions is not None and not inside_excluded:
                    _record(exclusions, rules, relative, is_dir=True)
                if not (excluded and prune_excluded_folders):
                    pending.append((child.path, relative + "/", inside_excluded or excluded))
            elif rules is None or not rules.excludes(relative):
                entry = _entry_for(child, relative, hasher)
                if entry is not None:
                    entries.append(entry)
            elif exclusions is not None and not inside_excluded:
                _record(exclusions, rules, relative, is_dir=False)
    hasher.finish()
    return entries + _folders_left_empty(kept_folders, entries)


def _record(
    exclusions: Exclusions, rules: ExcludeRules | None, relative: str, *, is_dir: bool
) -> None:
    rule = rules.rule_excluding(relative, is_dir=is_dir) if rules is not None else None
    if rule is not None:  # None: .deployignore itself, left out by no rule
        exclusions.record(rule, relative, is_dir=is_dir)


def _folders_left_empty(folders: list[Entry], entries: list[Entry]) -> list[Entry]:
    """The kept folders that no entry implies (empty, or emptied by the rules).

    Only the deepest of them are listed: "a/b" already implies "a".
    """
    implied = _parents_of(entry.path for entry in entries)
    empty = [folder for folder in folders if folder.path not in implied]
    implied_by_empty = _parents_of(folder.path for folder in empty)
    return [folder for folder in empty if folder.path not in implied_by_empty]


def _parents_of(paths: Iterable[str]) -> set[str]:
    parents: set[str] = set()
    for path in paths:
        parent = path.rpartition("/")[0]
        while parent and parent not in parents:
            parents.add(parent)
            parent = parent.rpartition("/")[0]
    return parents


def _folder_entry(child: os.DirEntry[str], relative: str) -> Entry:
    mode = stat.S_IMODE(child.stat(follow_symlinks=False).st_mode)
    return Entry(path=relative, kind="dir", size=0, mode=mode, digest="")


def file_entry(root: Path, relative: str) -> Entry | None:
    """The entry of the one file or symlink ``root/relative`` (None for anything else)."""
    full = os.path.join(root, relative)
    return _entry_from_status(full, relative, os.lstat(full), _Hasher(None))


def _entry_for(child: os.DirEntry[str], relative: str, hasher: _Hasher) -> Entry | None:
    return _entry_from_status(child.path, relative, child.stat(follow_symlinks=False), hasher)


def _entry_from_status(
    full: str, relative: str, status: os.stat_result, hasher: _Hasher
) -> Entry | None:
    mode = stat.S_IMODE(status.st_mode)
    if stat.S_ISLNK(status.st_mode):
        target = os.fsencode(os.readlink(full))
        digest = hashlib.sha256(target).hexdigest()
        return Entry(path=relative, kind="symlink", size=len(target), mode=mode, digest=digest)
    if stat.S_ISREG(status.st_mode):
        size, digest = hasher.hash_file(full, relative, status)
        return Entry(path=relative, kind="file", size=size, mode=mode, digest=digest)
    # Sockets, FIFOs and devices have no place in a release.
    return None


def _hash_file(path: str, expected_size: int) -> tuple[int, str]:
    with open(path, "rb", buffering=0) as source:
        if expected_size <= _HASH_CHUNK_BYTES:
            content = source.read()
            return len(content), hashlib.sha256(content).hexdigest()
        digest = hashlib.sha256()
        buffer = bytearray(_HASH_CHUNK_BYTES)
        view = memoryview(buffer)
        size = 0
        while count := source.readinto(buffer):
            digest.update(view[:count])
            size += count
        return size, digest.hexdigest()


# --------------------------------------------------------------------------- hash cache

# path -> (size, mtime_ns, ctime_ns, inode, sha256)
_CachedHash = tuple[int, int, int, int, str]
_CACHE_FIELDS = ["path", "size", "mtime_ns", "ctime_ns", "inode", "sha256"]


class HashCache:
    """The SHA-256 of each file of a workspace's previous manifest, keyed by its stat data.

    A file is trusted unchanged while its size, mtime, ctime and inode are the recorded ones.
    ctime cannot be set from user space, so a build command that rewrites a file and puts its
    mtime back is still noticed; a rewrite within one timestamp tick of the recorded change
    is what the racy window guards against (see ``RACY_WINDOW_NS``).
    """

    def __init__(self) -> None:
        self._entries: dict[str, _CachedHash] = {}
        #: Files of the last manifest built with this cache whose digest was reused / read.
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def load(cls, path: Path) -> HashCache:
        """The cache saved at ``path``; an empty one if it is missing, damaged or outdated."""
        cache = cls()
        try:
            document = json.loads(path.read_bytes())
        except (OSError, ValueError):
            return cache
        if (
            not isinstance(document, dict)
            or document.get("version") != HASH_CACHE_FORMAT_VERSION
            or document.get("fields") != _CACHE_FIELDS
            or not isinstance(document.get("entries"), list)
        ):
            return cache
        for row in document["entries"]:
            entry = _cached_hash_from_row(row)
            if entry is None:
                # One bad row casts doubt on the whole file: hash everything again.
                return cls()
            cache._entries[entry[0]] = entry[1]
        return cache

    def save(self, path: Path) -> None:
        """Write the cache atomically (a crash leaves the old file or the new one)."""
        document = {
            "version": HASH_CACHE_FORMAT_VERSION,
            "fields": _CACHE_FIELDS,
            "entries": [[relative, *entry] for relative, entry in sorted(self._entries.items())],
        }
        data = json.dumps(document, separators=(",", ":"), ensure_ascii=True).encode("ascii")
        staging = path.with_name(f"{path.name}.{os.getpid()}.saving")
        try:
            staging.write_bytes(data)
            os.replace(staging, path)
        finally:
            staging.unlink(missing_ok=True)

    def forget(self) -> None:
        """Drop the recorded digests from memory (``hits`` and ``misses`` stay): once saved,
        the cache is only needed again by the next manifest, which loads it from disk."""
        self._entries = {}

    def lookup(self, relative: str, status: os.stat_result) -> str | None:
        entry = self._entries.get(relative)
        if entry is None or entry[:4] != _fingerprint(status):
            return None
        return entry[4]

    def _replace(self, entries: dict[str, _CachedHash], *, hits: int, misses: int) -> None:
        self._entries = entries
        self.hits = hits
        self.misses = misses


def _fingerprint(status: os.stat_result) -> tuple[int, int, int, int]:
    return (status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino)


def _cached_hash_from_row(row: object) -> tuple[str, _CachedHash] | None:
    if not isinstance(row, list) or len(row) != len(_CACHE_FIELDS):
        return None
    path, size, mtime_ns, ctime_ns, inode, digest = row
    numbers = (size, mtime_ns, ctime_ns, inode)
    if (
        not isinstance(path, str)
        or not all(type(number) is int for number in numbers)
        or not isinstance(digest, str)
        or len(digest) != 64
    ):
        return None
    return path, (size, mtime_ns, ctime_ns, inode, digest)


class _Hasher:
    """Hashes the files of one manifest, through a HashCache when there is one."""

    def __init__(self, cache: HashCache | None) -> None:
        self._cache = cache
        self._seen: dict[str, _CachedHash] = {}
        # Only files last changed well before the scan began are remembered: a change made
        # after we looked at a file gives it a ctime no earlier than the scan's start (less
        # one timestamp tick), so it cannot match the older ctime we recorded.
        self._racy_after_ns = time.time_ns() - RACY_WINDOW_NS
        self._hits = 0
        self._misses = 0

    def hash_file(self, path: str, relative: str, status: os.stat_result) -> tuple[int, str]:
        if self._cache is None:
            return _hash_file(path, status.st_size)
        digest = self._cache.lookup(relative, status)
        if digest is not None:
            self._hits += 1
            size = status.st_size
        else:
            self._misses += 1
            size, digest = _hash_file(path, status.st_size)
        if (
            size == status.st_size
            and status.st_ctime_ns < self._racy_after_ns
            and status.st_mtime_ns < self._racy_after_ns
        ):
            self._seen[relative] = (*_fingerprint(status), digest)
        return size, digest

    def finish(self) -> None:
        if self._cache is not None:
            self._cache._replace(self._seen, hits=self._hits, misses=self._misses)


# --------------------------------------------------------------------------- change sets


@dataclass(frozen=True)
class ChangeSet:
    """How to turn the previous release into the new one.

    ``deleted`` lists every vanished path, folders included (so no empty husk of a removed
    folder survives in a release copied from the previous one). Apply it first, deepest path
    first (reverse order) or recursively, then unpack ``added`` + ``modified``. A path that
    turns from a folder into a file, or back, appears both in ``deleted`` and in ``added``.
    """

    added: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    bytes_to_send: int = 0
    #: The folders among those paths: applying the change needs them, counting it does not.
    folders: frozenset[str] = field(default_factory=frozenset, compare=False)
    #: Files among ``added`` + ``modified`` whose content was copied on the server from a
    #: release kept there (see ``reuse_sources``) instead of sent; ``bytes_to_send`` leaves
    #: their bytes out, ``bytes_reused`` counts them.
    reused: tuple[str, ...] = field(default=(), compare=False)
    bytes_reused: int = field(default=0, compare=False)

    @property
    def is_empty(self) -> bool:
        return not (self.added or self.modified or self.deleted)

    def summary(self) -> str:
        """ "3 files added, 1 modified, 0 deleted; 1200 bytes to send": files, not folders."""
        counted = self.files()
        reused = (
            f" ({len(self.reused)} files, {self.bytes_reused} bytes, copied from releases kept "
            "on the server)"
            if self.reused
            else ""
        )
        return (
            f"{len(counted.added)} files added, {len(counted.modified)} modified, "
            f"{len(counted.deleted)} deleted; {self.bytes_to_send} bytes to send{reused}"
        )

    def files(self) -> ChangeSet:
        """The same change with the folders left out: what people count and read (a removed
        folder of 3 files is "3 deleted", not 5 with the folder and its subfolder)."""
        return ChangeSet(
            added=[p for p in self.added if p not in self.folders],
            modified=[p for p in self.modified if p not in self.folders],
            deleted=[p for p in self.deleted if p not in self.folders],
            bytes_to_send=self.bytes_to_send,
            reused=self.reused,
            bytes_reused=self.bytes_reused,
        )

    @property
    def paths_to_send(self) -> list[str]:
        return sorted(self.added + self.modified)


def diff(old: Manifest | None, new: Manifest) -> ChangeSet:
    """Compare two manifests; ``old=None`` (first deploy) sends everything."""
    if old is None:
        return ChangeSet(
            added=list(new),
            bytes_to_send=new.total_bytes,
            folders=frozenset(path for path, entry in new.items() if entry.is_dir),
        )
    old_kinds = _kinds_including_implied_dirs(old)
    new_kinds = _kinds_including_implied_dirs(new)
    deleted = sorted(
        path
        for path, kind in old_kinds.items()
        if path not in new_kinds or _is_dir(kind) != _is_dir(new_kinds[path])
    )
    added: list[str] = []
    modified: list[str] = []
    for path, entry in new.items():
        previous = old_kinds.get(path)
        if previous is None or _is_dir(previous) != entry.is_dir:
            added.append(path)
        elif path in old and old[path] != entry:
            modified.append(path)
    bytes_to_send = sum(new[path].size for path in added + modified if new[path].kind == "file")
    folders = {path for path in added + modified if new[path].is_dir}
    folders.update(path for path in deleted if _is_dir(old_kinds[path]))
    return ChangeSet(
        added=added,
        modified=modified,
        deleted=deleted,
        bytes_to_send=bytes_to_send,
        folders=frozenset(folders),
    )


@dataclass(frozen=True)
class ReuseSource:
    """Where a file's content may already be on the server: ``release``'s ``path``."""

    release: str
    path: str


# A path the remote copy step cannot list safely (one a line, as sha256sum prints it: it
# escapes a backslash or a line break) is sent instead.
_UNLISTABLE = re.compile(r"[\x00-\x1f\x7f\\]")


class DeferredManifests(Mapping[str, Manifest]):
    """Release name -> Manifest, each read by ``load(name)`` when asked for and never kept.

    The manifests of the releases a server keeps are only read to find files to copy on the
    server instead of sending them (``reuse_sources``, one release at a time). At 100,000
    files a manifest holds about 40 MB of Python objects, and a server keeps up to
    ``keep_releases`` of them: read up front they would all be in memory for the whole
    deployment. ``names`` gives the order; ``load`` answers None for a release whose
    manifest is gone or empty (a KeyError here). Each access reads again.
    """

    def __init__(self, names: Sequence[str], load: Callable[[str], Manifest | None]) -> None:
        self._names = tuple(dict.fromkeys(names))
        self._load = load

    def __getitem__(self, name: str) -> Manifest:
        if name not in self._names:
            raise KeyError(name)
        manifest = self._load(name)
        if manifest is None:
            raise KeyError(name)
        return manifest

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        return name in self._names


def reuse_sources(
    paths: Iterable[str],
    manifest: Manifest,
    kept: Mapping[str, Manifest],
    *,
    skip: Iterable[str] = (),
) -> dict[str, ReuseSource]:
    """For each file of ``paths`` whose content (same SHA-256 and size) a kept release
    already holds, where to copy it from on the server: ``{path: ReuseSource}``.

    ``kept`` maps release names to their manifests (the live release's and the other
    releases the server keeps; a ``DeferredManifests`` is read once per release, one
    release at a time). The same path in some release is preferred, the first such release
    in ``kept``'s order (those copies go in one ``cp`` per release), else any path, the
    first found. Files under ``skip`` (folders or files: the shared paths, whose release
    copies are links into ``shared/``) are neither copied nor copied from. The manifests
    say what Slipway wrote; the server may hold something else since (a command, a
    person): the copy is checked against the digest before it is trusted
    (``release.RemoteLayout.reuse``).
    """
    prefixes = tuple(p.strip("/") for p in skip if p.strip("/"))

    def usable(path: str) -> bool:
        if _UNLISTABLE.search(path):
            return False
        return not any(path == p or path.startswith(p + "/") for p in prefixes)

    wanted = {
        path: manifest[path]
        for path in paths
        if path in manifest and manifest[path].kind == "file" and usable(path)
    }
    if not wanted:
        return {}
    digests = {entry.digest for entry in wanted.values()}
    by_digest: dict[tuple[str, int], ReuseSource] = {}
    same_path: dict[str, ReuseSource] = {}
    for release in kept:
        kept_manifest = kept.get(release)
        if kept_manifest is None:
            continue
        for path, entry in wanted.items():
            other = kept_manifest.get(path)
            if (
                path not in same_path
                and other is not None
                and other.kind == "file"
                and (other.digest, other.size) == (entry.digest, entry.size)
            ):
                same_path[path] = ReuseSource(release, path)
        for path, entry in kept_manifest.items():
            key = (entry.digest, entry.size)
            if (
                entry.kind == "file"
                and entry.digest in digests
                and key not in by_digest
                and usable(path)
            ):
                by_digest[key] = ReuseSource(release, path)
        del kept_manifest
    found: dict[str, ReuseSource] = {}
    for path, entry in wanted.items():
        source = same_path.get(path) or by_digest.get((entry.digest, entry.size))
        if source is not None:
            found[path] = source
    return found


def keep_generated(changes: ChangeSet, generated: ExcludeRules | None) -> ChangeSet:
    """``changes`` without deleting generated paths (the previous build may have held them,
    before they were declared generated)."""
    if generated is None:
        return changes
    kept = [p for p in changes.deleted if not is_generated(p, generated)]
    return (
        changes if len(kept) == len(changes.deleted) else dataclasses.replace(changes, deleted=kept)
    )


def is_generated(path: str, generated: ExcludeRules | None) -> bool:
    """True when ``path`` (a file or a folder) falls under the generated paths' rules."""
    return generated is not None and (
        generated.rule_excluding(path) is not None
        or generated.rule_excluding(path, is_dir=True) is not None
    )


def _kinds_including_implied_dirs(manifest: Manifest) -> dict[str, EntryKind]:
    kinds: dict[str, EntryKind] = {path: "dir" for path in manifest.implied_dirs()}
    kinds.update((path, entry.kind) for path, entry in manifest.items())
    return kinds


def _is_dir(kind: EntryKind) -> bool:
    return kind == "dir"


# --------------------------------------------------------------------------- tar stream


def tar_stream(
    root: Path,
    paths: Sequence[str],
    manifest: Manifest,
    *,
    compresslevel: int = DEFAULT_COMPRESSLEVEL,
) -> Iterator[bytes]:
    """Yield a gzipped tar of ``paths`` (read from ``root``) in ~256 KiB chunks, lazily.

    Modes come from the manifest; owners are uid/gid 0 with empty names so that whoever
    unpacks it owns the files (unpack as root with --no-same-owner). A file whose size or
    kind no longer matches the manifest stops the stream with InternalError.
    """
    compressor = zlib.compressobj(compresslevel, zlib.DEFLATED, 31)  # 31: gzip wrapper
    output = _ChunkBuffer()
    written = 0
    for path in paths:
        if path not in manifest:
            raise InternalError(f"{display_path(path)} is not in the manifest.")
        for piece in _member_pieces(root, manifest[path]):
            written += len(piece)
            output.append(compressor.compress(piece))
            yield from output.full_chunks()
    end_of_archive = bytes(2 * _TAR_BLOCK)
    written += len(end_of_archive)
    padding = bytes(-written % _TAR_RECORD)
    output.append(compressor.compress(end_of_archive + padding))
    output.append(compressor.flush())
    yield from output.full_chunks()
    yield from output.rest()


class _ChunkBuffer:
    def __init__(self) -> None:
        self._pending = bytearray()

    def append(self, data: bytes) -> None:
        self._pending += data

    def full_chunks(self) -> Iterator[bytes]:
        while len(self._pending) >= TAR_CHUNK_BYTES:
            chunk = bytes(self._pending[:TAR_CHUNK_BYTES])
            del self._pending[:TAR_CHUNK_BYTES]
            yield chunk

    def rest(self) -> Iterator[bytes]:
        if self._pending:
            yield bytes(self._pending)
            self._pending.clear()


def _member_pieces(root: Path, entry: Entry) -> Iterator[bytes]:
    source = os.path.join(root, entry.path)
    status = os.lstat(source)
    info = tarfile.TarInfo(entry.path)
    info.mode = entry.mode
    info.mtime = int(status.st_mtime)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    if entry.kind == "dir":
        _expect(stat.S_ISDIR(status.st_mode), entry)
        info.type = tarfile.DIRTYPE
        yield _header(info)
    elif entry.kind == "symlink":
        _expect(stat.S_ISLNK(status.st_mode), entry)
        info.type = tarfile.SYMTYPE
        info.linkname = os.readlink(source)
        yield _header(info)
    else:
        _expect(stat.S_ISREG(status.st_mode) and status.st_size == entry.size, entry)
        info.type = tarfile.REGTYPE
        info.size = entry.size
        yield _header(info)
        yield from _file_content(source, entry)


def _header(info: tarfile.TarInfo) -> bytes:
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _file_content(source: str, entry: Entry) -> Iterator[bytes]:
    remaining = entry.size
    with open(source, "rb", buffering=0) as content:
        while remaining > 0:
            piece = content.read(min(_READ_CHUNK_BYTES, remaining))
            if not piece:
                raise InternalError(f"{display_path(entry.path)} shrank while it was being sent.")
            remaining -= len(piece)
            yield piece
    if entry.size % _TAR_BLOCK:
        yield bytes(_TAR_BLOCK - entry.size % _TAR_BLOCK)


def _expect(matches: bool, entry: Entry) -> None:
    if not matches:
        raise InternalError(f"{display_path(entry.path)} changed after its manifest was built.")
