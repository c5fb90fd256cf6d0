"""Kept build outputs ("artefacts"): build once, promote the same bytes elsewhere.

Each project has a content-addressed store on the worker's disk::

    <root>/objects/ab/cdef0123...   one file per SHA-256: a file's content, or a symlink's
                                    target (the manifest's digest of a symlink hashes the
                                    target, so both live in one key space)
    <root>/manifests/<sha256>.json  the manifest (manifest.Manifest.to_json) of one artefact,
                                    named by the SHA-256 of those bytes

Storing a build output copies in only the digests the store lacks (a new build of a project
mostly shares its files with the last one). Objects are copied, not hard-linked, from the
build: the workspace is persistent and a build command may rewrite a file in place, which
would change every name of a hard-linked object. Each object is written to a temporary name
and renamed into place, so a reader never sees half of one, and made read-only.

Promoting materialises an artefact into a scratch tree of hard links to the objects (no
content is copied) and checks every file's SHA-256 against the manifest first: what is then
sent (builds.engine.rollout.deliver) is byte for byte what the source deployment built.
Retention removes manifests and then every object no kept manifest names (``remove``).
One ``flock`` per project store orders storing, removing and materialising on a worker.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from builds.engine.build import BuildOutput
from builds.engine.errors import ArtefactCorrupt, ArtefactMissing, InternalError
from builds.engine.manifest import Entry, Manifest, display_path

_CHUNK_BYTES = 1024 * 1024
_DIGEST_CHARS = 64


@dataclass(frozen=True)
class StoredArtefact:
    """What ``ArtefactStore.store`` kept: the manifest's SHA-256 (the artefact's id), its
    file and symlink count, the bytes of file content, and how many objects (and bytes)
    were new to the store."""

    digest: str
    files: int
    total_bytes: int
    new_objects: int
    new_bytes: int


@dataclass(frozen=True)
class Removed:
    """What ``ArtefactStore.remove`` deleted: manifests, and objects no kept manifest names."""

    manifests: int
    objects: int
    bytes: int


def _valid_digest(digest: str) -> bool:
    return len(digest) == _DIGEST_CHARS and all(c in "0123456789abcdef" for c in digest)


def _sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as source:
        while chunk := source.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


class ArtefactStore:
    """One project's artefact store under ``root`` (created on first use, mode 0700)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects"
        self.manifests = root / "manifests"
        # Object folders made (or found) during one store(): one mkdir each, not one a file.
        self._folders: set[Path] = set()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(self.root / "store.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def object_path(self, digest: str) -> Path:
        """Where the object of SHA-256 ``digest`` (64 lowercase hex characters) lives."""
        if not _valid_digest(digest):
            raise InternalError("Not a SHA-256 digest")
        return self.objects / digest[:2] / digest[2:]

    def manifest_path(self, digest: str) -> Path:
        if not _valid_digest(digest):
            raise InternalError("Not a SHA-256 digest")
        return self.manifests / f"{digest}.json"

    def has(self, digest: str) -> bool:
        """True while the artefact ``digest`` (its manifest's SHA-256) is kept."""
        return _valid_digest(digest) and self.manifest_path(digest).is_file()

    def store(self, output: BuildOutput) -> StoredArtefact:
        """Keep ``output``'s files and symlink targets (only the digests the store lacks) and
        its manifest. Raises InternalError when a file differs from its manifest entry
        (changed after the manifest was built); OSError (a full disk) as it comes."""
        manifest = output.manifest
        new_objects = new_bytes = 0
        self._folders = set()
        with self._locked():
            for entry in manifest.values():
                if entry.kind == "dir":
                    continue
                target = self.object_path(entry.digest)
                if target.exists():
                    continue
                self._write_object(output.root, entry, target)
                new_objects += 1
                new_bytes += entry.size
            document = manifest.to_json()
            digest = hashlib.sha256(document).hexdigest()
            path = self.manifest_path(digest)
            if not path.exists():
                self._write_atomically(path, document)
        return StoredArtefact(
            digest=digest,
            files=sum(1 for entry in manifest.values() if entry.kind != "dir"),
            total_bytes=manifest.total_bytes,
            new_objects=new_objects,
            new_bytes=new_bytes,
        )

    def _write_object(self, root: Path, entry: Entry, target: Path) -> None:
        source = os.path.join(root, entry.path)
        if target.parent not in self._folders:
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._folders.add(target.parent)
        descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
        try:
            with os.fdopen(descriptor, "wb") as out:
                digest = hashlib.sha256()
                if entry.kind == "symlink":
                    content = os.fsencode(os.readlink(source))
                    digest.update(content)
                    out.write(content)
                else:
                    with open(source, "rb", buffering=0) as data:
                        while chunk := data.read(_CHUNK_BYTES):
                            digest.update(chunk)
                            out.write(chunk)
                # No fsync per object: on a real disk it cost ~0.4 ms a file (4 s for a
                # 10,000-file build, on every deployment's critical path). A crash may leave
                # an object of the last seconds empty; a promotion checks every object's
                # SHA-256 first and refuses a damaged artefact (ArtefactCorrupt).
            if digest.hexdigest() != entry.digest:
                raise InternalError(
                    f"{display_path(entry.path)} changed after its manifest was built."
                )
            os.chmod(temporary, 0o444)
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise

    def _write_atomically(self, path: Path, content: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
        try:
            with os.fdopen(descriptor, "wb") as out:
                out.write(content)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temporary, 0o444)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise

    def manifest(self, digest: str) -> Manifest:
        """The manifest of artefact ``digest``, checked against its name. ArtefactMissing
        when it is not kept; ArtefactCorrupt when its bytes no longer hash to ``digest``."""
        if not self.has(digest):
            raise ArtefactMissing(
                f"The build output {digest[:12]} is not in the artefact store (removed by the "
                "project's artefact retention, or SLIPWAY_ARTEFACT_DIR is not shared with the "
                "worker that built it): nothing was sent; deploy the revision again instead"
            )
        document = self.manifest_path(digest).read_bytes()
        if hashlib.sha256(document).hexdigest() != digest:
            raise ArtefactCorrupt(
                f"The manifest of build output {digest[:12]} does not match its digest: "
                "nothing was sent"
            )
        return Manifest.from_json(document)

    def materialise(
        self,
        digest: str,
        into: Path,
        *,
        revision: str,
        check_cancelled: Callable[[], None] = lambda: None,
    ) -> BuildOutput:
        """Lay artefact ``digest`` out under ``into`` (created; must not exist) as hard links
        to its objects, symlinks and folders, after checking every object's SHA-256 against
        the manifest: the BuildOutput to hand to rollout.deliver.

        Raises ArtefactMissing (manifest or an object gone), ArtefactCorrupt (an object's
        content differs from its digest: changed on disk), InternalError for a path that
        would leave ``into``.
        """
        with self._locked():
            manifest = self.manifest(digest)
            into.mkdir(parents=True, mode=0o700)
            root = into.resolve()
            for entry in manifest.values():
                check_cancelled()
                normal = os.path.normpath(entry.path)
                if os.path.isabs(normal) or normal == "." or normal.split(os.sep)[0] == "..":
                    raise InternalError(f"{display_path(entry.path)} leaves the artefact's tree")
                place = root / normal
                if entry.kind == "dir":
                    place.mkdir(parents=True, exist_ok=True)
                    continue
                source = self.object_path(entry.digest)
                if not source.is_file():
                    raise ArtefactMissing(
                        f"{display_path(entry.path)} of build output {digest[:12]} is missing "
                        "from the artefact store: nothing was sent"
                    )
                if _sha256_of(str(source)) != entry.digest:
                    raise ArtefactCorrupt(
                        f"{display_path(entry.path)} of build output {digest[:12]} does not "
                        f"match its manifest (SHA-256 {entry.digest[:12]}…): the stored file "
                        "changed on disk, so nothing was sent"
                    )
                place.parent.mkdir(parents=True, exist_ok=True)
                if entry.kind == "symlink":
                    os.symlink(os.fsdecode(source.read_bytes()), place)
                else:
                    try:
                        os.link(source, place)
                    except OSError:
                        # Another filesystem (or no hard links there): a copy, checked above.
                        shutil.copyfile(source, place)
        return BuildOutput(revision=revision, root=root, manifest=manifest)

    def remove(self, digests: Iterable[str]) -> Removed:
        """Forget the artefacts ``digests``, then delete every object no kept manifest names.
        Unknown digests are skipped."""
        manifests = objects = size = 0
        with self._locked():
            for digest in digests:
                if self.has(digest):
                    self.manifest_path(digest).unlink()
                    manifests += 1
            if not manifests:
                return Removed(0, 0, 0)
            wanted: set[str] = set()
            for path in self.manifests.glob("*.json"):
                kept = Manifest.from_json(path.read_bytes())
                wanted.update(entry.digest for entry in kept.values() if entry.kind != "dir")
            for folder in self.objects.glob("??"):
                for item in folder.iterdir():
                    if folder.name + item.name not in wanted:
                        size += item.stat().st_size
                        item.unlink()
                        objects += 1
        return Removed(manifests=manifests, objects=objects, bytes=size)
